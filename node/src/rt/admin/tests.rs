//! Unit tests of the admin API's helpers and socket.

use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn io_text_drops_the_os_error_suffix() {
    assert_eq!(
        io_text("No such file or directory (os error 2)"),
        "No such file or directory"
    );
    assert_eq!(io_text("plain"), "plain");
}

#[test]
fn seed_addresses_must_be_dialable() {
    assert_eq!(
        usable_seed("10.0.0.1:8443").as_deref(),
        Some("10.0.0.1:8443")
    );
    assert_eq!(
        usable_seed("sigil-1.internal:8443").as_deref(),
        Some("sigil-1.internal:8443")
    );
    assert_eq!(usable_seed("[::1]:8443").as_deref(), Some("[::1]:8443"));
    for wildcard in ["0.0.0.0:8443", "[::]:8443", "10.0.0.1:0", "", "  "] {
        assert_eq!(usable_seed(wildcard), None, "{wildcard:?}");
    }
}

#[test]
fn join_token_hash_is_lowercase_hex_sha256() {
    // SHA-256("abc"), FIPS 180-2 appendix B.1.
    assert_eq!(
        join_token_sha256("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn statuses_map_command_errors() {
    use tonic::Code;
    let cases = [
        (CommandError::Invalid("x".into()), Code::InvalidArgument),
        (CommandError::NotFound("x".into()), Code::NotFound),
        (CommandError::AlreadyExists("x".into()), Code::AlreadyExists),
        (
            CommandError::RevisionMismatch {
                expected: 1,
                actual: 2,
            },
            Code::FailedPrecondition,
        ),
        (CommandError::Limit("x".into()), Code::ResourceExhausted),
    ];
    for (e, code) in cases {
        assert_eq!(command_status(&e).code(), code, "{e}");
    }
    let s = write_status(&WriteError::NoQuorum { waited_ms: 5 });
    assert_eq!(s.code(), Code::Unavailable);
    assert!(s.message().contains("no quorum"), "{}", s.message());
    assert_eq!(one_line("a\nb"), "a b");
}

#[test]
fn bind_refuses_a_regular_file_and_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").expect("write");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let err = bind_admin_socket(&file, ADMIN_SOCKET_MODE).expect_err("not a socket");
        assert!(err.to_string().contains("not a socket"), "{err}");
        let sock = dir.path().join("a.sock");
        let first = bind_admin_socket(&sock, ADMIN_SOCKET_MODE).expect("bind");
        drop(first);
        // The file stays behind (stale); binding again replaces it.
        let _second = bind_admin_socket(&sock, ADMIN_SOCKET_MODE).expect("rebind");
        let mode = std::fs::metadata(&sock).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No private directories left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    });
}
