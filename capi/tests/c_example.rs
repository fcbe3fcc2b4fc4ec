//! The C ABI from C: `examples/example.c` compiled with `cc` against the cdylib, run against
//! a real daemon (`corelane run`), and the ledger checked with a query client while it runs
//! and after it exits. Also: every exported symbol is declared in the header.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corelane::alloc::query::QueryClient;

const CRATE: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn every_exported_symbol_is_declared_in_the_header() {
    let src = std::fs::read_to_string(Path::new(CRATE).join("src/ffi.rs")).unwrap();
    let header =
        std::fs::read_to_string(Path::new(CRATE).join("include/corelane_alloc.h")).unwrap();
    let exported: Vec<&str> =
        src.split("extern \"C\" fn ").skip(1).filter_map(|rest| rest.split('(').next()).collect();
    assert!(exported.len() >= 12, "{exported:?}");
    for name in &exported {
        assert!(
            header.contains(&format!(" {name}(")) || header.contains(&format!("*{name}(")),
            "{name} is exported but not declared in include/corelane_alloc.h"
        );
    }
    // And nothing declared that is not exported.
    let declarations = header.lines().filter(|l| {
        l.contains("cl_alloc_") && l.contains('(') && !l.starts_with([' ', '/', '*', '#'])
    });
    for line in declarations {
        let name = line.split('(').next().unwrap().split([' ', '*']).next_back().unwrap();
        assert!(exported.contains(&name), "{name} is declared but not exported");
    }
}

/// `target/debug` (or whichever profile dir holds this test): the test runs from `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().unwrap().to_owned()
    } else {
        deps.to_owned()
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The directory holding `libcorelane_alloc.so` (built by cargo for this test run; built
/// here if it is missing).
fn cdylib_dir() -> PathBuf {
    let dir = profile_dir();
    let lib = "libcorelane_alloc.so";
    for d in [dir.clone(), dir.join("deps")] {
        if d.join(lib).exists() {
            return d;
        }
    }
    let ok = cargo().args(["build", "-p", "corelane-alloc-c"]).status().unwrap().success();
    assert!(ok && dir.join(lib).exists(), "cannot build {lib} in {}", dir.display());
    dir
}

/// The daemon binary next to the cdylib (built here if missing).
fn daemon_bin() -> PathBuf {
    let bin = profile_dir().join("corelane");
    if !bin.exists() {
        let ok = cargo().args(["build", "-p", "corelane", "--bin", "corelane"]).status().unwrap();
        assert!(ok.success() && bin.exists(), "cannot build {}", bin.display());
    }
    bin
}

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_daemon(dir: &Path) -> Daemon {
    let config = dir.join("test.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nlisten = \"\"\n\n[alloc]\nlisteners = [\"native:alloc.sock\", \
             \"tt-metal:{}/tt.sock\"]\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new(daemon_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("XDG_RUNTIME_DIR", dir)
        .env("CORELANE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon { child, dir: dir.to_owned() };
    let socket = dir.join("corelane/alloc.sock");
    wait_for("the daemon", || {
        QueryClient::connect(&socket, Duration::from_secs(1))
            .and_then(|mut q| q.usage(None))
            .is_ok()
    });
    daemon
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_c_example_leaves_an_exact_ledger() {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if Command::new(&cc).arg("--version").output().is_err() {
        eprintln!("SKIPPED the_c_example_leaves_an_exact_ledger: no C compiler ({cc}) found");
        return;
    }
    let dir = std::env::temp_dir().join(format!("corelane-capi-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let libdir = cdylib_dir();
    let exe = dir.join("example");
    let out = Command::new(&cc)
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(Path::new(CRATE).join("include"))
        .arg(Path::new(CRATE).join("examples/example.c"))
        .arg("-L")
        .arg(&libdir)
        .arg("-lcorelane_alloc")
        .arg("-lpthread")
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));

    let daemon = start_daemon(&dir);
    let socket = dir.join("corelane/alloc.sock");
    let mut child = Command::new(&exe)
        .env("CORELANE_ALLOC_SOCKET", &socket)
        .env("EXAMPLE_PAUSE", "1")
        .env_remove("TT_ALLOC_TRACKING_ENABLED")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "flushed", "the example did not get to its flush");

    // Before its exit: 2 threads x 2000 pairs + 2 kept each, a kernel and a CB loaded and
    // unloaded: 8008 events, 4 buffers of 4096 B held by that pid, nothing unknown.
    let mut q = QueryClient::connect(&socket, Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while q.usage(None).unwrap().counters.unwrap().events < 8008 {
        assert!(Instant::now() < deadline, "the example's events: {:?}", q.usage(None).unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    let u = q.usage(None).unwrap();
    let c = u.counters.unwrap();
    assert_eq!(
        (c.events, c.unknown_frees, c.duplicate_allocs, c.invalid),
        (8008, 0, 0, 0),
        "{c:?}"
    );
    let mine: Vec<_> =
        q.processes().unwrap().processes.into_iter().filter(|p| p.pid == pid).collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!((mine[0].buffers, mine[0].dram, mine[0].cbs, mine[0].kernels), (4, 4 * 4096, 0, 0));

    // After its exit: released, the ledger empty of it.
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "the example failed: {status}: {err}");
    wait_for("the release of the example's entries", || {
        q.processes().unwrap().processes.iter().all(|p| p.pid != pid)
    });
    let u = q.usage(None).unwrap();
    assert_eq!(u.devices[0].num_buffers, 0);
    assert_eq!(u.counters.unwrap().processes_released, 1);
    drop(daemon);
}
