//! A device's ledger on the lane that owns it: `[[lanes]]` lists `alloc-device-1`, so device
//! 1's events cross from the ingest lane through a link, and its totals, process usage, dump
//! and a process's release come from that lane; device 0 stays on the ingest lane.

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corelane::alloc::proto::Hello;
use corelane::alloc::query::QueryClient;
use corelane::alloc::wire::{Event, MsgType};
use corelane::wire::{encode, Flags, ProtocolVersion};
use prost::Message;
use zerocopy::IntoBytes;

const BIN: &str = env!("CARGO_BIN_EXE_corelane");

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start() -> Daemon {
    let dir = std::env::temp_dir().join(format!("corelane-alloc-lanes-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let config = dir.join("test.toml");
    let text = format!(
        "[runtime]\ndir = {dir:?}\n[metrics]\nlisten = \"\"\n[pool]\nenabled = false\n\
         [alloc]\nlisteners = [\"native:alloc.sock\"]\nrelease_on_disconnect = true\n\
         [[lanes]]\nname = \"main\"\nagents = [\"control\", \"metrics\", \"alloc\"]\n\
         [[lanes]]\nname = \"dev\"\nagents = [\"alloc-device-1\"]\n",
        dir = dir.display().to_string()
    );
    fs::write(&config, text).unwrap();
    let log = fs::File::create(dir.join("daemon.stderr")).unwrap();
    let child = Command::new(BIN)
        .args(["run", "-c"])
        .env("CORELANE_FRAMES_ENABLED", "false")
        .arg(&config)
        .env("CORELANE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let daemon = Daemon { child, dir };
    let socket = daemon.dir.join("alloc.sock");
    wait_for("the alloc socket", || UnixStream::connect(&socket).is_ok());
    daemon
}

fn frame(kind: MsgType, seq: u64, device: u8, id: u64, size: u64, out: &mut Vec<u8>) {
    let e = Event { kind, device, buffer_type: 0, buffer_id: id, size };
    encode(ProtocolVersion::V2, kind.code(), Flags::EMPTY, seq, e.body(0).as_bytes(), out);
}

fn dram(q: &mut QueryClient, device: i32) -> u64 {
    q.usage(Some(device)).unwrap().devices[0].dram
}

#[test]
fn a_device_ledger_on_its_own_lane_gets_its_events_in_order_and_the_release() {
    let daemon = start();
    let socket = daemon.dir.join("alloc.sock");
    let mut q = QueryClient::connect(&socket, Duration::from_secs(5)).unwrap();
    let mut client = UnixStream::connect(&socket).unwrap();
    let mut out = Vec::new();
    let hello = Hello { name: "lanes".into(), first_seq: 0 }.encode_to_vec();
    encode(ProtocolVersion::V2, MsgType::Hello.code(), Flags::EMPTY, 1, &hello, &mut out);
    // Device 1: seq 1 (FREE x) arrives before seq 0 (ALLOC x): the window orders them before
    // they cross to the device lane, so no unknown free. Then 10 live buffers on each device.
    frame(MsgType::Free, 1, 1, 0x77, 0, &mut out);
    frame(MsgType::Alloc, 0, 1, 0x77, 4096, &mut out);
    for i in 0..10 {
        frame(MsgType::Alloc, 2 + 2 * i, 0, 0x1000 + i, 100, &mut out);
        frame(MsgType::Alloc, 3 + 2 * i, 1, 0x1000 + i, 1000, &mut out);
    }
    client.write_all(&out).unwrap();
    wait_for("device 1's events on its lane", || dram(&mut q, 1) == 10_000);
    assert_eq!(dram(&mut q, 0), 1000);
    let usage = q.usage(None).unwrap();
    let counters = usage.counters.unwrap();
    assert_eq!(counters.unknown_frees, 0);
    assert_eq!(usage.devices[1].num_buffers, 10);
    let procs = q.processes().unwrap();
    let me = std::process::id();
    let mine: Vec<_> = procs.processes.iter().filter(|p| p.pid == me).collect();
    assert_eq!(mine.len(), 2, "{procs:?}");
    assert_eq!(q.dump().unwrap().allocations.len(), 20);
    // This process's connections close (release_on_disconnect; the query connection is one
    // of them): both lanes release.
    drop(client);
    drop(q);
    wait_for("the release on both lanes", || {
        let log = fs::read_to_string(daemon.dir.join("daemon.stderr")).unwrap();
        log.contains("on alloc-device-1")
    });
    let mut q = QueryClient::connect(&socket, Duration::from_secs(5)).unwrap();
    assert_eq!((dram(&mut q, 0), dram(&mut q, 1)), (0, 0));
    let log = fs::read_to_string(daemon.dir.join("daemon.stderr")).unwrap();
    assert!(log.contains("on alloc-device-1"), "{log}");
    assert!(log.contains("device 1's ledger is on the lane of alloc-device-1"), "{log}");
}
