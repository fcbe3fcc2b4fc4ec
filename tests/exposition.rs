//! Issue 11 item 5, exposition: a real daemon with every service enabled, scraped on
//! `/metrics` and held to the strict checker of `exposition_check` (what the official
//! `prometheus-client` encoder enforces, plus the Prometheus naming rules).

mod exposition_check;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_corelane");

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The daemon, killed and its directory removed on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Starts the daemon with control, metrics, pool, alloc and frames, and waits for `/metrics`.
fn start(name: &str, metrics: SocketAddr) -> Daemon {
    let dir = std::env::temp_dir().join(format!("cl-expo-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let frames = free_addr();
    let config = dir.join("test.toml");
    let text = format!(
        "[runtime]\ndir = {dir:?}\n\n[metrics]\nlisten = \"{metrics}\"\npublish_interval_ms = 50\n\n\
         [pool.shm]\nnamespace = \"expo-{pid}\"\n\n\
         [alloc]\nlisteners = [\"native:alloc.sock\"]\n\n[frames]\nlisten = \"{frames}\"\n",
        dir = dir.display().to_string(),
        pid = std::process::id(),
    );
    fs::write(&config, text).unwrap();
    let log = fs::File::create(dir.join("daemon.stderr")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run").arg("-c").arg(&config);
    for (key, _) in std::env::vars() {
        if key.starts_with("CORELANE_") {
            cmd.env_remove(key);
        }
    }
    let child = cmd
        .env("CORELANE_LOG", "warn")
        .env_remove("XDG_RUNTIME_DIR")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut daemon = Daemon { child, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            let log = fs::read_to_string(daemon.dir.join("daemon.stderr")).unwrap_or_default();
            panic!("the daemon exited at start ({status}): {log}");
        }
        if TcpStream::connect(metrics).is_ok() {
            return daemon;
        }
        assert!(Instant::now() < deadline, "/metrics never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_daemons_exposition_passes_the_strict_checker() {
    let metrics = free_addr();
    let _daemon = start("strict", metrics);
    // Let the metrics agent and the frame worker publish a few intervals.
    std::thread::sleep(Duration::from_millis(400));
    let body = exposition_check::scrape(metrics);
    if std::env::var_os("EXPO_PRINT").is_some() {
        eprintln!("{body}");
    }
    let families = match exposition_check::check(&body) {
        Ok(families) => families,
        Err(errors) => panic!("the exposition breaks the rules:\n{errors}\n--- body ---\n{body}"),
    };
    // The lane families the issue names, with the kinds it asks for.
    for (name, kind) in [
        ("corelane_lane_passes_total", "counter"),
        ("corelane_lane_idle_seconds_total", "counter"),
        ("corelane_lane_pass_seconds", "summary"),
        // And the rest of what `corelane top` reads from the counters file (src/cli/top/live.rs
        // falls back to status figures when a name is missing, which would hide a rename).
        ("corelane_lane_work_total", "counter"),
        ("corelane_reactor", "gauge"),
        ("decode_seconds", "summary"),
        ("infer_seconds", "summary"),
        ("queue_depth", "gauge"),
        ("corelane_frames_connections", "gauge"),
        ("corelane_frames_connections_total", "counter"),
        ("corelane_frames_accepted_total", "counter"),
        ("corelane_frames_results_total", "counter"),
        ("corelane_frames_errors_total", "counter"),
        ("corelane_frames_closes_total", "counter"),
    ] {
        let family = families.get(name).unwrap_or_else(|| panic!("no {name} in\n{body}"));
        assert_eq!(family.kind, kind, "{name}");
    }
    // Seconds are seconds: a lane that ran 400 ms has idled less than that, and not zero.
    let idle = &families["corelane_lane_idle_seconds_total"].samples;
    assert!(idle.iter().all(|s| s.value < 60.0), "{idle:?}");
    // The lane summary counts the lane's passes (read later in the scrape, so not fewer).
    let passes = &families["corelane_lane_passes_total"].samples[0];
    let pass = &families["corelane_lane_pass_seconds"].samples;
    let count = pass.iter().find(|s| s.name == "corelane_lane_pass_seconds_count").unwrap();
    assert!(count.value > 0.0 && count.value >= passes.value, "{count:?} {passes:?}");
}
