//! Review of issue 8 (tensor pool): failing tests that show defects in the driver, the daemon's
//! pool agent and the client libraries. Each test fails on the reviewed HEAD; its doc says
//! what it expects and why.
//!
//! The daemon tests start the real `corelane run` with a base directory of its own under
//! /dev/shm and short lease/announce periods (200 ms keepalive, 600 ms lease).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corelane::control::Client;
use corelane::pool::config::PoolConfig;
use corelane::pool::driver::{
    Action, AttachRequest, ClientKey, DetachRequest, Driver, DriverLimits, FakeBackend,
    HugepagesPolicy, Response, ResponseCode, Role,
};
use corelane::pool::proto;
use corelane::pool::{
    monotonic_ns, Consumer, PoolOptions, Producer, Wait, MSG_POOL_ATTACH, MSG_POOL_DETACH,
    MSG_POOL_STATUS, MSG_POOL_SUBSCRIBE,
};
use corelane::rings::shm::{Dtype, MajorOrder, ProgressUnit, TensorHeader};

const BIN: &str = env!("CARGO_BIN_EXE_corelane");
const CAM: u32 = 10_000;

// ---------------------------------------------------------------------------------------
// Sans-IO driver
// ---------------------------------------------------------------------------------------

fn attach_req(correlation_id: i64, stream_id: u32, client_id: u32, role: Role) -> AttachRequest {
    AttachRequest {
        correlation_id,
        stream_id,
        client_id,
        role: role.to_wire(),
        expected_layout_version: 0,
        publish_mode: None,
        require_hugepages: HugepagesPolicy::Unspecified.to_wire(),
        desired_node_id: None,
    }
}

fn attach_reply(driver: &mut Driver<FakeBackend>) -> corelane::pool::driver::AttachResponse {
    driver
        .drain_actions()
        .find_map(|a| match a {
            Action::Reply { msg: Response::Attach(r), .. } => Some(r),
            _ => None,
        })
        .expect("an attach reply")
}

fn detach_reply(driver: &mut Driver<FakeBackend>) -> corelane::pool::driver::DetachResponse {
    driver
        .drain_actions()
        .find_map(|a| match a {
            Action::Reply { msg: Response::Detach(r), .. } => Some(r),
            _ => None,
        })
        .expect("a detach reply")
}

/// Dynamic streams are created by attaches but never removed: once `max_dynamic_streams`
/// attach/detach cycles on distinct ids have happened, no client can ever get a dynamic
/// stream again (REJECTED "too many streams") although no lease is held anywhere. One
/// client looping attach/detach over ids locks the feature out until the daemon restarts
/// (and leaves an epoch directory per stream on /dev/shm).
#[test]
fn review8_dynamic_streams_without_leases_are_reclaimed() {
    let config = PoolConfig::embedded_default().unwrap();
    let limits = DriverLimits { max_dynamic_streams: 2, ..DriverLimits::default() };
    let mut driver =
        Driver::with_limits(&config, FakeBackend::default(), 1, 1_000, limits).unwrap();
    let mut now = 1_000_000;
    for (i, stream_id) in [30_001u32, 30_002].into_iter().enumerate() {
        let client_id = 100 + i as u32;
        driver.attach(ClientKey(1), &attach_req(1, stream_id, client_id, Role::Consumer), now);
        let r = attach_reply(&mut driver);
        assert_eq!(r.code, ResponseCode::Ok, "{r:?}");
        let detach = DetachRequest {
            correlation_id: 2,
            lease_id: r.lease_id.unwrap(),
            stream_id,
            client_id,
            role: Role::Consumer.to_wire(),
        };
        driver.detach(ClientKey(1), &detach, now);
        assert_eq!(detach_reply(&mut driver).code, ResponseCode::Ok);
        now += 10_000_000_000; // long after: nothing is cooling down or pending
        driver.tick(now);
        driver.drain_actions().for_each(drop);
    }
    assert_eq!(driver.lease_count(), 0, "no lease is held anywhere");
    driver.attach(ClientKey(2), &attach_req(3, 30_003, 200, Role::Consumer), now);
    let r = attach_reply(&mut driver);
    assert_eq!(
        r.code,
        ResponseCode::Ok,
        "a dynamic attach with no lease held anywhere was refused: {:?}",
        r.error_message
    );
}

/// Lease ids are sequential from a seed, so a client that holds one lease knows its
/// neighbours; the driver checks neither the connection nor anything secret on detach. A
/// consumer that attached right after the producer detaches the producer's lease (client id
/// from `pool status` / the announce's producer_id, lease id = its own - 1): the stream's
/// epoch moves under the producer.
#[test]
fn review8_a_client_cannot_detach_a_lease_it_was_not_granted() {
    let config = PoolConfig::embedded_default().unwrap();
    let mut driver = Driver::new(&config, FakeBackend::default(), 1, 1_000).unwrap();
    let now = 1_000_000_000;
    driver.attach(ClientKey(1), &attach_req(1, CAM, 11, Role::Producer), now);
    let producer = attach_reply(&mut driver);
    assert_eq!(producer.code, ResponseCode::Ok);
    driver.attach(ClientKey(2), &attach_req(1, CAM, 22, Role::Consumer), now);
    let consumer = attach_reply(&mut driver);
    let guessed = consumer.lease_id.unwrap() - 1;
    assert_ne!(Some(guessed), producer.lease_id, "lease ids are consecutive: guessable");
    let hijack = DetachRequest {
        correlation_id: 9,
        lease_id: guessed,
        stream_id: CAM,
        client_id: 11,
        role: Role::Producer.to_wire(),
    };
    driver.detach(ClientKey(2), &hijack, now);
    let r = detach_reply(&mut driver);
    assert_ne!(
        r.code,
        ResponseCode::Ok,
        "connection 2 detached the producer lease granted to connection 1"
    );
}

// ---------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------

struct Daemon {
    child: Child,
    dir: PathBuf,
    base: PathBuf,
}

impl Daemon {
    fn start(name: &str) -> Daemon {
        Self::start_with(name, "")
    }

    fn start_with(name: &str, extra: &str) -> Daemon {
        let tag = format!("corelane-review8-{}-{name}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let base = PathBuf::from("/dev/shm").join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&base).unwrap();
        let config = format!(
            "[pool.shm]\nbase_dir = \"{b}\"\nallowed_base_dirs = [\"{b}\"]\n\
             [pool.policies]\nannounce_period_ms = 200\nlease_keepalive_interval_ms = 200\n\
             lease_expiry_grace_intervals = 3\n{extra}",
            b = base.display()
        );
        let file = dir.join("test.toml");
        std::fs::write(&file, config).unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .env("CORELANE_FRAMES_ENABLED", "false")
            .arg("--config")
            .arg(&file)
            .env("XDG_RUNTIME_DIR", &dir)
            .env("CORELANE_METRICS_LISTEN", "")
            .env("CORELANE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Daemon { child, dir, base };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) =
                Client::builder().timeout(Duration::from_secs(1)).connect(daemon.socket())
            {
                if c.ping().is_ok() {
                    return daemon;
                }
            }
            assert!(Instant::now() < deadline, "daemon did not answer within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("corelane").join("control.sock")
    }

    fn client(&self) -> Client {
        Client::builder().timeout(Duration::from_secs(5)).connect(self.socket()).unwrap()
    }

    fn opts(&self, stream_id: u32) -> PoolOptions {
        let mut o = PoolOptions::new(self.socket(), stream_id);
        o.allowed_dirs = vec![self.base.clone()];
        o.announce_period = Duration::from_millis(200);
        o.keepalive_interval = Duration::from_millis(200);
        o.timeout = Duration::from_secs(2);
        o
    }

    fn status(&self) -> proto::PoolStatus {
        self.client().call(MSG_POOL_STATUS, &proto::PoolStatusRequest {}).unwrap()
    }

    fn stream(&self, stream_id: u32) -> proto::StreamStatus {
        self.status().streams.into_iter().find(|s| s.stream_id == stream_id).unwrap()
    }

    /// Whether the process still runs; its exit status otherwise.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn tensor(len: i32) -> TensorHeader {
    TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &[len], &[], ProgressUnit::None, 0).unwrap()
}

fn path_of(uri: &str) -> PathBuf {
    corelane::pool::uri::ShmUri::parse(uri).unwrap().path().to_owned()
}

/// The daemon maps every idle stream's header ring read-write (`FsBackend::touch`, to keep
/// its heartbeat) and stores into it every announce_period/4. The file is mode 0660 and any
/// client of the same user or group can open it read-write: a consumer that truncates it
/// kills the daemon with SIGBUS (every service, every client). Nothing the daemon maps may be
/// writable by a peer; refresh the heartbeat with `pwrite` on a descriptor the daemon kept,
/// or not at all (trap T13 can be handled on the consumer side: no producer in the announce).
#[test]
fn review8_a_client_truncating_an_idle_header_ring_does_not_kill_the_daemon() {
    let mut d = Daemon::start("sigbus");
    // A consumer's attach gives stream 10000 its first epoch, with no producer: the daemon
    // keeps that epoch's heartbeat itself.
    let consumer = Consumer::attach(d.opts(CAM)).unwrap();
    let header = path_of(&d.stream(CAM).header_region_uri);
    std::thread::sleep(Duration::from_millis(300)); // the daemon mapped it and touched it
    let file = std::fs::OpenOptions::new().write(true).open(&header).unwrap();
    file.set_len(0).unwrap(); // any peer with the file's mode can do this
    std::thread::sleep(Duration::from_millis(500));
    let exited = d.exited();
    drop(consumer);
    assert!(exited.is_none(), "the daemon died after a client truncated {header:?}: {exited:?}");
}

/// A client's own lease can end with reason DETACHED without the client asking (another
/// connection detached it: see the sans-IO test above). `Link::poll_events` then sets
/// `lease = None` and `continue`s: the link stays `Attached` without a lease, sends no more
/// keepalives, never reattaches, and the producer keeps committing into the old epoch's
/// files while the driver has moved the stream to a new epoch that consumers map. Frames
/// vanish silently and forever. Expected: the producer notices (pauses, reattaches) and ends
/// up writing the stream's current epoch.
#[test]
fn review8_a_producer_whose_lease_was_detached_elsewhere_reattaches() {
    let d = Daemon::start("hijack");
    let mut producer = Producer::attach(d.opts(CAM)).unwrap();
    producer.spawn_keeper().unwrap();
    let mut other = d.client();
    let attach = proto::AttachRequest {
        correlation_id: 1,
        stream_id: CAM,
        client_id: 0x0bad_cafe,
        role: 2,
        expected_layout_version: 0,
        publish_mode: None,
        require_hugepages: 0,
        desired_node_id: None,
    };
    let mine: proto::AttachResponse = other.call(MSG_POOL_ATTACH, &attach).unwrap();
    let detach = proto::DetachRequest {
        correlation_id: 2,
        lease_id: mine.lease_id.unwrap() - 1, // the producer's: granted just before
        stream_id: CAM,
        client_id: producer.client_id(),
        role: 1,
    };
    let _: proto::DetachResponse = other.call(MSG_POOL_DETACH, &detach).unwrap();
    let payload = [7u8; 64];
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let _ = producer.publish(&payload, tensor(64), monotonic_ns());
        let current = d.stream(CAM).epoch;
        if producer.epoch() == Some(current) {
            break; // writing what consumers map
        }
        assert!(
            Instant::now() < deadline,
            "4 s after its lease ended the producer still writes epoch {:?}, the stream is at \
             {current}; link {:?}",
            producer.epoch(),
            producer.link_stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A consumer whose lease ended (a missed keepalive: a stalled thread, a slow daemon)
/// reattaches to the same epoch (a consumer attach does not bump it) and `Consumer::map_next`
/// then starts a fresh `Subscriber` at seq 0 (`joined` is already true): it delivers again
/// every frame of the epoch still in the ring. Expected: no seq is delivered twice.
#[test]
fn review8_a_consumer_that_reattaches_to_the_same_epoch_does_not_redeliver_frames() {
    let d = Daemon::start("dup");
    let mut producer = Producer::attach(d.opts(CAM)).unwrap();
    producer.spawn_keeper().unwrap();
    let mut consumer = Consumer::attach(d.opts(CAM)).unwrap(); // no keeper: do_work in recv
    let payload = vec![1u8; 256];
    for _ in 0..5 {
        producer.publish(&payload, tensor(256), monotonic_ns()).unwrap();
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let frame = consumer.recv(&mut buf, Duration::from_secs(2), Wait::Spin).unwrap();
        seen.push(frame.seq);
    }
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    let epoch = consumer.epoch();
    // The consumer's thread stalls past its lease (600 ms); the producer stays attached.
    std::thread::sleep(Duration::from_millis(1_500));
    let until = Instant::now() + Duration::from_millis(1_500);
    let mut again = Vec::new();
    while Instant::now() < until {
        if let Ok(frame) = consumer.recv(&mut buf, Duration::from_millis(50), Wait::Spin) {
            again.push(frame.seq);
        }
    }
    assert_eq!(consumer.epoch(), epoch, "same epoch (the producer never left)");
    assert!(
        again.is_empty(),
        "nothing was published after seq 4, yet after its reattach the consumer delivered \
         seqs {again:?} again (link {:?})",
        consumer.link_stats()
    );
}

/// `Link::attach_once` always sends `opts.stream_id`. A producer of a dynamic stream
/// (`stream_id` 0, as `corelane produce --stream 0`) that loses its lease reattaches with 0
/// and gets a *new* stream: its consumers are left on the old one, and every reattach leaks
/// one more dynamic stream (never reclaimed). Expected: a reattach asks for the stream it had.
#[test]
fn review8_a_dynamic_stream_producer_reattaches_to_its_stream() {
    let d = Daemon::start("dyn");
    let mut producer = Producer::attach(d.opts(0)).unwrap(); // no keeper
    let first = producer.stream_id();
    assert_ne!(first, 0);
    std::thread::sleep(Duration::from_millis(1_500)); // the lease expires
    let payload = [3u8; 64];
    let deadline = Instant::now() + Duration::from_secs(4);
    while producer.link_stats().1.attaches < 2 || producer.epoch().is_none() {
        producer.do_work(monotonic_ns());
        let _ = producer.publish(&payload, tensor(64), monotonic_ns());
        assert!(Instant::now() < deadline, "no reattach in 4 s: {:?}", producer.link_stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        producer.stream_id(),
        first,
        "after its reattach the producer writes another stream; streams now: {:?}",
        d.status().streams.iter().map(|s| s.stream_id).collect::<Vec<_>>()
    );
}

/// Subscriptions are capped at MAX_SUBSCRIBERS (1024) for the whole driver, not per
/// connection: one connection subscribing 1024 times (distinct msg_ids) makes every other
/// client's attach fail (`Link::attach_once` subscribes first), and each broadcast costs 1024
/// pushes into the one shared link, so real subscribers lose revokes and announces.
#[test]
fn review8_one_connection_cannot_take_every_subscriber_slot() {
    let d = Daemon::start("subs");
    let mut hostile = d.client();
    let mut held = 0;
    for _ in 0..1024 {
        let r: Result<(_, proto::SubscribeReply), _> =
            hostile.subscribe(MSG_POOL_SUBSCRIBE, &proto::Subscribe {});
        held += usize::from(r.is_ok());
    }
    assert!(held <= 4, "one connection holds {held} subscriptions");
    let attached = Consumer::attach(d.opts(CAM));
    assert!(
        attached.is_ok(),
        "one connection's subscriptions lock every client out: {:?}",
        attached.err()
    );
}

/// Every producer attach and every producer detach creates an epoch (files reserved and
/// zeroed on the pool lane), and the GC never removes an epoch younger than
/// `epoch_gc_min_age_ns` (3 s by default): a client looping attach/detach (or a producer
/// whose reconnect loop misbehaves) makes epoch directories without bound. With the camera
/// profile (32 x 921600 B = 29.5 MB per epoch) that fills /dev/shm for the whole host within
/// seconds, and stalls the lane the control agent shares with the pool agent by default.
/// Expected: the epochs of a stream stay bounded (refuse or delay epoch bumps past a few
/// young epochs, or rate-limit producer attaches per stream).
#[test]
fn review8_an_attach_detach_loop_does_not_pile_up_epochs() {
    let d = Daemon::start("epochs");
    let mut c = d.client();
    let stream_id = 20_050; // a dynamic stream of the small profile (256 KiB per epoch)
    for i in 0..30 {
        let attach = proto::AttachRequest {
            correlation_id: 2 * i,
            stream_id,
            client_id: 4242,
            role: 1,
            expected_layout_version: 0,
            publish_mode: None,
            require_hugepages: 0,
            desired_node_id: None,
        };
        let r: proto::AttachResponse = c.call(MSG_POOL_ATTACH, &attach).unwrap();
        assert_eq!(r.code, 0, "{}", r.error_message);
        let detach = proto::DetachRequest {
            correlation_id: 2 * i + 1,
            lease_id: r.lease_id.unwrap(),
            stream_id,
            client_id: 4242,
            role: 1,
        };
        let r: proto::DetachResponse = c.call(MSG_POOL_DETACH, &detach).unwrap();
        assert_eq!(r.code, 0, "{}", r.error_message);
    }
    let user_dir = std::fs::read_dir(&d.base).unwrap().next().unwrap().unwrap().path();
    let stream_dir = user_dir.join("default").join(stream_id.to_string());
    let epochs = std::fs::read_dir(&stream_dir).unwrap().count();
    assert!(
        epochs <= 8,
        "{epochs} epoch directories of stream {stream_id} on disk after 30 attach/detach pairs"
    );
}

/// Review 8, finding 9: any consumer maps `corelane.wake` read-write, and a zero stored into
/// its waiter count makes the producer skip the wake. A parked consumer must still see the
/// frame within one park slice (10 ms), not sleep out the caller's whole timeout.
#[test]
fn review8_a_peer_zeroing_the_wake_word_delays_a_parked_consumer_one_slice_at_most() {
    use std::os::unix::fs::FileExt;
    let d = Daemon::start("wake");
    let mut producer = Producer::attach(d.opts(CAM)).unwrap();
    producer.spawn_keeper().unwrap();
    let mut consumer = Consumer::attach(d.opts(CAM)).unwrap();
    consumer.spawn_keeper().unwrap();
    let epoch = producer.epoch().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let deadline = Instant::now() + Duration::from_secs(10);
    while consumer.epoch() != Some(epoch) {
        let _ = consumer.poll(&mut buf);
        assert!(Instant::now() < deadline, "the consumer never mapped the producer's epoch");
        std::thread::sleep(Duration::from_millis(5));
    }
    let user_dir = std::fs::read_dir(&d.base).unwrap().next().unwrap().unwrap().path();
    let wake = user_dir.join("default").join(CAM.to_string()).join(epoch.to_string());
    let wake = std::fs::OpenOptions::new().write(true).open(wake.join("corelane.wake")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hostile = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                wake.write_all_at(&[0u8; 8], 0).unwrap(); // waiters = 0
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let waiter = std::thread::spawn(move || {
        let woke = consumer.wait(Duration::from_secs(3));
        (woke, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(100)); // parked now
    let mut claim = producer.claim(16).unwrap();
    claim.write_payload(&[7; 16]);
    claim.commit(tensor(16), corelane::pool::monotonic_ns(), 0);
    let published = Instant::now();
    let (woke, at) = waiter.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hostile.join().unwrap();
    assert!(woke, "the wait saw the frame");
    let late = at.saturating_duration_since(published);
    assert!(late < Duration::from_millis(500), "the consumer slept {late:?} past the commit");
}

/// Review 8, finding 13: any client could set a stream's frame count in `pool status` with
/// a QosProducer of its own. Only the stream's producer, for its current epoch, counts.
#[test]
fn review8_a_qos_report_from_anyone_but_the_producer_is_ignored() {
    let d = Daemon::start("qos");
    let producer = Producer::attach(d.opts(CAM)).unwrap();
    let epoch = producer.epoch().unwrap();
    let mut hostile = d.client();
    let forged = proto::QosReport {
        report: Some(proto::qos_report::Report::Producer(proto::QosProducer {
            stream_id: CAM,
            producer_id: producer.client_id() ^ 1,
            epoch,
            current_seq: 999_999,
            watermark: None,
        })),
    };
    let _: proto::QosAck = hostile.call(corelane::pool::MSG_POOL_QOS, &forged).unwrap();
    let status: proto::PoolStatus =
        hostile.call(MSG_POOL_STATUS, &proto::PoolStatusRequest {}).unwrap();
    let cam = status.streams.iter().find(|s| s.stream_id == CAM).unwrap();
    assert_ne!(cam.frames, 999_999, "a forged QoS report set the stream's frame count");
    // The producer's own report counts.
    let own = proto::QosReport {
        report: Some(proto::qos_report::Report::Producer(proto::QosProducer {
            stream_id: CAM,
            producer_id: producer.client_id(),
            epoch,
            current_seq: 42,
            watermark: None,
        })),
    };
    let _: proto::QosAck = hostile.call(corelane::pool::MSG_POOL_QOS, &own).unwrap();
    let status: proto::PoolStatus =
        hostile.call(MSG_POOL_STATUS, &proto::PoolStatusRequest {}).unwrap();
    let cam = status.streams.iter().find(|s| s.stream_id == CAM).unwrap();
    assert_eq!(cam.frames, 42);
}

/// Review 8: the consumer library never said hello, so the supervisor's `force_no_shm` had no
/// effect on corelane consumers. Now a consumer refused shared memory fails to attach, with
/// the supervisor's fallback URI in the error, and takes no lease.
#[test]
fn review8_a_consumer_told_no_shm_by_the_supervisor_does_not_attach() {
    let d = Daemon::start_with(
        "noshm",
        "[pool.supervisor]\nforce_no_shm = true\npayload_fallback_uri = \"bridge://x\"\n",
    );
    match Consumer::attach(d.opts(CAM)) {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("force_no_shm") && text.contains("bridge://x"), "{text}");
        }
        Ok(_) => panic!("a consumer told use_shm = false attached"),
    }
    let mut c = d.client();
    let status: proto::PoolStatus = c.call(MSG_POOL_STATUS, &proto::PoolStatusRequest {}).unwrap();
    assert_eq!(status.leases, 0, "no lease was taken");
    // The producer side is not the supervisor's: it attaches.
    assert!(Producer::attach(d.opts(CAM)).is_ok());
}
