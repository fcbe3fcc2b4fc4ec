//! The profiling scripts' verdicts on machines that lack a tool or have a broken one: each
//! runs the real script with fake `perf`, `valgrind` or `cargo` first on PATH.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory of executable scripts `name -> body`, to put first on PATH.
fn fakes(tag: &str, tools: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corelane-scripts-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body) in tools {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn run(script: &str, args: &[&str], fake_dir: &Path) -> Output {
    let perf_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = format!("{}:{}", fake_dir.display(), std::env::var("PATH").unwrap_or_default());
    Command::new("bash")
        .arg(perf_dir.join(script))
        .args(args)
        .env("PATH", path)
        .output()
        .expect("bash runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// What Ubuntu's /usr/bin/perf wrapper does when the kernel's tools are missing.
const BROKEN_PERF: &str = "echo \"WARNING: perf not found for kernel $(uname -r)\" >&2; exit 2";

/// A perf without a cycles counter that writes more after the telling line (so a reader that
/// stops at the first match makes it die of SIGPIPE, which pipefail turned into "supported").
const NO_CYCLES_PERF: &str = "if [ \"$1 $2 $3\" = \"stat -e cycles\" ]; then \
     echo '<not supported> cycles' >&2; i=0; while [ $i -lt 2000 ]; do \
     echo ' Performance counter stats, more lines to write' >&2; i=$((i+1)); done; fi; exit 0";

#[test]
fn machine_sh_names_a_missing_cycles_counter_every_time() {
    let dir = fakes("nocycles", &[("perf", NO_CYCLES_PERF)]);
    for round in 0..20 {
        let out = run("machine.sh", &[], &dir);
        let t = text(&out);
        let line = t.lines().find(|l| l.starts_with("hw cycles counter:")).expect("the line");
        assert!(line.contains("no"), "round {round}: {line}");
    }
}

#[test]
fn machine_sh_and_record_sh_see_a_perf_that_does_not_run() {
    let dir = fakes("broken", &[("perf", BROKEN_PERF)]);
    let t = text(&run("machine.sh", &[], &dir));
    let line = t.lines().find(|l| l.starts_with("hw cycles counter:")).expect("the line");
    assert!(line.contains("perf does not run"), "{line}");
    let out = run("record.sh", &["--quick", "-o", "/dev/null"], &dir);
    assert_eq!(out.status.code(), Some(3), "record.sh with a broken perf: {}", text(&out));
    assert!(text(&out).contains("SKIPPED"), "{}", text(&out));
    let out = run("flamegraph.sh", &["/nonexistent.data", "/dev/null"], &dir);
    assert_eq!(out.status.code(), Some(3), "flamegraph.sh with a broken perf: {}", text(&out));
}

#[test]
fn callgrind_sh_fails_when_an_op_fails() {
    // valgrind runs, the op under it fails (a panic in ops exits 101); cargo is a no-op so
    // the test does not build the profiling profile.
    let dir = fakes(
        "opfails",
        &[
            ("cargo", "exit 0"),
            (
                "valgrind",
                "for a in \"$@\"; do case $a in --callgrind-out-file=*) \
                 echo 'summary: 12345' > \"${a#--callgrind-out-file=}\";; esac; done; exit 101",
            ),
        ],
    );
    let out = run("callgrind.sh", &["--quick"], &dir);
    assert!(!out.status.success(), "callgrind.sh printed a row for a failed op: {}", text(&out));
    assert!(text(&out).contains("failed"), "{}", text(&out));
}
