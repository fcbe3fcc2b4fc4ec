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

/// A daemon with the pool driver and the worker; `pool_stream` for the bridge (0: off).
fn start(name: &str, pool_stream: u32) -> (Worker, String) {
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("cl-frames-{pid}-{name}"));
    let base = format!("/dev/shm/cl-frames-{pid}-{name}");
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
             [frames]\nlisten = \"{addr}\"\npool_stream = {pool_stream}\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    let stderr = dir.join("daemon.stderr");
    let mut worker = Worker { child: None, dir: dir.clone(), addr, config, stderr };
    worker.launch();
    (worker, base)
}

#[test]
fn accepted_frames_reach_a_pool_consumer_as_i420_tensors() {
    let (worker, base) = start("bridge", 10_000);
    let dir = worker.dir.clone();

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

#[test]
fn the_agent_streams_a_local_pool_stream_to_the_worker() {
    use corelane::frames::agent::{run, AgentOptions, SourceSpec};
    use corelane::frames::vision::yuv::pack;
    use corelane::pool::Producer;
    use corelane::rings::shm::{Dtype, MajorOrder, ProgressUnit, TensorHeader};

    let (worker, base) = start("source", 0);
    let socket = worker.dir.join("control.sock");
    let (w, h) = (160u32, 120u32);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A camera: NV12 frames of moving rectangles into stream 10000, 200 a second.
    let camera = {
        let (socket, base, stop) = (socket.clone(), base.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut options = PoolOptions::new(&socket, 10_000);
            options.allowed_dirs = vec![base.into()];
            let mut producer = Producer::attach(options).expect("the camera attaches");
            producer.spawn_keeper().unwrap();
            let mut scene = Synthetic::new(w, h, 2, 11);
            let mut data = Vec::new();
            let dims = [(h * 3 / 2) as i32, w as i32];
            let tensor =
                TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &dims, &[], ProgressUnit::None, 0)
                    .unwrap();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                pack(scene.next_picture(), RawFormat::Nv12, &mut data);
                if producer.publish(&data, tensor, 0).is_ok() {
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        })
    };
    let options = AgentOptions {
        worker: worker.addr.to_string(),
        source: SourceSpec::Pool(10_000),
        format: RawFormat::Nv12,
        width: w,
        height: h,
        fps: 0.0,
        frames: 60,
        socket: socket.clone(),
        verbose: false,
        ..AgentOptions::default()
    };
    // The consumer attaches with the pool's default allowed dirs: make the base visible.
    let summary = run(&options);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = camera.join().unwrap();
    let summary = summary.unwrap_or_else(|e| panic!("{e}: {}", worker.log()));
    assert!(published >= 60, "{published}");
    assert_eq!(summary.results_total + summary.ai_drops_latestwins_total, 60, "{summary:?}");
    assert!(summary.results_total >= 30, "{summary:?}");
    assert!(summary.detections_total > 0, "the rectangles were found: {summary:?}");
    drop(worker);
    let _ = fs::remove_dir_all(&base);
}
