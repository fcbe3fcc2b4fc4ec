//! The periodic control-plane work of a pool client, run from the application's
//! `do_work(now)` or from a keeper thread: the [`Link`]'s keepalives and events, the
//! producer's superblock heartbeat (`activity_timestamp_ns`), the consumer's liveness check
//! of the mapped epoch (spec §5.6), and QoS reports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::link::{Link, Role};
use super::monotonic_ns;
use super::proto::{qos_report, QosConsumer, QosProducer, QosReport};
use crate::mapping::{Mapping, ReadOnlyMapping};
use crate::rings::seqlock::{Liveness, Stream};

/// How often the keeper thread runs the control plane.
pub const KEEPER_TICK: Duration = Duration::from_millis(2);

/// How often a QoS report goes to the driver (spec: about 1 Hz).
pub const QOS_INTERVAL: Duration = Duration::from_secs(1);

/// How often a consumer checks the mapped epoch's heartbeat and owner.
pub const LIVENESS_CHECK: Duration = Duration::from_millis(20);

/// What the data plane counts for QoS, written with Relaxed stores on its own thread and
/// read by whoever runs the upkeep (a report is a snapshot; no ordering is needed).
#[derive(Debug, Default)]
pub struct QosCell {
    /// The epoch mapped.
    pub epoch: AtomicU64,
    /// Producer: the next seq; consumer: the last seq seen.
    pub seq: AtomicU64,
    /// Consumer: frames skipped (gap).
    pub drops_gap: AtomicU64,
    /// Consumer: frames found late or torn.
    pub drops_late: AtomicU64,
}

/// What the data plane hands the control plane without waiting for it: the streams it
/// mapped (for the heartbeat and the liveness check) and a mapping failure. Each is a short
/// lock that no one holds across I/O, so a claim or a poll never waits for a keepalive's
/// round trip (the [`Upkeep`] lock, which the keeper holds across those, is never taken by
/// the data plane).
#[derive(Debug, Default)]
pub struct DataSide {
    /// Producer: the stream whose superblock heartbeat it refreshes.
    heartbeat: Mutex<Option<Stream<Arc<Mapping>>>>,
    /// Consumer: the stream whose liveness it checks, and when it was mapped.
    watch: Mutex<Option<(Stream<Arc<ReadOnlyMapping>>, u64)>>,
    /// A grant that could not be mapped: why.
    lost: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DataSide {
    /// The producer's mapped stream (`None` when unmapped).
    pub fn set_heartbeat(&self, stream: Option<Stream<Arc<Mapping>>>) {
        *lock(&self.heartbeat) = stream;
    }

    /// The consumer's mapped stream (`None` when unmapped).
    pub fn set_watch(&self, stream: Option<Stream<Arc<ReadOnlyMapping>>>) {
        *lock(&self.watch) = stream.map(|s| (s, monotonic_ns()));
    }

    /// The grant could not be mapped; the control plane gives the lease back and reattaches.
    pub fn lost(&self, why: String) {
        *lock(&self.lost) = Some(why);
    }
}

/// The control plane of one client.
#[derive(Debug)]
pub struct Upkeep {
    link: Link,
    qos: Arc<QosCell>,
    data: Arc<DataSide>,
    next_touch_ns: u64,
    next_watch_ns: u64,
    next_qos_ns: u64,
}

impl Upkeep {
    /// Upkeep around `link`.
    pub fn new(link: Link) -> Self {
        Self {
            link,
            qos: Arc::new(QosCell::default()),
            data: Arc::new(DataSide::default()),
            next_touch_ns: 0,
            next_watch_ns: 0,
            next_qos_ns: 0,
        }
    }

    /// The link.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The link, to change.
    pub fn link_mut(&mut self) -> &mut Link {
        &mut self.link
    }

    /// The QoS counters the data plane writes.
    pub fn qos_cell(&self) -> Arc<QosCell> {
        self.qos.clone()
    }

    /// What the data plane hands over.
    pub fn data_side(&self) -> Arc<DataSide> {
        self.data.clone()
    }

    /// One round at `now_ns`. Returns whether anything was done.
    pub fn run(&mut self, now_ns: u64) -> bool {
        let mut work = false;
        if let Some(why) = lock(&self.data.lost).take() {
            self.link.regions_lost(now_ns, why);
            work = true;
        }
        work |= self.link.do_work(now_ns);
        let period_ns = self.link.options().announce_period.as_nanos() as u64;
        if now_ns >= self.next_touch_ns {
            if let Some(stream) = lock(&self.data.heartbeat).as_ref() {
                stream.touch(now_ns);
            }
            self.next_touch_ns = now_ns.saturating_add(period_ns / 4);
        }
        if now_ns >= self.next_watch_ns {
            self.next_watch_ns = now_ns.saturating_add(LIVENESS_CHECK.as_nanos() as u64);
            let mut watch = lock(&self.data.watch);
            let dead = watch.as_ref().and_then(|(stream, since)| {
                let grace = now_ns.saturating_sub(*since) < 3 * period_ns;
                match stream.liveness(now_ns, 3 * period_ns) {
                    Liveness::Live => None,
                    Liveness::Stale { .. } if grace => None,
                    // Only a producer refreshes the heartbeat: a stream without one is idle,
                    // not dead (the driver never writes the files it made, see FsBackend).
                    Liveness::Stale { .. } if !self.link.producer_present() => None,
                    Liveness::Stale { age_ns } => {
                        Some(format!("stale heartbeat: {} ms old", age_ns / 1_000_000))
                    }
                    Liveness::PidChanged { was, now } => {
                        Some(format!("region owner changed: pid {was} -> {now}"))
                    }
                    Liveness::Replaced(e) => Some(format!("region replaced: {e}")),
                }
            });
            if let Some(why) = dead {
                *watch = None;
                drop(watch);
                self.link.regions_lost(now_ns, why);
                work = true;
            }
        }
        if now_ns >= self.next_qos_ns {
            self.next_qos_ns = now_ns.saturating_add(QOS_INTERVAL.as_nanos() as u64);
            let report = self.qos_report();
            self.link.report_qos(report);
        }
        work
    }

    fn qos_report(&self) -> QosReport {
        let q = &self.qos;
        let (epoch, seq) = (q.epoch.load(Ordering::Relaxed), q.seq.load(Ordering::Relaxed));
        let report = match self.link.role() {
            Role::Producer => qos_report::Report::Producer(QosProducer {
                stream_id: self.link.stream_id(),
                producer_id: self.link.client_id(),
                epoch,
                current_seq: seq,
                watermark: None,
            }),
            Role::Consumer => qos_report::Report::Consumer(QosConsumer {
                stream_id: self.link.stream_id(),
                consumer_id: self.link.client_id(),
                epoch,
                last_seq_seen: seq,
                drops_gap: q.drops_gap.load(Ordering::Relaxed),
                drops_late: q.drops_late.load(Ordering::Relaxed),
                mode: super::MODE_STREAM,
            }),
        };
        QosReport { report: Some(report) }
    }
}

/// A background thread running an [`Upkeep`] every [`KEEPER_TICK`].
#[derive(Debug)]
pub struct Keeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts the thread.
    pub fn spawn(upkeep: Arc<Mutex<Upkeep>>, name: &str) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                upkeep.lock().unwrap_or_else(|e| e.into_inner()).run(monotonic_ns());
                std::thread::sleep(KEEPER_TICK);
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.halt();
    }
}
