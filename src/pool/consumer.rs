//! The consumer library: attach, map the stream's regions read-only after full URI
//! validation, and poll the header ring directly for the next seq (no descriptors), with
//! copy-out or a validated zero-copy view, gap and late counters, remapping on a higher
//! epoch, the freshness rules of spec §5.6, joining at the newest frame, and waiting without
//! spinning.
//!
//! ```no_run
//! use std::time::Duration;
//! use corelane::pool::{Consumer, PoolOptions, Wait};
//!
//! let opts = PoolOptions::new("/run/user/1000/corelane/control.sock", 10_000);
//! let mut consumer = Consumer::attach(opts).unwrap();
//! let mut frame = vec![0u8; 1 << 20];
//! while let Ok(got) = consumer.recv(&mut frame, Duration::from_secs(5), Wait::Futex) {
//!     println!("seq {} ({} bytes)", got.seq, got.payload_len);
//! }
//! ```
//!
//! When the driver announces a higher epoch (a new producer), the consumer first reads what
//! the epoch it has mapped still holds, then maps the new one and starts at its seq 0: a
//! producer that commits and detaches before the consumer saw its epoch loses no frame to the
//! switch. A consumer that joins a running stream starts at its newest frame.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::keeper::{DataSide, Keeper, QosCell, Upkeep};
use super::link::{Grant, Link, LinkShared, LinkState, LinkStats, PoolOptions, Role};
use super::regions::MapPolicy;
use super::{monotonic_ns, PoolError};
use crate::mapping::{Mapping, ReadOnlyMapping};
use crate::rings::seqlock::{DropReason, Frame, PayloadView, Poll, Polled, Subscriber, WakeRegion};

/// Frames [`Consumer::recv`] hands out between runs of the control plane when no keeper
/// thread runs it.
const UPKEEP_FRAMES: u32 = 64;

/// The longest a consumer sleeps on the stream's futex before it looks again (bounds what a
/// peer that suppresses wakes, or a missed remap, adds to its latency).
pub const PARK_SLICE: Duration = Duration::from_millis(10);

/// How a consumer waits for the next frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Spin on the header ring (lowest latency, a busy core).
    Spin,
    /// Sleep on the stream's futex until the producer commits (the producer pays a wake
    /// syscall only while someone sleeps).
    Futex,
}

/// What [`Consumer::poll`] found.
#[derive(Debug)]
pub enum ConsumerPoll {
    /// A frame, validated; its payload is in the buffer.
    Frame(Frame),
    /// Nothing new.
    Empty,
    /// A slot was dropped (late, torn, invalid; counted).
    Dropped(DropReason),
    /// No regions mapped now (no lease, or waiting for the next epoch).
    Unmapped,
}

/// Why [`Consumer::recv`] returned without a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// No frame within the timeout.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
}

/// Counters of a consumer, over every epoch it mapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Frames accepted.
    pub frames: u64,
    /// Seqs skipped (the writer lapped the reader).
    pub drops_gap: u64,
    /// Slots found in progress, changed during the read, or stale.
    pub drops_late: u64,
    /// Slots refused by validation.
    pub invalid: u64,
    /// Epochs mapped.
    pub mapped: u64,
    /// Grants that could not be mapped.
    pub map_failures: u64,
}

struct Mapped {
    subscriber: Subscriber<Arc<ReadOnlyMapping>>,
    wake: Option<WakeRegion<Arc<Mapping>>>,
    epoch: u64,
    /// Counts of the subscriber when mapped (stats are per subscriber).
    base: ConsumerStats,
}

/// A consumer of one stream.
pub struct Consumer {
    upkeep: Arc<Mutex<Upkeep>>,
    shared: Arc<LinkShared>,
    generation: u64,
    queue: VecDeque<Option<Grant>>,
    policy: MapPolicy,
    mapped: Option<Mapped>,
    keeper: Option<Keeper>,
    stats: ConsumerStats,
    qos: Arc<QosCell>,
    data: Arc<DataSide>,
    stream_id: u32,
    /// The epoch read last and where reading stopped: a grant of that epoch again (after a
    /// reattach) continues there, a lower one is ignored. `None` until the first mapping,
    /// which joins at the newest frame.
    last: Option<(u64, u64)>,
    /// Frames since the control plane last ran (`recv` without a keeper).
    since_upkeep: u32,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stream_id", &self.stream_id)
            .field("epoch", &self.epoch())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Connects, attaches as a consumer of `opts.stream_id`, maps the regions read-only.
    pub fn attach(opts: PoolOptions) -> Result<Self, PoolError> {
        let policy = MapPolicy::new(&opts)?;
        let link = Link::attach(opts, Role::Consumer)?;
        let shared = link.shared();
        let stream_id = link.stream_id();
        let upkeep = Upkeep::new(link);
        let qos = upkeep.qos_cell();
        let data = upkeep.data_side();
        let mut consumer = Self {
            data,
            upkeep: Arc::new(Mutex::new(upkeep)),
            shared,
            generation: 0,
            queue: VecDeque::new(),
            policy,
            mapped: None,
            keeper: None,
            stats: ConsumerStats::default(),
            qos,
            stream_id,
            last: None,
            since_upkeep: 0,
        };
        consumer.take_grants();
        if consumer.mapped.is_none() {
            consumer.map_next()?;
        }
        Ok(consumer)
    }

    /// Runs the control plane from the application's loop (keepalives, announces, liveness,
    /// QoS). Not needed with [`spawn_keeper`](Self::spawn_keeper).
    pub fn do_work(&mut self, now_ns: u64) -> bool {
        self.upkeep.lock().unwrap_or_else(|e| e.into_inner()).run(now_ns)
    }

    /// Starts a background thread that runs the control plane; stopped on drop.
    pub fn spawn_keeper(&mut self) -> std::io::Result<()> {
        if self.keeper.is_none() {
            self.keeper = Some(Keeper::spawn(self.upkeep.clone(), "corelane-consumer-keeper")?);
        }
        Ok(())
    }

    /// The next frame, copied into `payload` and validated (the copy is checked by the
    /// seqlock after it was made: a torn frame is never returned).
    pub fn poll(&mut self, payload: &mut [u8]) -> ConsumerPoll {
        self.prepare();
        let Some(mapped) = self.mapped.as_mut() else { return ConsumerPoll::Unmapped };
        let result = match mapped.subscriber.poll(payload) {
            Poll::Frame(frame) => ConsumerPoll::Frame(frame),
            Poll::Empty => ConsumerPoll::Empty,
            Poll::Dropped(reason) => ConsumerPoll::Dropped(reason),
        };
        self.account();
        result
    }

    /// The next frame read in place: `f` gets the validated frame and a view of its payload
    /// (byte ranges copied out on demand), and its result is returned only if the slot still
    /// held that frame after `f` returned (otherwise `Dropped(Late(Torn))`, counted).
    pub fn poll_with<T>(
        &mut self,
        f: impl FnOnce(&Frame, PayloadView<'_>) -> T,
    ) -> Option<Polled<T>> {
        self.prepare();
        let mapped = self.mapped.as_mut()?;
        let result = mapped.subscriber.poll_with(f);
        self.account();
        Some(result)
    }

    /// Waits (at most `timeout`) until a frame may be there: on the stream's futex, or, for a
    /// stream without the wake sidecar or while unmapped, in short sleeps. Returns whether
    /// something is ready.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        self.prepare();
        let generation = self.generation;
        let shared = self.shared.clone();
        match &self.mapped {
            Some(Mapped { subscriber, wake: Some(wake), .. }) => {
                // SYNC: the generation Acquire pairs with LinkShared::publish's Release;
                // `ready` is the subscriber's Relaxed load + Acquire fence (its SeqSlot).
                let ready = || {
                    subscriber.ready() || shared.generation.load(Ordering::Acquire) != generation
                };
                // In slices: a peer can suppress a wake (a zero stored into the shared
                // waiter count) or the control plane may have a new grant; each slice ends
                // in a re-check, so neither costs more than PARK_SLICE.
                let deadline = std::time::Instant::now() + timeout;
                loop {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return ready();
                    }
                    let parked = wake.doorbell().park(ready, Some(left.min(PARK_SLICE)));
                    if parked == crate::rings::wait::Parked::Ready {
                        return true;
                    }
                }
            }
            Some(Mapped { subscriber, wake: None, .. }) => {
                let deadline = std::time::Instant::now() + timeout;
                loop {
                    if subscriber.ready() {
                        return true;
                    }
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            None => {
                std::thread::sleep(timeout.min(Duration::from_millis(1)));
                false
            }
        }
    }

    /// The next frame within `timeout`, copied into `payload`, waiting as `wait` says and
    /// running the control plane meanwhile when no keeper thread does.
    pub fn recv(
        &mut self,
        payload: &mut [u8],
        timeout: Duration,
        wait: Wait,
    ) -> Result<Frame, RecvError> {
        let start = monotonic_ns();
        let deadline = start.saturating_add(timeout.as_nanos() as u64);
        loop {
            let polled = self.poll(payload);
            let busy = matches!(polled, ConsumerPoll::Frame(_) | ConsumerPoll::Dropped(_));
            if self.keeper.is_none() {
                // The control plane runs when nothing is ready, and every UPKEEP_FRAMES frames
                // while frames keep coming (a consumer working through a backlog still sends
                // its keepalives).
                self.since_upkeep += 1;
                if !busy || self.since_upkeep >= UPKEEP_FRAMES {
                    self.since_upkeep = 0;
                    self.do_work(monotonic_ns());
                }
            }
            match polled {
                ConsumerPoll::Frame(frame) => return Ok(frame),
                ConsumerPoll::Dropped(_) => continue,
                ConsumerPoll::Empty | ConsumerPoll::Unmapped => {}
            }
            let now = monotonic_ns();
            if now >= deadline {
                return Err(RecvError::Timeout(timeout));
            }
            match wait {
                Wait::Spin => std::hint::spin_loop(),
                Wait::Futex => {
                    // In slices, so the control plane runs when no keeper does.
                    let left = Duration::from_nanos(deadline - now).min(Duration::from_millis(10));
                    self.wait(left);
                }
            }
        }
    }

    /// The epoch mapped now.
    pub fn epoch(&self) -> Option<u64> {
        self.mapped.as_ref().map(|m| m.epoch)
    }

    /// The stream read.
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// The seq the next poll looks for.
    pub fn next_seq(&self) -> Option<u64> {
        self.mapped.as_ref().map(|m| m.subscriber.next_seq())
    }

    /// The counters.
    pub fn stats(&self) -> ConsumerStats {
        self.stats
    }

    /// The control plane's state and counters.
    pub fn link_stats(&self) -> (LinkState, LinkStats) {
        let upkeep = self.upkeep.lock().unwrap_or_else(|e| e.into_inner());
        (upkeep.link().state(), upkeep.link().stats())
    }

    /// The last control-plane failure, for logs.
    pub fn last_error(&self) -> Option<String> {
        let upkeep = self.upkeep.lock().unwrap_or_else(|e| e.into_inner());
        upkeep.link().last_error().map(str::to_owned)
    }

    /// Detaches and unmaps.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.stop();
        }
        self.mapped = None;
        self.data.set_watch(None);
        self.upkeep.lock().unwrap_or_else(|e| e.into_inner()).link_mut().close();
    }

    /// Takes new grants, and moves to the next one once the mapped epoch is read out.
    #[inline]
    fn prepare(&mut self) {
        // SYNC: the Acquire pairs with LinkShared::publish's Release.
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            self.take_grants();
        }
        if !self.queue.is_empty() {
            let drained = self.mapped.as_ref().is_none_or(|m| !m.subscriber.ready());
            if drained {
                let _ = self.map_next();
            }
        }
    }

    #[cold]
    fn take_grants(&mut self) {
        // SYNC: Acquire pairs with LinkShared::publish's Release: the grants queued up to
        // this generation are in `take()`.
        self.generation = self.shared.generation.load(Ordering::Acquire);
        for grant in self.shared.take() {
            if grant.is_none() {
                // Unmap now: the lease is gone or the regions are dead; what was queued
                // before belongs to them.
                self.queue.clear();
                self.unmap();
            } else {
                self.queue.push_back(grant);
            }
        }
    }

    fn unmap(&mut self) {
        if let Some(mapped) = self.mapped.take() {
            self.stats = self.totals(&mapped);
            self.last = Some((mapped.epoch, mapped.subscriber.next_seq()));
        }
        self.data.set_watch(None);
    }

    /// Maps the next queued grant (the previous epoch's regions are dropped).
    #[cold]
    fn map_next(&mut self) -> Result<(), PoolError> {
        let Some(Some(grant)) = self.queue.pop_front() else { return Ok(()) };
        self.unmap();
        if self.last.is_some_and(|(epoch, _)| grant.epoch < epoch) {
            return Ok(()); // an epoch older than one already read
        }
        let mapped = (|| {
            let (stream, watch) = self.policy.readable_streams(&grant)?;
            let wake = self.policy.wake(&grant)?;
            Ok::<_, PoolError>((Subscriber::new(stream), watch, wake))
        })();
        match mapped {
            Ok((mut subscriber, watch, wake)) => {
                match self.last {
                    // First mapping: join a running stream at its newest frame.
                    None => {
                        subscriber.join_newest();
                    }
                    // The epoch read before (a reattach): go on where reading stopped.
                    Some((epoch, next_seq)) if epoch == grant.epoch => subscriber.seek(next_seq),
                    // A new epoch: from its start.
                    Some(_) => {}
                }
                self.data.set_watch(Some(watch));
                self.stats.mapped += 1;
                self.stream_id = grant.stream_id;
                self.qos.epoch.store(grant.epoch, Ordering::Relaxed);
                let base = self.stats;
                self.mapped = Some(Mapped { subscriber, wake, epoch: grant.epoch, base });
                Ok(())
            }
            Err(e) => {
                self.stats.map_failures += 1;
                self.data.lost(format!("cannot map: {e}"));
                Err(e)
            }
        }
    }

    /// Totals: what earlier mappings counted plus `mapped`'s subscriber.
    fn totals(&self, mapped: &Mapped) -> ConsumerStats {
        let s = mapped.subscriber.stats();
        ConsumerStats {
            frames: mapped.base.frames + s.accepted,
            drops_gap: mapped.base.drops_gap + s.gap,
            drops_late: mapped.base.drops_late + s.late,
            invalid: mapped.base.invalid + s.invalid_total(),
            mapped: self.stats.mapped,
            map_failures: self.stats.map_failures,
        }
    }

    #[inline]
    fn account(&mut self) {
        if let Some(mapped) = &self.mapped {
            self.stats = self.totals(mapped);
            let q = &self.qos;
            q.seq.store(mapped.subscriber.next_seq(), Ordering::Relaxed);
            q.drops_gap.store(self.stats.drops_gap, Ordering::Relaxed);
            q.drops_late.store(self.stats.drops_late, Ordering::Relaxed);
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
