//! Review (h-review1): `cl_alloc_tracker_free` must not create the process-wide tracker.
//! It compares its argument with `AllocTracker::global()`, which *initialises* the global
//! tracker on first call: with `TT_ALLOC_TRACKING_ENABLED=1`, freeing a tracker from
//! `cl_alloc_tracker_new` starts a second tracker (a background thread that connects to
//! `$CORELANE_ALLOC_SOCKET` or the default socket, and warns when it is absent), which the
//! application never asked for and can never free. Run in a child process: the environment
//! is the test's own.

use std::process::Command;

use corelane_alloc::{cl_alloc_tracker_free, cl_alloc_tracker_new};

const CHILD: &str = "CL_FFI_GLOBAL_TEST_CHILD";

fn alloc_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "corelane-alloc")
        .count()
}

#[test]
fn child_free_leaves_no_tracker_behind() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let path = c"/nonexistent/corelane-review-own.sock";
    // SAFETY: a NUL-terminated string literal.
    let t = unsafe { cl_alloc_tracker_new(path.as_ptr()) };
    assert!(!t.is_null());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while alloc_threads() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5)); // it names itself when it runs
    }
    assert_eq!(alloc_threads(), 1, "the new tracker's background thread");
    // SAFETY: from cl_alloc_tracker_new, freed once, not used afterwards.
    unsafe { cl_alloc_tracker_free(t) };
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(alloc_threads(), 0, "freeing a tracker started another one (the global)");
}

#[test]
fn freeing_a_tracker_does_not_start_the_global_one() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_free_leaves_no_tracker_behind", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("TT_ALLOC_TRACKING_ENABLED", "1")
        .env("CORELANE_ALLOC_SOCKET", "/nonexistent/corelane-review-global.sock")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stderr.contains("review-global.sock"), "the global tracker connected: {stderr}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
}
