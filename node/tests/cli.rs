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
