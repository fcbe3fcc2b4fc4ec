//! The pool bridge: frames the worker accepts are published into a tensor pool stream
//! (`[frames] pool_stream`) and a local consumer reads them from shared memory.

#[path = "frames_support/mod.rs"]
mod support;

use std::fs;
use std::time::Duration;

use corelane::frames::proto::envelope::Payload;
use corelane::frames::vision::synthetic::Synthetic;
use corelane::frames::vision::yuv::RawFormat;
use corelane::pool::{Consumer, PoolOptions, Wait};
use support::{frame_msg, free_port, Peer, Worker};

#[test]
fn accepted_frames_reach_a_pool_consumer_as_i420_tensors() {
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("cl-frames-{pid}-pool"));
    let base = format!("/dev/shm/cl-frames-{pid}-pool");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&base).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.join("test.toml");
    fs::write(
        &config,
        format!(
            "[runtime]\ndir = {:?}\n\n[metrics]\nlisten = \"\"\n\n[alloc]\nenabled = false\n\n\
             [pool.shm]\nbase_dir = {base:?}\nallowed_base_dirs = [{base:?}]\n\n\
             [frames]\nlisten = \"{addr}\"\npool_stream = 10000\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    let stderr = dir.join("daemon.stderr");
    let mut worker = Worker { child: None, dir: dir.clone(), addr, config, stderr };
    worker.launch();

    let (w, h) = (64u32, 48u32);
    let mut peer = Peer::connect(worker.addr);
    peer.init(w, h, 4);
    // Frames go out until the bridge has attached; then each one is checked in the pool.
    let mut options = PoolOptions::new(dir.join("control.sock"), 10_000);
    options.allowed_dirs = vec![base.clone().into()];
    let mut consumer = Consumer::attach(options).expect("a consumer attaches to stream 10000");
    consumer.spawn_keeper().unwrap();
    let mut source = Synthetic::new(w, h, 1, 3);
    let mut payload = vec![0u8; 1 << 20];
    let mut seen = 0;
    for id in 1..=200u64 {
        let frame = frame_msg(&mut source, RawFormat::Nv12, id, w, h);
        let sent = source.picture().clone();
        peer.send(Payload::Frame(frame));
        match peer.recv_skip_heartbeats() {
            Some(Payload::Result(r)) => assert_eq!(r.frame_id, id),
            other => panic!("{other:?}"),
        }
        let Ok(got) = consumer.recv(&mut payload, Duration::from_millis(50), Wait::Futex) else {
            continue; // not attached yet
        };
        assert_eq!(got.tensor.shape.dims(), [h * 3 / 2, w]);
        assert_eq!(got.payload_len, (w * h * 3 / 2) as usize);
        let mut expected = sent.y.clone();
        expected.extend_from_slice(&sent.u);
        expected.extend_from_slice(&sent.v);
        assert_eq!(&payload[..got.payload_len], &expected[..], "frame {id}: the decoded picture");
        seen += 1;
        if seen == 20 {
            break;
        }
    }
    assert_eq!(seen, 20, "the bridge published frames: {}", worker.log());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let published = worker.counter("corelane_frames_pool_published_total");
        if published.is_some_and(|n| n >= 20) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "published: {published:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(worker);
    let _ = fs::remove_dir_all(&base);
}
