//! The `sigil` binary's contract: `--help`, `--version`, clear errors, non-zero exit codes.

mod common;

use common::sigil;

#[test]
fn help_and_version() {
    let help = sigil(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("SPIFFE"), "{text}");
    assert!(text.contains("--log-format"), "{text}");

    let version = sigil(&["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("sigil "));
}

#[test]
fn unknown_arguments_fail_with_one_clear_error() {
    let out = sigil(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");

    let bad_format = sigil(&["--log-format", "xml"]);
    assert_eq!(bad_format.status.code(), Some(2));
}

#[test]
fn no_command_says_what_exists() {
    let out = sigil(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sigil --help"));
}

#[test]
fn every_admin_command_has_help() {
    for (args, must_mention) in [
        (&["entry", "--help"][..], "create"),
        (&["entry", "create", "--help"][..], "--selector"),
        (&["entry", "update", "--help"][..], "--revision"),
        (&["entry", "show", "--help"][..], "--entry-id"),
        (&["entry", "list", "--help"][..], "--parent-id"),
        (&["entry", "delete", "--help"][..], "--entry-id"),
        (&["token", "generate", "--help"][..], "--ttl"),
        (&["token", "generate", "--help"][..], "--server"),
        (&["bundle", "show", "--help"][..], "spiffe"),
        (&["bundle", "show", "--help"][..], "--hash"),
        (&["cluster", "status", "--help"][..], "--json"),
        (&["cluster", "--help"][..], "remove-server"),
        (&["cluster", "remove-server", "--help"][..], "NODE_ID"),
        (&["healthcheck", "--help"][..], "--admin-socket"),
    ] {
        let out = sigil(args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(must_mention), "{args:?}: {text}");
        assert!(text.contains("--admin-socket"), "{args:?}: {text}");
    }
}

#[test]
fn usage_errors_are_one_line() {
    for args in [
        &["entry", "create", "--spiffe-id", "spiffe://example.org/w"][..],
        &["entry", "craete"][..],
        &["bundle", "show", "--format", "der"][..],
        &["token", "generate", "--bogus"][..],
        &[
            "token",
            "generate",
            "--server",
            "--spiffe-id",
            "spiffe://example.org/x",
        ][..],
        &["cluster", "remove-server"][..],
        &["cluster", "remove-server", "two"][..],
        &["cluster", "remove-server", "0"][..],
        &["bundle", "show", "--hash", "--format", "spiffe"][..],
    ] {
        let out = sigil(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    let out = sigil(&["entry", "create"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--spiffe-id") && err.contains("--parent-id") && err.contains("--selector"),
        "{err}"
    );
}

#[test]
fn dev_documents_its_flags_and_refuses_bad_ones() {
    let help = sigil(&["dev", "--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--nodes",
        "--data-dir",
        "--trust-domain",
        "default: 3",
        "/tmp/sigil-dev-<uid>",
        "dev.sigil.test",
        "1, 3, 5",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let out = sigil(&["dev", "--nodes", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");

    let long = format!("/tmp/{}", "d".repeat(90));
    let out = sigil(&["dev", "--data-dir", &long]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("too long") && err.contains("under 108 bytes"),
        "{err}"
    );
    assert!(!std::path::Path::new(&long).exists());

    let foreign = tempfile::tempdir().expect("tempdir");
    std::fs::write(foreign.path().join("notes.txt"), "mine").expect("write");
    let out = sigil(&["dev", "--data-dir", foreign.path().to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a sigil dev directory"), "{err}");
    let names: Vec<_> = std::fs::read_dir(foreign.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("notes.txt")],
        "touched nothing"
    );
}

#[test]
fn server_tokens_take_no_spiffe_id() {
    let out = sigil(&[
        "token",
        "generate",
        "--server",
        "--spiffe-id",
        "spiffe://example.org/x",
        "--admin-socket",
        "/nonexistent/admin.sock",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--server") && err.contains("--spiffe-id"),
        "{err}"
    );
}
