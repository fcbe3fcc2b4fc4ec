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

/// The control plane of one client.
#[derive(Debug)]
pub struct Upkeep {
    link: Link,
    qos: Arc<QosCell>,
    /// Producer: the stream whose superblock it refreshes.
    heartbeat: Option<Stream<Arc<Mapping>>>,
    /// Consumer: the stream whose liveness it checks.
    watch: Option<Stream<Arc<ReadOnlyMapping>>>,
    /// When the mapping being watched was mapped (liveness is not judged for 3 announce
    /// periods after, as the reference consumer does).
    watch_since_ns: u64,
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
            heartbeat: None,
            watch: None,
            watch_since_ns: 0,
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

    /// The producer's mapped stream, for the heartbeat (`None` when unmapped).
    pub fn set_heartbeat(&mut self, stream: Option<Stream<Arc<Mapping>>>) {
        self.heartbeat = stream;
        self.next_touch_ns = 0;
    }

    /// The consumer's mapped stream, for the liveness check (`None` when unmapped).
    pub fn set_watch(&mut self, stream: Option<Stream<Arc<ReadOnlyMapping>>>) {
        self.watch = stream;
        self.watch_since_ns = monotonic_ns();
    }

    /// One round at `now_ns`. Returns whether anything was done.
    pub fn run(&mut self, now_ns: u64) -> bool {
        let mut work = self.link.do_work(now_ns);
        let period_ns = self.link.options().announce_period.as_nanos() as u64;
        if let Some(stream) = &self.heartbeat {
            if now_ns >= self.next_touch_ns {
                stream.touch(now_ns);
                self.next_touch_ns = now_ns.saturating_add(period_ns / 4);
            }
        }
        if self.watch.is_some() && now_ns >= self.next_watch_ns {
            self.next_watch_ns = now_ns.saturating_add(LIVENESS_CHECK.as_nanos() as u64);
            let grace = now_ns.saturating_sub(self.watch_since_ns) < 3 * period_ns;
            let verdict = self.watch.as_ref().map(|s| s.liveness(now_ns, 3 * period_ns));
            let dead = match verdict {
                Some(Liveness::Live) | None => None,
                Some(Liveness::Stale { .. }) if grace => None,
                // Only a producer refreshes the heartbeat: a stream without one is idle, not
                // dead (the driver never writes the files it made, see FsBackend).
                Some(Liveness::Stale { .. }) if !self.link.producer_present() => None,
                Some(Liveness::Stale { age_ns }) => {
                    Some(format!("stale heartbeat: {} ms old", age_ns / 1_000_000))
                }
                Some(Liveness::PidChanged { was, now }) => {
                    Some(format!("region owner changed: pid {was} -> {now}"))
                }
                Some(Liveness::Replaced(e)) => Some(format!("region replaced: {e}")),
            };
            if let Some(why) = dead {
                self.watch = None;
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
