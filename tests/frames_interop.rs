//! The frame worker against a peer generated from `proto/frames.proto` by another protobuf
//! implementation: Google's protobuf for Python (`tests/interop/agent.py`).
//!
//! The test builds a venv once (cached under `target/interop-venv`, guarded by a `flock` so
//! concurrent test processes build it once), generates `frames_pb2.py` with
//! `python -m grpc_tools.protoc` from the repository's proto file, and runs the agent against
//! a real daemon. No python3 or no network for pip is not this test's failure: it prints a
//! loud `SKIPPED:` line and returns. A peer that disagrees with the worker fails it.

#[path = "frames_support/mod.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::Worker;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// The target directory this test binary lives in (`target/debug/deps/..` -> `target`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() { dir } else { Path::new(MANIFEST).join(dir) };
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(MANIFEST).join("target"))
}

fn skip(why: &str) {
    eprintln!("\n==================================================================");
    eprintln!("SKIPPED: frames interop with Google protobuf for Python: {why}");
    eprintln!("==================================================================\n");
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The venv's python with grpcio-tools and protobuf, built once; `Err` says why not.
fn venv_python() -> Result<PathBuf, String> {
    let target = target_dir();
    fs::create_dir_all(&target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    let venv = target.join("interop-venv");
    let python = venv.join("bin").join("python");
    let ready = venv.join(".ready");
    // One builder at a time across test processes; the others wait and reuse its venv.
    let lock = fs::File::create(target.join("interop-venv.lock")).map_err(|e| e.to_string())?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| e.to_string())?;
    if ready.exists() && python.exists() {
        return Ok(python);
    }
    let _ = fs::remove_dir_all(&venv);
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if !out.status.success() {
        return Err(format!("python3 -m venv failed: {}", show(&out)));
    }
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(["grpcio-tools", "protobuf"])
        .output()
        .map_err(|e| format!("pip not runnable: {e}"))?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&venv);
        return Err(format!("pip install grpcio-tools protobuf failed (network?): {}", show(&out)));
    }
    fs::write(&ready, "grpcio-tools protobuf\n").map_err(|e| e.to_string())?;
    // The lock is released when `lock` drops.
    Ok(python)
}

/// Runs `cmd`, killing it after `limit`.
fn run_with_limit(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn python_protobuf_agent_interoperates_with_the_worker() {
    let python = match venv_python() {
        Ok(p) => p,
        Err(why) => return skip(&why),
    };
    // Generate the Python module from the repository's proto file.
    let gen = std::env::temp_dir().join(format!("cl-frames-interop-gen-{}", std::process::id()));
    let _ = fs::remove_dir_all(&gen);
    fs::create_dir_all(&gen).unwrap();
    let out = Command::new(&python)
        .current_dir(MANIFEST)
        .args(["-m", "grpc_tools.protoc", "-I", "proto"])
        .arg(format!("--python_out={}", gen.display()))
        .arg("proto/frames.proto")
        .output()
        .unwrap();
    assert!(out.status.success(), "protoc refused proto/frames.proto: {}", show(&out));
    assert!(gen.join("frames_pb2.py").exists(), "no frames_pb2.py: {}", show(&out));

    let worker = Worker::start("interop", "heartbeat_ms = 300");
    let out = run_with_limit(
        Command::new(&python)
            .arg(Path::new(MANIFEST).join("tests/interop/agent.py"))
            .arg("--addr")
            .arg(worker.addr.to_string())
            .arg("--gen")
            .arg(&gen),
        Duration::from_secs(90),
    );
    let _ = fs::remove_dir_all(&gen);
    assert!(
        out.status.success(),
        "the Python agent disagrees with the worker: {}\n--- daemon\n{}",
        show(&out),
        worker.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("interop: all checks passed"), "{}", show(&out));
    eprintln!("{stdout}");
    // The worker saw the same session: 25 Results, one VERSION_UNSUPPORTED, a clean End.
    worker.wait_counter("corelane_frames_results_total", |v| v == 25);
    worker.wait_counter("corelane_frames_errors_total{code=\"VERSION_UNSUPPORTED\"}", |v| v == 1);
    worker.wait_counter("corelane_frames_closes_total{cause=\"end\"}", |v| v == 1);
}
