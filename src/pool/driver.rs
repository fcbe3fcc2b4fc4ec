//! The tensor-pool driver as a sans-IO state machine (spec §5).
//!
//! [`Driver`] owns the streams, leases, epochs and node IDs. It does no I/O and reads no clock:
//! every input carries `now_ns` (CLOCK_MONOTONIC nanoseconds) and the [`ClientKey`] of the
//! connection it came on; every output is an [`Action`] queued for the caller to drain with
//! [`Driver::poll_action`]: a [`Action::Reply`] to one connection, a [`Action::Broadcast`] for
//! every subscribed connection (revokes, announces, shutdown), or an [`Action::Log`] event. The
//! files are behind [`ShmBackend`]; [`FakeBackend`] records calls for tests.
//!
//! ```
//! use corelane::pool::config::PoolConfig;
//! use corelane::pool::driver::*;
//!
//! let config = PoolConfig::embedded_default().unwrap();
//! let mut driver = Driver::new(&config, FakeBackend::default(), 42, 0).unwrap();
//! let attach = AttachRequest {
//!     correlation_id: 7,
//!     stream_id: 10000,
//!     client_id: 1,
//!     role: Role::Producer.to_wire(),
//!     expected_layout_version: 0,
//!     publish_mode: None,
//!     require_hugepages: HugepagesPolicy::Unspecified.to_wire(),
//!     desired_node_id: None,
//! };
//! driver.attach(ClientKey(1), &attach, 1_000);
//! let actions: Vec<Action> = driver.drain_actions().collect();
//! // The announce of the new epoch goes out before the OK response.
//! let announce = actions.iter().position(|a| matches!(a, Action::Broadcast(Notice::Announce(_))));
//! let reply = actions.iter().position(|a| matches!(a, Action::Reply { .. }));
//! assert!(announce < reply);
//! // One timer covers lease expiry and the next periodic announce.
//! assert_eq!(driver.poll_timeout(), Some(1_000 + 1_000_000_000));
//! ```
//!
//! Attach follows the C driver's decision order (spec §5.3) and answers with its codes and
//! messages; see [`Driver::attach`]. Where corelane departs from the C driver:
//! - producer detach bumps the epoch (C compares the role before decoding it and never does, T7);
//! - the node-ID reuse cooldown is enforced for desired and for random node IDs;
//! - an unknown `publishMode` value is INVALID_PARAMS "invalid publish mode" (C treats it as
//!   null), and a `requireHugepages` value outside 0..=2 is INVALID_PARAMS (C's decoder maps it
//!   to UNSPECIFIED, so C never sends the spec's INVALID_PARAMS);
//! - a keepalive at or after the lease's expiry does not revive it (the expiry is a hard
//!   deadline); C extends a lease its sweep has not reached yet;
//! - a dynamic stream is only created when the attach succeeds (C keeps a stream whose attach
//!   failed later), and an SHM creation failure leaves the stream's epoch as it was;
//! - bounded state: at most [`DriverLimits::max_leases`] leases ("too many leases"),
//!   [`DriverLimits::max_dynamic_streams`] dynamic streams ("too many streams"), and node IDs in
//!   cooldown ("too many node ids cooling down");
//! - attaches after [`Driver::shutdown`] are REJECTED "driver shut down".
//!
//! Not implemented: ShmDriverShutdownRequest (the token-authenticated admin shutdown with a
//! drain, optional in the spec); the daemon can call [`Driver::shutdown_with`] instead.

mod fake;
mod messages;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

pub use fake::{BackendCall, FakeBackend};
pub use messages::*;

use crate::pool::config::{IdRange, PoolConfig, Profile};

/// The connection a request came on, chosen by the caller; replies go back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(pub u64);

/// The URIs of one epoch's files, as the backend made them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochUris {
    /// `shm:file?path=.../header.ring|require_hugepages=...`.
    pub header_uri: String,
    /// One URI per payload pool, in the profile's order.
    pub pool_uris: Vec<String>,
}

/// The epoch GC policy (`policies.epoch_gc_*`) handed to [`ShmBackend::gc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Keep the current epoch and the newest `keep - 1` others (at least 1).
    pub keep: u32,
    /// Never delete an epoch younger than this. Epochs are CLOCK_MONOTONIC ns, so the age of an
    /// epoch directory is `now_ns - epoch` (no file mtime, which is realtime: trap T8).
    pub min_age_ns: u64,
}

/// The filesystem side of the driver: creating, finding and deleting epoch files.
pub trait ShmBackend {
    /// Creates a fresh epoch's files for `stream_id` (header ring and one file per pool, in the
    /// canonical layout) and returns their URIs. The error text becomes INTERNAL_ERROR's message.
    fn create_epoch(
        &mut self,
        stream_id: u32,
        epoch: u64,
        profile: &Profile,
        require_hugepages: bool,
    ) -> Result<EpochUris, String>;

    /// Best effort: deletes old epoch directories of `stream_id` per `policy`, never
    /// `current_epoch` (0 at startup: no current epoch).
    fn gc(&mut self, stream_id: u32, current_epoch: u64, now_ns: u64, policy: GcPolicy);

    /// Whether the base directory is on hugetlbfs.
    fn base_is_hugetlbfs(&self) -> bool;

    /// The highest epoch directory of `stream_id` on disk, so that epochs keep rising across a
    /// driver restart.
    fn max_epoch_on_disk(&self, stream_id: u32) -> Option<u64>;

    /// 64 unpredictable bits, for lease ids: knowing a lease id is what authorises its
    /// keepalive and detach, so ids must not be guessable from one's own (the daemon's
    /// backend reads the OS's random source; the fake one counts). The default derives
    /// them from the driver's seeded generator instead.
    fn entropy(&mut self) -> Option<u64> {
        None
    }
}

/// A reply to one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// To an [`AttachRequest`].
    Attach(AttachResponse),
    /// To a [`DetachRequest`].
    Detach(DetachResponse),
}

/// A message for every subscribed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A lease ended (control stream).
    LeaseRevoked(LeaseRevoked),
    /// A stream's current epoch and files (announce stream).
    Announce(Announce),
    /// The driver is going away (control stream).
    DriverShutdown(DriverShutdown),
}

/// Something worth a log line; no peer sees these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverEvent {
    /// A dynamic stream was created by an attach.
    StreamCreated {
        /// The stream.
        stream_id: u32,
        /// Its profile.
        profile: String,
    },
    /// A dynamic stream without leases was forgotten.
    StreamRemoved {
        /// The stream.
        stream_id: u32,
    },
    /// A stream got a new epoch and files.
    EpochChanged {
        /// The stream.
        stream_id: u32,
        /// The new epoch.
        epoch: u64,
    },
    /// Creating a new epoch's files failed; the stream keeps its previous epoch.
    EpochCreateFailed {
        /// The stream.
        stream_id: u32,
        /// The epoch that was not created.
        epoch: u64,
        /// The backend's message.
        error: String,
    },
    /// A lease was granted.
    LeaseGranted {
        /// The lease.
        lease_id: u64,
        /// Its stream.
        stream_id: u32,
        /// Its client.
        client_id: u32,
        /// Its role.
        role: Role,
        /// Its node ID.
        node_id: u32,
    },
    /// A lease ended (a LeaseRevoked was broadcast).
    LeaseEnded {
        /// The lease.
        lease_id: u64,
        /// Its stream.
        stream_id: u32,
        /// Its client.
        client_id: u32,
        /// Why.
        reason: RevokeReason,
    },
}

/// What the caller must do, in queue order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` on connection `to` (if it is still open).
    Reply {
        /// The connection the request came on.
        to: ClientKey,
        /// The response.
        msg: Response,
    },
    /// Send to every subscribed connection.
    Broadcast(Notice),
    /// Log it.
    Log(DriverEvent),
}

/// Bounds on the driver's state, so a misbehaving client costs bounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverLimits {
    /// Most leases at once; more attaches are REJECTED "too many leases".
    pub max_leases: usize,
    /// Node IDs in cooldown beyond `max_leases`; while leases plus cooling IDs reach the sum,
    /// attaches are REJECTED "too many node ids cooling down".
    pub max_node_id_cooldowns: usize,
    /// Most dynamic streams; more are REJECTED "too many streams".
    pub max_dynamic_streams: usize,
}

impl Default for DriverLimits {
    /// 4096 leases, 4096 further cooling node IDs, 1024 dynamic streams.
    fn default() -> Self {
        DriverLimits { max_leases: 4096, max_node_id_cooldowns: 4096, max_dynamic_streams: 1024 }
    }
}

/// Why a [`Driver`] could not be built from a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverSetupError {
    /// A stream or the default profile names a profile the configuration lacks (possible only
    /// when a loaded [`PoolConfig`] was edited).
    #[error("'{key}' names profile '{profile}', expected one of the configured profiles")]
    UnknownProfile {
        /// The key: `streams.<name>.profile` or `policies.default_profile`.
        key: String,
        /// The name given.
        profile: String,
    },
}

/// One stream's state for `corelane pool status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    /// The stream.
    pub stream_id: u32,
    /// Its profile's name.
    pub profile: String,
    /// Created by an attach rather than configured.
    pub dynamic: bool,
    /// Current epoch; 0 before the first attach.
    pub epoch: u64,
    /// The producer's lease, if one is attached.
    pub producer: Option<ProducerStatus>,
    /// Consumer leases.
    pub consumers: usize,
}

/// The producer lease of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStatus {
    /// The lease.
    pub lease_id: u64,
    /// The producer's client ID.
    pub client_id: u32,
    /// Its node ID.
    pub node_id: u32,
    /// When it expires without a keepalive (CLOCK_MONOTONIC ns).
    pub expiry_ns: u64,
    /// Whether the connection it last spoke on is open.
    pub connected: bool,
}

#[derive(Debug)]
struct Lease {
    stream_id: u32,
    client_id: u32,
    role: Role,
    node_id: u32,
    expiry_ns: u64,
    owner: Option<ClientKey>,
}

#[derive(Debug)]
struct Stream {
    /// Index into `Driver::profiles`.
    profile: usize,
    dynamic: bool,
    /// 0 until the first epoch is created.
    epoch: u64,
    uris: EpochUris,
    require_hugepages: bool,
    producer: Option<u64>,
    consumers: usize,
    /// The stream's entry in `Driver::announces`, once it has an epoch.
    announce_due: Option<u64>,
    /// Since when a dynamic stream has had no lease (it is removed after
    /// [`DYNAMIC_STREAM_IDLE_PERIODS`] announce periods of that).
    idle_since: Option<u64>,
}

/// Announce periods a dynamic stream may stay without any lease before the driver forgets
/// it (its id can then be created again; its files go with the epoch GC of a later use). A
/// client cycling attach/detach over new ids cannot exhaust `max_dynamic_streams` for good.
pub const DYNAMIC_STREAM_IDLE_PERIODS: u64 = 5;

/// A refused request: its code and message.
struct Refusal {
    code: ResponseCode,
    message: String,
}

fn refuse(code: ResponseCode, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into() }
}

/// The driver state machine. See the module documentation.
#[derive(Debug)]
pub struct Driver<B: ShmBackend> {
    backend: B,
    limits: DriverLimits,
    profiles: Vec<Profile>,
    default_profile: Option<usize>,
    allow_dynamic_streams: bool,
    require_hugepages: bool,
    stream_id_ranges: Vec<IdRange>,
    /// Round-robin cursor of each range: the next ID to try.
    range_cursors: Vec<u32>,
    lease_ttl_ns: u64,
    announce_period_ns: u64,
    node_id_cooldown_ns: u64,
    gc: Option<GcPolicy>,

    streams: BTreeMap<u32, Stream>,
    dynamic_streams: usize,
    leases: HashMap<u64, Lease>,
    /// client_id -> lease: one lease per client ID, driver-wide (T12).
    client_ids: HashMap<u32, u64>,
    /// node_id -> lease.
    node_ids: HashMap<u32, u64>,
    /// node_id -> end of its cooldown.
    cooldowns: HashMap<u32, u64>,
    /// (end, node_id) in the order cooldowns began, which is their end order (constant length).
    cooldown_queue: VecDeque<(u64, u32)>,
    /// (expiry_ns, lease_id) of every lease.
    expiries: BTreeSet<(u64, u64)>,
    /// (due_ns, stream_id) of every stream with an epoch.
    announces: BTreeSet<(u64, u32)>,
    last_lease_id: u64,
    rng: u64,
    actions: VecDeque<Action>,
    shut_down: bool,
}

impl<B: ShmBackend> Driver<B> {
    /// A driver for `config` with the default [`DriverLimits`]. `seed` seeds the lease-ID counter
    /// and the node-ID generator (the daemon passes a random value); `now_ns` is the start time
    /// (for the startup epoch GC).
    pub fn new(
        config: &PoolConfig,
        backend: B,
        seed: u64,
        now_ns: u64,
    ) -> Result<Self, DriverSetupError> {
        Self::with_limits(config, backend, seed, now_ns, DriverLimits::default())
    }

    /// [`Driver::new`] with explicit limits.
    pub fn with_limits(
        config: &PoolConfig,
        backend: B,
        seed: u64,
        now_ns: u64,
        limits: DriverLimits,
    ) -> Result<Self, DriverSetupError> {
        let profiles = config.profiles.clone();
        let find = |key: String, name: &str| {
            profiles
                .iter()
                .position(|p| p.name == name)
                .ok_or(DriverSetupError::UnknownProfile { key, profile: name.to_owned() })
        };
        let default_profile = match &config.policies.default_profile {
            Some(name) => Some(find("policies.default_profile".into(), name)?),
            None => None,
        };
        let mut streams = BTreeMap::new();
        for s in &config.streams {
            let profile = find(format!("streams.{}.profile", s.name), &s.profile)?;
            streams.insert(s.stream_id, Stream::new(profile, false));
        }
        let policies = &config.policies;
        let gc = policies.epoch_gc_enabled.then_some(GcPolicy {
            keep: policies.epoch_gc_keep.max(1),
            min_age_ns: policies.epoch_gc_min_age_ns,
        });
        let mut rng = seed ^ 0x5EED_F00D;
        // 63 bits, as C: 2^63 grants before the counter could wrap.
        let last_lease_id = splitmix64(&mut rng) >> 1;
        let mut driver = Driver {
            backend,
            limits,
            default_profile,
            allow_dynamic_streams: policies.allow_dynamic_streams,
            require_hugepages: config.shm.require_hugepages,
            stream_id_ranges: config.driver.stream_id_ranges.clone(),
            range_cursors: config.driver.stream_id_ranges.iter().map(|r| r.start).collect(),
            lease_ttl_ns: config.lease_ttl_ns(),
            announce_period_ns: config.announce_period_ns().max(1),
            node_id_cooldown_ns: config.node_id_cooldown_ns(),
            gc,
            profiles,
            streams,
            dynamic_streams: 0,
            leases: HashMap::new(),
            client_ids: HashMap::new(),
            node_ids: HashMap::new(),
            cooldowns: HashMap::new(),
            cooldown_queue: VecDeque::new(),
            expiries: BTreeSet::new(),
            announces: BTreeSet::new(),
            last_lease_id,
            rng,
            actions: VecDeque::new(),
            shut_down: false,
        };
        if let (Some(policy), true) = (driver.gc, policies.epoch_gc_on_startup) {
            let ids: Vec<u32> = driver.streams.keys().copied().collect();
            for id in ids {
                driver.backend.gc(id, 0, now_ns, policy);
            }
        }
        Ok(driver)
    }

    /// Handles a ShmAttachRequest from connection `from`. Queues the reply, preceded on success
    /// by the stream's announce.
    ///
    /// The checks, in order (spec §5.3), each with its code and message:
    /// 1. role not 1/2 → INVALID_PARAMS "invalid role";
    /// 2. clientId 0 → INVALID_PARAMS "client_id must be non-zero"; clientId holding any lease
    ///    → REJECTED "client_id already attached";
    /// 3. expectedLayoutVersion not 0/1 → REJECTED "layout version mismatch: ...";
    /// 4. publishMode null → EXISTING_OR_CREATE; not 1/2 → INVALID_PARAMS "invalid publish mode";
    ///    lease or cooldown tables full → REJECTED "too many leases" / "too many node ids
    ///    cooling down";
    /// 5. unknown stream (or streamId 0) without EXISTING_OR_CREATE and dynamic streams →
    ///    REJECTED "stream not provisioned"; too many dynamic streams → REJECTED "too many
    ///    streams"; streamId 0 with the range exhausted → INVALID_PARAMS "no stream ids
    ///    available"; no default profile → INVALID_PARAMS "default profile missing";
    /// 6. profile without pools → INVALID_PARAMS "invalid profile";
    /// 7. producer while one is attached → REJECTED "producer already attached";
    /// 8. requireHugepages not 0..=2 → INVALID_PARAMS "invalid hugepages policy"; hugepages
    ///    wanted but the base is not hugetlbfs → REJECTED "hugepages not available"; STANDARD
    ///    on hugetlbfs → REJECTED "standard pages requested";
    /// 9. desiredNodeId in use or cooling down → REJECTED "desired node_id unavailable";
    /// 10. no free random node ID → INTERNAL_ERROR "node_id allocation failed";
    /// 11. producer, or a stream without an epoch: new epoch `max(now, epoch + 1)` (above the
    ///     highest on disk for a stream's first epoch), files made; failure → INTERNAL_ERROR
    ///     "shm creation failed: ..." with nothing leased;
    /// 12. lease granted; announce, then OK.
    pub fn attach(&mut self, from: ClientKey, request: &AttachRequest, now_ns: u64) {
        if let Err(refusal) = self.try_attach(from, request, now_ns) {
            let msg = Response::Attach(AttachResponse {
                correlation_id: request.correlation_id,
                code: refusal.code,
                lease_id: None,
                lease_expiry_timestamp_ns: None,
                stream_id: None,
                epoch: None,
                layout_version: None,
                header_nslots: None,
                header_slot_bytes: None,
                node_id: None,
                payload_pools: Vec::new(),
                header_region_uri: String::new(),
                error_message: bounded_message(&refusal.message),
            });
            self.actions.push_back(Action::Reply { to: from, msg });
        }
    }

    /// Handles a ShmLeaseKeepalive (one-way, never answered). The lease's expiry moves to
    /// `now + interval × grace` only if leaseId, streamId, clientId and role all match and the
    /// lease has not reached its expiry. Returns whether it was extended.
    pub fn keepalive(&mut self, from: ClientKey, keepalive: &Keepalive, now_ns: u64) -> bool {
        let Some(role) = Role::from_wire(keepalive.role) else { return false };
        let Some(lease) = self.leases.get_mut(&keepalive.lease_id) else { return false };
        if lease.stream_id != keepalive.stream_id
            || lease.client_id != keepalive.client_id
            || lease.role != role
            || now_ns >= lease.expiry_ns
        {
            return false;
        }
        self.expiries.remove(&(lease.expiry_ns, keepalive.lease_id));
        lease.expiry_ns = now_ns.saturating_add(self.lease_ttl_ns);
        lease.owner = Some(from);
        self.expiries.insert((lease.expiry_ns, keepalive.lease_id));
        true
    }

    /// Handles a ShmDetachRequest (spec §5.5): role not 1/2 → INVALID_PARAMS "invalid role";
    /// no lease matching leaseId, streamId, clientId and role → REJECTED "lease not found";
    /// otherwise ShmLeaseRevoked(DETACHED), for a producer the new epoch's announce, then OK.
    pub fn detach(&mut self, from: ClientKey, request: &DetachRequest, now_ns: u64) {
        let (code, message) = match Role::from_wire(request.role) {
            None => (ResponseCode::InvalidParams, "invalid role"),
            Some(role) => {
                let matches = self.leases.get(&request.lease_id).is_some_and(|l| {
                    l.stream_id == request.stream_id
                        && l.client_id == request.client_id
                        && l.role == role
                });
                if matches {
                    self.end_lease(
                        request.lease_id,
                        RevokeReason::Detached,
                        "lease detached",
                        now_ns,
                    );
                    (ResponseCode::Ok, "")
                } else {
                    (ResponseCode::Rejected, "lease not found")
                }
            }
        };
        let msg = Response::Detach(DetachResponse {
            correlation_id: request.correlation_id,
            code,
            error_message: message.to_owned(),
        });
        self.actions.push_back(Action::Reply { to: from, msg });
    }

    /// Ends a lease on the driver's own authority: ShmLeaseRevoked(REVOKED) with `message`, and
    /// for a producer a new epoch and its announce. Returns false if there is no such lease.
    pub fn revoke(&mut self, lease_id: u64, message: &str, now_ns: u64) -> bool {
        if !self.leases.contains_key(&lease_id) {
            return false;
        }
        self.end_lease(lease_id, RevokeReason::Revoked, message, now_ns);
        true
    }

    /// The connection `key` closed. Its leases stay until they expire (spec: leases outlive
    /// connections; a client may reconnect and keep them alive), but nothing is addressed to
    /// the key any more.
    pub fn client_gone(&mut self, key: ClientKey) {
        for lease in self.leases.values_mut().filter(|l| l.owner == Some(key)) {
            lease.owner = None;
        }
    }

    /// Runs what is due at `now_ns`: expired leases end (ShmLeaseRevoked(EXPIRED), node ID into
    /// cooldown; a producer's stream gets a new epoch, announced after the revoke), cooldowns
    /// that ended are dropped, and every stream whose announce period has passed is announced.
    pub fn tick(&mut self, now_ns: u64) {
        if self.shut_down {
            return;
        }
        while let Some(&(expiry_ns, lease_id)) = self.expiries.first() {
            if expiry_ns > now_ns {
                break;
            }
            self.end_lease(lease_id, RevokeReason::Expired, "lease expired", now_ns);
        }
        self.prune_cooldowns(now_ns);
        self.reclaim_idle_streams(now_ns);
        while let Some(&(due_ns, stream_id)) = self.announces.first() {
            if due_ns > now_ns {
                break;
            }
            // Reschedules the stream at now + period (> now), so the loop ends.
            if self.announce(stream_id, now_ns).is_none() {
                self.announces.remove(&(due_ns, stream_id));
            }
        }
    }

    /// The next time [`Driver::tick`] has work: the earliest lease expiry or announce. `None`
    /// when there is neither (or after shutdown).
    pub fn poll_timeout(&self) -> Option<u64> {
        let expiry = self.expiries.first().map(|&(t, _)| t);
        let announce = self.announces.first().map(|&(t, _)| t);
        match (expiry, announce) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Stops the driver: ShmDriverShutdown(NORMAL) to everyone; every lease is gone at once.
    pub fn shutdown(&mut self, now_ns: u64) {
        self.shutdown_with(ShutdownReason::Normal, "", now_ns);
    }

    /// [`Driver::shutdown`] with a reason and message. A second call does nothing.
    pub fn shutdown_with(&mut self, reason: ShutdownReason, message: &str, now_ns: u64) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        self.leases.clear();
        self.client_ids.clear();
        self.node_ids.clear();
        self.expiries.clear();
        self.announces.clear();
        for stream in self.streams.values_mut() {
            stream.producer = None;
            stream.consumers = 0;
            stream.announce_due = None;
        }
        self.actions.push_back(Action::Broadcast(Notice::DriverShutdown(DriverShutdown {
            timestamp_ns: now_ns,
            reason,
            error_message: bounded_message(message),
        })));
    }

    /// The next queued action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Every queued action, in order.
    pub fn drain_actions(&mut self) -> std::collections::vec_deque::Drain<'_, Action> {
        self.actions.drain(..)
    }

    /// Every stream, by ID.
    pub fn stream_status(&self) -> Vec<StreamStatus> {
        self.streams.keys().filter_map(|&id| self.stream(id)).collect()
    }

    /// One stream's status.
    pub fn stream(&self, stream_id: u32) -> Option<StreamStatus> {
        let stream = self.streams.get(&stream_id)?;
        let producer = stream.producer.and_then(|lease_id| {
            let lease = self.leases.get(&lease_id)?;
            Some(ProducerStatus {
                lease_id,
                client_id: lease.client_id,
                node_id: lease.node_id,
                expiry_ns: lease.expiry_ns,
                connected: lease.owner.is_some(),
            })
        });
        Some(StreamStatus {
            stream_id,
            profile: self.profiles[stream.profile].name.clone(),
            dynamic: stream.dynamic,
            epoch: stream.epoch,
            producer,
            consumers: stream.consumers,
        })
    }

    /// Active leases.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Whether [`Driver::shutdown`] ran.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (tests use it to make the fake fail).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn try_attach(
        &mut self,
        from: ClientKey,
        request: &AttachRequest,
        now_ns: u64,
    ) -> Result<(), Refusal> {
        use ResponseCode::{InvalidParams, Rejected};
        if self.shut_down {
            return Err(refuse(Rejected, "driver shut down"));
        }
        let role =
            Role::from_wire(request.role).ok_or_else(|| refuse(InvalidParams, "invalid role"))?;
        if request.client_id == 0 {
            return Err(refuse(InvalidParams, "client_id must be non-zero"));
        }
        if self.client_ids.contains_key(&request.client_id) {
            return Err(refuse(Rejected, "client_id already attached"));
        }
        if !matches!(request.expected_layout_version, 0 | LAYOUT_VERSION) {
            return Err(refuse(
                Rejected,
                format!(
                    "layout version mismatch: expected 0 or {LAYOUT_VERSION}, got {}",
                    request.expected_layout_version
                ),
            ));
        }
        let mode = match request.publish_mode {
            None | Some(NULL_U8) => PublishMode::ExistingOrCreate,
            Some(raw) => PublishMode::from_wire(raw)
                .ok_or_else(|| refuse(InvalidParams, "invalid publish mode"))?,
        };
        self.prune_cooldowns(now_ns);
        if self.leases.len() >= self.limits.max_leases {
            return Err(refuse(Rejected, "too many leases"));
        }
        if self.leases.len() + self.cooldowns.len()
            >= self.limits.max_leases + self.limits.max_node_id_cooldowns
        {
            return Err(refuse(Rejected, "too many node ids cooling down"));
        }

        let known = request.stream_id != 0 && self.streams.contains_key(&request.stream_id);
        if known {
            return self.attach_to(from, request, role, request.stream_id, now_ns);
        }
        if mode != PublishMode::ExistingOrCreate || !self.allow_dynamic_streams {
            return Err(refuse(Rejected, "stream not provisioned"));
        }
        if self.dynamic_streams >= self.limits.max_dynamic_streams {
            return Err(refuse(Rejected, "too many streams"));
        }
        let stream_id = match request.stream_id {
            0 => self
                .allocate_stream_id()
                .ok_or_else(|| refuse(InvalidParams, "no stream ids available"))?,
            id => id,
        };
        let profile =
            self.default_profile.ok_or_else(|| refuse(InvalidParams, "default profile missing"))?;
        self.streams.insert(stream_id, Stream::new(profile, true));
        self.dynamic_streams += 1;
        let result = self.attach_to(from, request, role, stream_id, now_ns);
        if result.is_err() {
            self.streams.remove(&stream_id);
            self.dynamic_streams -= 1;
        } else {
            let profile = self.profiles[profile].name.clone();
            self.actions.push_back(Action::Log(DriverEvent::StreamCreated { stream_id, profile }));
        }
        result
    }

    /// Steps 6-12 of attach for a stream that exists (possibly just created).
    fn attach_to(
        &mut self,
        from: ClientKey,
        request: &AttachRequest,
        role: Role,
        stream_id: u32,
        now_ns: u64,
    ) -> Result<(), Refusal> {
        use ResponseCode::{InternalError, InvalidParams, Rejected};
        let Some(stream) = self.streams.get(&stream_id) else {
            return Err(refuse(InternalError, "stream vanished"));
        };
        if self.profiles[stream.profile].payload_pools.is_empty() {
            return Err(refuse(InvalidParams, "invalid profile"));
        }
        if role == Role::Producer && stream.producer.is_some() {
            return Err(refuse(Rejected, "producer already attached"));
        }
        let needs_epoch = role == Role::Producer || stream.epoch == 0;
        let policy = HugepagesPolicy::from_wire(request.require_hugepages)
            .ok_or_else(|| refuse(InvalidParams, "invalid hugepages policy"))?;
        let require_hugepages = match policy {
            HugepagesPolicy::Hugepages => true,
            HugepagesPolicy::Standard => false,
            HugepagesPolicy::Unspecified => self.require_hugepages,
        };
        if require_hugepages && !self.backend.base_is_hugetlbfs() {
            return Err(refuse(Rejected, "hugepages not available"));
        }
        if policy == HugepagesPolicy::Standard && self.backend.base_is_hugetlbfs() {
            return Err(refuse(Rejected, "standard pages requested"));
        }
        let desired = request.desired_node_id.filter(|&id| id != NULL_U32);
        let node_id = match desired {
            Some(id) if self.node_ids.contains_key(&id) || self.cooling(id, now_ns) => {
                return Err(refuse(Rejected, "desired node_id unavailable"));
            }
            Some(id) => id,
            None => self
                .random_node_id(now_ns)
                .ok_or_else(|| refuse(InternalError, "node_id allocation failed"))?,
        };
        if needs_epoch {
            self.new_epoch(stream_id, require_hugepages, now_ns)
                .map_err(|e| refuse(InternalError, format!("shm creation failed: {e}")))?;
        }

        let lease_id = self.next_lease_id();
        let expiry_ns = now_ns.saturating_add(self.lease_ttl_ns);
        self.leases.insert(
            lease_id,
            Lease {
                stream_id,
                client_id: request.client_id,
                role,
                node_id,
                expiry_ns,
                owner: Some(from),
            },
        );
        self.client_ids.insert(request.client_id, lease_id);
        self.node_ids.insert(node_id, lease_id);
        self.expiries.insert((expiry_ns, lease_id));
        let Some(stream) = self.streams.get_mut(&stream_id) else {
            return Err(refuse(InternalError, "stream vanished"));
        };
        match role {
            Role::Producer => stream.producer = Some(lease_id),
            Role::Consumer => stream.consumers += 1,
        }
        stream.idle_since = None;
        self.actions.push_back(Action::Log(DriverEvent::LeaseGranted {
            lease_id,
            stream_id,
            client_id: request.client_id,
            role,
            node_id,
        }));

        let Some(announce) = self.announce(stream_id, now_ns) else {
            return Err(refuse(InternalError, "stream vanished"));
        };
        let msg = Response::Attach(AttachResponse {
            correlation_id: request.correlation_id,
            code: ResponseCode::Ok,
            lease_id: Some(lease_id),
            lease_expiry_timestamp_ns: Some(expiry_ns),
            stream_id: Some(stream_id),
            epoch: Some(announce.epoch),
            layout_version: Some(LAYOUT_VERSION),
            header_nslots: Some(announce.header_nslots),
            header_slot_bytes: Some(HEADER_SLOT_BYTES),
            node_id: Some(node_id),
            payload_pools: announce.payload_pools,
            header_region_uri: announce.header_region_uri,
            error_message: String::new(),
        });
        self.actions.push_back(Action::Reply { to: from, msg });
        Ok(())
    }

    /// Ends a lease: revoke broadcast, node ID into cooldown, indexes cleared; for a producer,
    /// a new epoch and its announce after the revoke.
    fn end_lease(&mut self, lease_id: u64, reason: RevokeReason, message: &str, now_ns: u64) {
        let Some(lease) = self.leases.remove(&lease_id) else { return };
        self.client_ids.remove(&lease.client_id);
        self.node_ids.remove(&lease.node_id);
        self.expiries.remove(&(lease.expiry_ns, lease_id));
        self.actions.push_back(Action::Broadcast(Notice::LeaseRevoked(LeaseRevoked {
            timestamp_ns: now_ns,
            lease_id,
            stream_id: lease.stream_id,
            client_id: lease.client_id,
            role: lease.role,
            reason,
            error_message: bounded_message(message),
        })));
        self.actions.push_back(Action::Log(DriverEvent::LeaseEnded {
            lease_id,
            stream_id: lease.stream_id,
            client_id: lease.client_id,
            reason,
        }));
        if self.node_id_cooldown_ns > 0 {
            let until = now_ns.saturating_add(self.node_id_cooldown_ns);
            self.cooldowns.insert(lease.node_id, until);
            self.cooldown_queue.push_back((until, lease.node_id));
        }
        let Some(stream) = self.streams.get_mut(&lease.stream_id) else { return };
        match lease.role {
            Role::Consumer => stream.consumers = stream.consumers.saturating_sub(1),
            Role::Producer => {
                if stream.producer == Some(lease_id) {
                    stream.producer = None;
                }
            }
        }
        if stream.dynamic && stream.producer.is_none() && stream.consumers == 0 {
            stream.idle_since = Some(now_ns);
        }
        match lease.role {
            Role::Consumer => {}
            Role::Producer => {
                let require_hugepages = stream.require_hugepages;
                // A failure was logged by new_epoch; the stream keeps its previous epoch.
                if self.new_epoch(lease.stream_id, require_hugepages, now_ns).is_ok() {
                    self.announce(lease.stream_id, now_ns);
                }
            }
        }
    }

    /// Forgets the dynamic streams that have had no lease for
    /// [`DYNAMIC_STREAM_IDLE_PERIODS`] announce periods.
    fn reclaim_idle_streams(&mut self, now_ns: u64) {
        let grace = self.announce_period_ns.saturating_mul(DYNAMIC_STREAM_IDLE_PERIODS);
        let idle: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                s.dynamic
                    && s.producer.is_none()
                    && s.consumers == 0
                    && s.idle_since.is_some_and(|t| now_ns.saturating_sub(t) >= grace)
            })
            .map(|(&id, _)| id)
            .collect();
        for stream_id in idle {
            if let Some(stream) = self.streams.remove(&stream_id) {
                if let Some(due) = stream.announce_due {
                    self.announces.remove(&(due, stream_id));
                }
                self.dynamic_streams = self.dynamic_streams.saturating_sub(1);
                self.actions.push_back(Action::Log(DriverEvent::StreamRemoved { stream_id }));
            }
        }
    }

    /// Creates the stream's next epoch: `max(now, epoch + 1)`, and above the highest epoch on
    /// disk when the stream has none yet (a restarted driver). Runs the epoch GC after.
    fn new_epoch(
        &mut self,
        stream_id: u32,
        require_hugepages: bool,
        now_ns: u64,
    ) -> Result<u64, String> {
        let Some(stream) = self.streams.get(&stream_id) else {
            return Err(format!("stream {stream_id} unknown"));
        };
        let floor = match stream.epoch {
            0 => self.backend.max_epoch_on_disk(stream_id).unwrap_or(0),
            epoch => epoch,
        };
        let Some(epoch) = floor.checked_add(1).map(|next| next.max(now_ns)) else {
            return Err(format!("epoch space exhausted after {floor}"));
        };
        let profile = &self.profiles[stream.profile];
        let result = self
            .backend
            .create_epoch(stream_id, epoch, profile, require_hugepages)
            .and_then(|uris| {
                let complete = !uris.header_uri.is_empty()
                    && uris.pool_uris.len() == profile.payload_pools.len()
                    && uris.pool_uris.iter().all(|u| !u.is_empty());
                if complete {
                    Ok(uris)
                } else {
                    Err(format!(
                        "backend returned {} pool uris for {} pools (or an empty uri)",
                        uris.pool_uris.len(),
                        profile.payload_pools.len()
                    ))
                }
            });
        let uris = match result {
            Ok(uris) => uris,
            Err(error) => {
                self.actions.push_back(Action::Log(DriverEvent::EpochCreateFailed {
                    stream_id,
                    epoch,
                    error: error.clone(),
                }));
                return Err(error);
            }
        };
        if let Some(stream) = self.streams.get_mut(&stream_id) {
            stream.epoch = epoch;
            stream.uris = uris;
            stream.require_hugepages = require_hugepages;
        }
        self.actions.push_back(Action::Log(DriverEvent::EpochChanged { stream_id, epoch }));
        if let Some(policy) = self.gc {
            self.backend.gc(stream_id, epoch, now_ns, policy);
        }
        Ok(epoch)
    }

    /// Broadcasts the stream's announce, schedules the next one a period later, and returns a
    /// copy of it (the attach response repeats its fields). Callers pass streams with an epoch.
    fn announce(&mut self, stream_id: u32, now_ns: u64) -> Option<Announce> {
        let producer_id = self
            .streams
            .get(&stream_id)
            .and_then(|s| s.producer)
            .and_then(|lease_id| self.leases.get(&lease_id))
            .map_or(0, |l| l.client_id);
        let stream = self.streams.get_mut(&stream_id)?;
        let profile = &self.profiles[stream.profile];
        let announce = Announce {
            stream_id,
            producer_id,
            epoch: stream.epoch,
            announce_timestamp_ns: now_ns,
            announce_clock_domain: ClockDomain::Monotonic,
            layout_version: LAYOUT_VERSION,
            header_nslots: profile.header_nslots,
            header_slot_bytes: HEADER_SLOT_BYTES,
            payload_pools: profile
                .payload_pools
                .iter()
                .zip(&stream.uris.pool_uris)
                .map(|(pool, uri)| PayloadPool {
                    pool_id: pool.pool_id,
                    pool_nslots: profile.header_nslots,
                    stride_bytes: pool.stride_bytes,
                    region_uri: uri.clone(),
                })
                .collect(),
            header_region_uri: stream.uris.header_uri.clone(),
        };
        if let Some(due) = stream.announce_due.take() {
            self.announces.remove(&(due, stream_id));
        }
        let due = now_ns.saturating_add(self.announce_period_ns);
        stream.announce_due = Some(due);
        self.announces.insert((due, stream_id));
        self.actions.push_back(Action::Broadcast(Notice::Announce(announce.clone())));
        Some(announce)
    }

    /// The next free ID of the dynamic ranges, round robin per range, skipping IDs in use.
    fn allocate_stream_id(&mut self) -> Option<u32> {
        // At most streams.len() IDs of a range are taken, so that many + 1 probes find a free
        // one if the range has one; this bounds the loop for ranges of billions of IDs.
        let probes = self.streams.len() as u64 + 1;
        for (range, cursor) in self.stream_id_ranges.iter().zip(self.range_cursors.iter_mut()) {
            let mut id = *cursor;
            for _ in 0..range.len().min(probes) {
                let next = if id == range.end { range.start } else { id + 1 };
                if !self.streams.contains_key(&id) {
                    *cursor = next;
                    return Some(id);
                }
                id = next;
            }
        }
        None
    }

    /// A lease id: 63 random bits from the backend's entropy (never 0, never an id in use;
    /// a repeat of an id used before has odds of 2^-63 per grant), or, from a backend without
    /// entropy, the seeded counter.
    fn next_lease_id(&mut self) -> u64 {
        loop {
            let id = match self.backend.entropy() {
                Some(bits) => bits >> 1,
                None => {
                    self.last_lease_id = self.last_lease_id.wrapping_add(1);
                    self.last_lease_id
                }
            };
            if id != 0 && !self.leases.contains_key(&id) {
                return id;
            }
        }
    }

    /// A random node ID that is not 0, not null, not in use and not cooling down.
    fn random_node_id(&mut self, now_ns: u64) -> Option<u32> {
        for _ in 0..64 {
            let id = (splitmix64(&mut self.rng) >> 32) as u32;
            if id != 0
                && id != NULL_U32
                && !self.node_ids.contains_key(&id)
                && !self.cooling(id, now_ns)
            {
                return Some(id);
            }
        }
        None
    }

    fn cooling(&self, node_id: u32, now_ns: u64) -> bool {
        self.cooldowns.get(&node_id).is_some_and(|&until| until > now_ns)
    }

    fn prune_cooldowns(&mut self, now_ns: u64) {
        while let Some(&(until, node_id)) = self.cooldown_queue.front() {
            if until > now_ns {
                break;
            }
            self.cooldown_queue.pop_front();
            // A later cooldown of the same ID (after it was reused) has its own queue entry.
            if self.cooldowns.get(&node_id) == Some(&until) {
                self.cooldowns.remove(&node_id);
            }
        }
    }
}

impl Stream {
    fn new(profile: usize, dynamic: bool) -> Self {
        Stream {
            profile,
            dynamic,
            epoch: 0,
            uris: EpochUris::default(),
            require_hugepages: false,
            producer: None,
            consumers: 0,
            announce_due: None,
            idle_since: None,
        }
    }
}

/// SplitMix64: a small, well-mixed generator for node IDs and the lease-ID seed. Not for
/// secrets: node IDs only need to be hard to collide with.
/// splitmix64: the next value of a small, fast generator (not a secret: ids that must not be
/// guessed come from [`ShmBackend::entropy`]).
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
