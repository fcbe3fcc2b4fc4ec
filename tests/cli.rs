//! The `corelane` binary says what it is and refuses what it does not know.

use std::process::Command;

fn corelane(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_corelane")).args(args).output().expect("run corelane")
}

#[test]
fn version_and_help_succeed() {
    let out = corelane(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("corelane {}", env!("CARGO_PKG_VERSION"))
    );
    let out = corelane(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("corelane-perf -- spsc"));
}

#[test]
fn unknown_commands_fail_with_a_hint() {
    let out = corelane(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown command or flag 'run'") && err.contains("--help"), "{err}");
}
