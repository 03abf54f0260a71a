//! The `sigil` binary's contract: `--help`, `--version`, clear errors, non-zero exit codes.

use std::process::Command;

fn sigil(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sigil"))
        .args(args)
        .output()
        .expect("run sigil")
}

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
fn dev_says_it_is_not_built_yet() {
    let out = sigil(&["dev"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not built yet") && err.contains("sigil server"),
        "{err}"
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
