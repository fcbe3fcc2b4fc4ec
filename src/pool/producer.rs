//! The producer library: attach as the stream's one producer, then claim -> write payload and
//! tensor header -> commit, with keepalives and reattach on revoke or expiry.
//!
//! ```no_run
//! use corelane::pool::{monotonic_ns, PoolOptions, Producer};
//! use corelane::rings::shm::{Dtype, MajorOrder, ProgressUnit, TensorHeader};
//!
//! let opts = PoolOptions::new("/run/user/1000/corelane/control.sock", 10_000);
//! let mut producer = Producer::attach(opts).unwrap();
//! producer.spawn_keeper().unwrap(); // or call producer.do_work(monotonic_ns()) from your loop
//! let tensor = TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &[480, 640, 3], &[], ProgressUnit::None, 0).unwrap();
//! let frame = vec![0u8; 480 * 640 * 3];
//! let mut claim = producer.claim(frame.len() as u32).unwrap();
//! claim.write_payload(&frame);
//! let seq = claim.commit(tensor, monotonic_ns(), 0);
//! ```
//!
//! The data plane never blocks and never touches the control socket: `claim` checks one
//! atomic (has the control plane a new grant?) and, only when it moved, maps the new epoch's
//! files. Without a lease (revoked, expired, daemon gone) `claim` fails with
//! [`ClaimError::NotAttached`] and the frame is the caller's to drop (spec §5.9: Paused),
//! while the control plane reattaches with back-off.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::keeper::{DataSide, Keeper, QosCell, Upkeep};
use super::link::{Link, LinkShared, LinkState, LinkStats, PoolOptions, Role};
use super::regions::MapPolicy;
use super::{monotonic_ns, PoolError};
use crate::mapping::Mapping;
use crate::rings::seqlock::{Publisher, SlotClaim, TooLarge, WakeRegion};
use crate::rings::shm::TensorHeader;

/// Why a claim failed; the frame is dropped (never blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// No lease now (revoked, expired, driver gone): the control plane is reattaching.
    #[error("not attached: no producer lease now (reattaching)")]
    NotAttached,
    /// No pool's stride holds the frame.
    #[error("{0}")]
    TooLarge(TooLarge),
}

/// Counters of a producer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Frames committed.
    pub committed: u64,
    /// Claims refused while not attached.
    pub not_attached: u64,
    /// Claims refused because no pool fits.
    pub too_large: u64,
    /// Epochs mapped (the first one included).
    pub mapped: u64,
    /// Grants that could not be mapped (a URI refused, files gone).
    pub map_failures: u64,
}

struct Mapped {
    publisher: Publisher<Arc<Mapping>>,
    wake: Option<WakeRegion<Arc<Mapping>>>,
    epoch: u64,
}

/// The producer of one stream.
pub struct Producer {
    upkeep: Arc<Mutex<Upkeep>>,
    shared: Arc<LinkShared>,
    generation: u64,
    policy: MapPolicy,
    mapped: Option<Mapped>,
    keeper: Option<Keeper>,
    stats: ProducerStats,
    stream_id: u32,
    client_id: u32,
    qos: Arc<QosCell>,
    data: Arc<DataSide>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("stream_id", &self.stream_id)
            .field("epoch", &self.epoch())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Connects to the daemon, attaches as the producer of `opts.stream_id` and maps the
    /// epoch's files read-write after validating their URIs.
    pub fn attach(opts: PoolOptions) -> Result<Self, PoolError> {
        let policy = MapPolicy::new(&opts)?;
        let link = Link::attach(opts, Role::Producer)?;
        let shared = link.shared();
        let (stream_id, client_id) = (link.stream_id(), link.client_id());
        let upkeep = Upkeep::new(link);
        let qos = upkeep.qos_cell();
        let data = upkeep.data_side();
        let mut producer = Self {
            qos,
            data,
            upkeep: Arc::new(Mutex::new(upkeep)),
            shared,
            generation: 0,
            policy,
            mapped: None,
            keeper: None,
            stats: ProducerStats::default(),
            stream_id,
            client_id,
        };
        producer.refresh()?;
        Ok(producer)
    }

    /// Runs the control plane from the application's loop: keepalives, events, reattach,
    /// the superblock heartbeat, QoS. Cheap when nothing is due; call it often (every frame
    /// is fine). Not needed with [`spawn_keeper`](Self::spawn_keeper).
    pub fn do_work(&mut self, now_ns: u64) -> bool {
        let work = self.upkeep.lock().unwrap_or_else(|e| e.into_inner()).run(now_ns);
        let _ = self.refresh();
        work
    }

    /// Starts a background thread that runs the control plane (keepalives, events,
    /// reattach, heartbeat) every few milliseconds, so the application need not call
    /// [`do_work`](Self::do_work). Stopped when the producer drops.
    pub fn spawn_keeper(&mut self) -> std::io::Result<()> {
        if self.keeper.is_none() {
            self.keeper = Some(Keeper::spawn(self.upkeep.clone(), "corelane-producer-keeper")?);
        }
        Ok(())
    }

    /// Claims the next slot for a payload of `values_len` bytes (the smallest pool that holds
    /// it). Write the payload, then [`Claim::commit`].
    pub fn claim(&mut self, values_len: u32) -> Result<Claim<'_>, ClaimError> {
        // SYNC: Acquire pairs with LinkShared::publish's Release: a moved generation comes
        // with its queued grant.
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            let _ = self.refresh();
        }
        let Some(mapped) = self.mapped.as_mut() else {
            self.stats.not_attached += 1;
            return Err(ClaimError::NotAttached);
        };
        match mapped.publisher.claim(values_len) {
            Ok(slot) => Ok(Claim {
                slot,
                wake: mapped.wake.as_ref(),
                committed: &mut self.stats.committed,
                qos: &self.qos,
            }),
            Err(e) => {
                self.stats.too_large += 1;
                Err(ClaimError::TooLarge(e))
            }
        }
    }

    /// Claims, copies `payload`, commits: one frame in one call. Returns its seq.
    pub fn publish(
        &mut self,
        payload: &[u8],
        tensor: TensorHeader,
        timestamp_ns: u64,
    ) -> Result<u64, ClaimError> {
        let len = u32::try_from(payload.len())
            .map_err(|_| ClaimError::TooLarge(TooLarge { values_len: u32::MAX }))?;
        let mut claim = self.claim(len)?;
        claim.write_payload(payload);
        Ok(claim.commit(tensor, timestamp_ns, 0))
    }

    /// The epoch mapped now (`None` while not attached).
    pub fn epoch(&self) -> Option<u64> {
        self.mapped.as_ref().map(|m| m.epoch)
    }

    /// The stream written.
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// This producer's client id.
    pub fn client_id(&self) -> u32 {
        self.client_id
    }

    /// The seq the next claim gets.
    pub fn next_seq(&self) -> Option<u64> {
        self.mapped.as_ref().map(|m| m.publisher.next_seq())
    }

    /// The counters.
    pub fn stats(&self) -> ProducerStats {
        self.stats
    }

    /// The control plane's counters and state.
    pub fn link_stats(&self) -> (LinkState, LinkStats) {
        let upkeep = self.upkeep.lock().unwrap_or_else(|e| e.into_inner());
        (upkeep.link().state(), upkeep.link().stats())
    }

    /// The last control-plane failure, for logs.
    pub fn last_error(&self) -> Option<String> {
        let upkeep = self.upkeep.lock().unwrap_or_else(|e| e.into_inner());
        upkeep.link().last_error().map(str::to_owned)
    }

    /// Detaches (the driver bumps the epoch) and unmaps.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.stop();
        }
        self.mapped = None;
        self.data.set_heartbeat(None);
        self.upkeep.lock().unwrap_or_else(|e| e.into_inner()).link_mut().close();
    }

    /// Maps the grant the control plane published, if it moved.
    fn refresh(&mut self) -> Result<(), PoolError> {
        // SYNC: Acquire pairs with LinkShared::publish's Release (as in `claim`).
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation == self.generation {
            return Ok(());
        }
        self.generation = generation;
        // A producer maps only the newest grant. (None queued: an earlier take already got
        // what this generation published.)
        let Some(grant) = self.shared.take().pop_back() else { return Ok(()) };
        self.mapped = None;
        let Some(grant) = grant else {
            self.data.set_heartbeat(None);
            return Ok(());
        };
        let mapped = (|| {
            let (stream, heartbeat) = self.policy.writable_streams(&grant)?;
            let wake = self.policy.wake(&grant)?;
            let publisher = Publisher::new(stream)?;
            Ok::<_, PoolError>((publisher, heartbeat, wake))
        })();
        match mapped {
            Ok((publisher, heartbeat, wake)) => {
                heartbeat.touch(monotonic_ns());
                self.data.set_heartbeat(Some(heartbeat));
                self.stats.mapped += 1;
                self.stream_id = grant.stream_id;
                self.qos.epoch.store(grant.epoch, Ordering::Relaxed);
                self.qos.seq.store(0, Ordering::Relaxed);
                self.mapped = Some(Mapped { publisher, wake, epoch: grant.epoch });
                Ok(())
            }
            Err(e) => {
                self.stats.map_failures += 1;
                self.data.set_heartbeat(None);
                self.data.lost(format!("cannot map: {e}"));
                Err(e)
            }
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A claimed slot: write the payload, then [`commit`](Self::commit) with the tensor header.
#[must_use = "a claimed slot stays in progress (unreadable) until committed"]
#[derive(Debug)]
pub struct Claim<'p> {
    slot: SlotClaim<'p>,
    wake: Option<&'p WakeRegion<Arc<Mapping>>>,
    committed: &'p mut u64,
    qos: &'p QosCell,
}

impl Claim<'_> {
    /// The seq being written.
    pub fn seq(&self) -> u64 {
        self.slot.seq()
    }

    /// The payload length claimed.
    pub fn values_len(&self) -> u32 {
        self.slot.values_len()
    }

    /// Copies `bytes` to the start of the payload slot.
    ///
    /// # Panics
    /// If `bytes` is longer than the length claimed.
    pub fn write_payload(&mut self, bytes: &[u8]) {
        self.slot.write_payload(bytes);
    }

    /// Copies `bytes` into the payload slot at `offset` (a decoder writing row by row).
    ///
    /// # Panics
    /// If the range ends past the length claimed.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        self.slot.write_at(offset, bytes);
    }

    /// Writes the tensor header, publishes the slot, and wakes consumers that sleep (a
    /// fence and a load when none does). Returns the seq.
    pub fn commit(self, tensor: TensorHeader, timestamp_ns: u64, meta_version: u32) -> u64 {
        let seq = self.slot.finish(tensor, timestamp_ns, meta_version).commit();
        *self.committed += 1;
        self.qos.seq.store(seq + 1, Ordering::Relaxed);
        if let Some(wake) = self.wake {
            wake.doorbell().ring();
        }
        seq
    }
}
