//! The control-plane half of a pool client (producer or consumer): one control connection to
//! the daemon, the lease on it, keepalives, the driver's events, and the driver-client state
//! machine of spec §5.9 (Unattached -> Attaching -> Attached -> Backoff -> ...).
//!
//! The data plane (claim/commit, poll) never touches it: a [`Link`] runs from
//! `do_work(now)`, called by the application's own loop, or from the optional keeper thread,
//! and hands a fresh grant (new lease, new epoch's URIs) to the data plane through
//! [`LinkShared::generation`], which the data plane checks with one load per operation.
//!
//! Socket work is rate limited: events are read at most every [`EVENT_POLL`], a keepalive
//! goes once per keepalive interval (one request/response on the control socket, a few tens
//! of microseconds), and reconnects back off. So `do_work` may be called every frame.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;

use super::proto::{
    pool_event, AttachRequest, AttachResponse, ConsumerConfig, ConsumerHello, DetachRequest,
    DetachResponse, KeepaliveAck, LeaseKeepalive, PoolAnnounce, PoolEvent, QosAck, QosReport,
    Subscribe, SubscribeReply,
};
use super::{
    monotonic_ns, PoolError, CODE_OK, MSG_POOL_ATTACH, MSG_POOL_DETACH, MSG_POOL_HELLO,
    MSG_POOL_KEEPALIVE, MSG_POOL_QOS, MSG_POOL_SUBSCRIBE, ROLE_CONSUMER, ROLE_PRODUCER,
};
use crate::control::client::Subscription;
use crate::control::Client;
use crate::rings::shm::{LAYOUT_VERSION, SLOT_BYTES};

/// How often a link reads the driver's events from its socket (at most).
pub const EVENT_POLL: Duration = Duration::from_millis(5);

/// First reattach back-off; it doubles per failure up to `BACKOFF_BASE << 5` (3.2 s), as the
/// reference client does.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// The role of a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The stream's one writer.
    Producer,
    /// A reader.
    Consumer,
}

impl Role {
    /// The spec's value.
    pub fn code(self) -> u32 {
        match self {
            Role::Producer => ROLE_PRODUCER,
            Role::Consumer => ROLE_CONSUMER,
        }
    }
}

/// What a pool client asks the driver for, and how it checks what it gets.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// The stream (0 with a dynamic-stream driver: the driver picks one).
    pub stream_id: u32,
    /// This client's id; 0 picks a random non-zero one (and a new one if the driver says
    /// it is taken).
    pub client_id: u32,
    /// `publishMode`: `None` = EXISTING_OR_CREATE, `Some(1)` = REQUIRE_EXISTING.
    pub publish_mode: Option<u32>,
    /// `requireHugepages`: 0 unspecified, 1 standard, 2 hugepages.
    pub require_hugepages: u32,
    /// `desiredNodeId`.
    pub desired_node_id: Option<u32>,
    /// Directories regions may be mapped from (realpath'ed); empty refuses every mapping.
    pub allowed_dirs: Vec<PathBuf>,
    /// Refuse region files with other-bits in their mode (spec §4 rule 8). Default true.
    pub reject_other_bits: bool,
    /// The driver's `announce_period_ms`: announces older than 3 periods are ignored, a
    /// heartbeat older than 3 periods unmaps. Default 1 s.
    pub announce_period: Duration,
    /// Keepalive interval (the driver's `lease_keepalive_interval_ms`). Default 1 s.
    pub keepalive_interval: Duration,
    /// Timeout of one control request.
    pub timeout: Duration,
}

impl PoolOptions {
    /// Defaults for `stream_id` on the daemon whose control socket is `socket`.
    pub fn new(socket: impl Into<PathBuf>, stream_id: u32) -> Self {
        Self {
            socket: socket.into(),
            stream_id,
            client_id: 0,
            publish_mode: None,
            require_hugepages: 0,
            desired_node_id: None,
            allowed_dirs: vec![PathBuf::from("/dev/shm")],
            reject_other_bits: true,
            announce_period: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

/// One payload pool of a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantPool {
    /// `pool_id`.
    pub pool_id: u16,
    /// Its stride.
    pub stride_bytes: u32,
    /// Its region URI.
    pub uri: String,
}

/// A stream's regions as the driver last described them, checked (spec §5.3 "client must
/// fail closed", conformance 6 and 44): from an OK attach response or an announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The stream.
    pub stream_id: u32,
    /// The epoch the regions belong to.
    pub epoch: u64,
    /// Header ring slots.
    pub nslots: u32,
    /// The header ring's URI.
    pub header_uri: String,
    /// The pools.
    pub pools: Vec<GrantPool>,
    /// The `corelane.wake` sidecar's URI, if the driver has one.
    pub wake_uri: Option<String>,
}

/// The lease a link holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// `leaseId`.
    pub lease_id: u64,
    /// `nodeId`.
    pub node_id: u32,
    /// The driver's expiry deadline (its CLOCK_MONOTONIC ns).
    pub expiry_ns: u64,
}

/// The layout facts every region description must show.
fn check_layout(
    layout_version: u32,
    header_slot_bytes: u32,
    nslots: u32,
    pools: &[super::proto::PayloadPool],
    header_uri: &str,
) -> Result<Vec<GrantPool>, String> {
    if layout_version != LAYOUT_VERSION {
        return Err(format!("layout version {layout_version}, expected {LAYOUT_VERSION}"));
    }
    if header_slot_bytes as usize != SLOT_BYTES {
        return Err(format!("header slot bytes {header_slot_bytes}, expected {SLOT_BYTES}"));
    }
    if !nslots.is_power_of_two() {
        return Err(format!("header nslots {nslots} is not a power of two"));
    }
    if header_uri.is_empty() {
        return Err("empty header region uri".to_owned());
    }
    if pools.is_empty() {
        return Err("no payload pools".to_owned());
    }
    pools
        .iter()
        .map(|p| {
            let pool_id = u16::try_from(p.pool_id)
                .ok()
                .filter(|&id| id != 0)
                .ok_or_else(|| format!("pool id {} out of range 1..=65535", p.pool_id))?;
            if p.pool_nslots != nslots {
                return Err(format!(
                    "pool {pool_id} has {} slots, the header ring {nslots}",
                    p.pool_nslots
                ));
            }
            if p.stride_bytes == 0 || p.stride_bytes % 64 != 0 {
                return Err(format!(
                    "pool {pool_id} stride {} is not a multiple of 64",
                    p.stride_bytes
                ));
            }
            if p.region_uri.is_empty() {
                return Err(format!("pool {pool_id} has an empty region uri"));
            }
            Ok(GrantPool { pool_id, stride_bytes: p.stride_bytes, uri: p.region_uri.clone() })
        })
        .collect()
}

/// Checks an attach response (spec §5.3 OK rules). Returns the lease and the grant.
pub fn check_attach(
    response: &AttachResponse,
    correlation_id: i64,
) -> Result<(Lease, Grant), PoolError> {
    if response.correlation_id != correlation_id {
        return Err(PoolError::BadGrant(format!(
            "correlation id {}, expected {correlation_id}",
            response.correlation_id
        )));
    }
    if response.code != CODE_OK {
        return Err(PoolError::Refused {
            code: response.code,
            message: response.error_message.clone(),
        });
    }
    let missing = |field: &str| PoolError::BadGrant(format!("OK response without {field}"));
    let lease_id =
        response.lease_id.filter(|&v| v != u64::MAX).ok_or_else(|| missing("lease_id"))?;
    let expiry_ns = response
        .lease_expiry_timestamp_ns
        .filter(|&v| v != u64::MAX)
        .ok_or_else(|| missing("lease_expiry_timestamp_ns"))?;
    let stream_id =
        response.stream_id.filter(|&v| v != u32::MAX).ok_or_else(|| missing("stream_id"))?;
    let epoch =
        response.epoch.filter(|&v| v != u64::MAX && v != 0).ok_or_else(|| missing("epoch"))?;
    let layout_version = response.layout_version.ok_or_else(|| missing("layout_version"))?;
    let nslots = response.header_nslots.ok_or_else(|| missing("header_nslots"))?;
    let slot_bytes = response.header_slot_bytes.ok_or_else(|| missing("header_slot_bytes"))?;
    let node_id = response.node_id.filter(|&v| v != u32::MAX).unwrap_or(0);
    let pools = check_layout(
        layout_version,
        slot_bytes,
        nslots,
        &response.payload_pools,
        &response.header_region_uri,
    )
    .map_err(PoolError::BadGrant)?;
    let wake_uri = Some(response.wake_region_uri.clone()).filter(|u| !u.is_empty());
    let grant = Grant {
        stream_id,
        epoch,
        nslots,
        header_uri: response.header_region_uri.clone(),
        pools,
        wake_uri,
    };
    Ok((Lease { lease_id, node_id, expiry_ns }, grant))
}

/// Checks an announce's layout (conformance 54: a mismatch is ignored).
pub fn check_announce(announce: &PoolAnnounce) -> Result<Grant, String> {
    let pools = check_layout(
        announce.layout_version,
        announce.header_slot_bytes,
        announce.header_nslots,
        &announce.payload_pools,
        &announce.header_region_uri,
    )?;
    Ok(Grant {
        stream_id: announce.stream_id,
        epoch: announce.epoch,
        nslots: announce.header_nslots,
        header_uri: announce.header_region_uri.clone(),
        pools,
        wake_uri: Some(announce.wake_region_uri.clone()).filter(|u| !u.is_empty()),
    })
}

/// What changed for the data plane: the grants to map (or `None`: unmap and wait), in order,
/// once [`generation`](Self::generation) moves.
#[derive(Debug, Default)]
pub struct LinkShared {
    /// Bumped (Release) after a grant is queued; the data plane compares it with the
    /// generation it took (Acquire).
    pub generation: AtomicU64,
    /// Grants in the order the control plane got them (at most [`MAX_QUEUED_GRANTS`]; older
    /// ones are dropped). A consumer reads what an epoch still holds before it moves to the
    /// next; a producer takes the newest.
    pending: Mutex<VecDeque<Option<Grant>>>,
}

/// Most grants waiting for the data plane.
pub const MAX_QUEUED_GRANTS: usize = 8;

impl LinkShared {
    fn publish(&self, grant: Option<Grant>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if grant.is_none() {
            // An unmap supersedes every grant before it (and is never evicted behind them).
            pending.clear();
        } else if pending.len() >= MAX_QUEUED_GRANTS {
            pending.pop_front();
        }
        pending.push_back(grant);
        drop(pending);
        // SYNC: Release pairs with the data plane's Acquire load of `generation` (Producer::
        // claim, Consumer::poll): the grant queued above is there when it looks.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Takes every queued grant, oldest first.
    pub fn take(&self) -> VecDeque<Option<Grant>> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Where the link is in the client state machine of spec §5.9.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Holding a lease.
    Attached,
    /// A consumer whose producer went away: waiting for an announce with an epoch above
    /// `above` until `deadline_ns`, then it reattaches.
    AwaitingEpoch {
        /// The epoch mapped.
        above: u64,
        /// When to give up waiting.
        deadline_ns: u64,
    },
    /// No lease; the next attach is tried at `retry_ns`.
    Backoff {
        /// When to retry.
        retry_ns: u64,
    },
    /// Detached for good (closed by the application).
    Closed,
}

/// Counters of a link, for the application and `corelane consume`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Successful attaches (the first one included).
    pub attaches: u64,
    /// Failed attach attempts.
    pub attach_failures: u64,
    /// Own lease revoked or expired.
    pub revoked: u64,
    /// Remaps to a higher epoch from an announce.
    pub remaps: u64,
    /// Announces ignored by the freshness rules (old, replayed, lower epoch, bad layout).
    pub announces_ignored: u64,
    /// Driver shutdown notices.
    pub shutdowns: u64,
    /// Reconnections of the control socket.
    pub reconnects: u64,
}

/// The control connection and lease of one client.
#[derive(Debug)]
pub struct Link {
    opts: PoolOptions,
    role: Role,
    client_id: u32,
    client: Option<Client>,
    subscription: Option<Subscription>,
    lease: Option<Lease>,
    /// The stream id granted (differs from the option's 0 for a dynamic stream).
    stream_id: u32,
    /// The epoch currently handed to the data plane.
    epoch: u64,
    state: LinkState,
    failures: u32,
    next_keepalive_ns: u64,
    next_events_ns: u64,
    /// When this client joined: announces stamped earlier are replays (spec §5.6).
    join_ns: u64,
    correlation: i64,
    shared: Arc<LinkShared>,
    stats: LinkStats,
    last_error: Option<String>,
    /// A QoS report to send with the next keepalive.
    qos: Option<QosReport>,
    /// Whether the stream has a producer, as the driver's announces (producer_id) and
    /// revokes say: a consumer judges the heartbeat only while one should be writing it.
    producer_present: bool,
}

impl Link {
    /// Connects and attaches once; the first grant is published to [`LinkShared`] (generation
    /// 1). Errors if the first attach fails: a client that never had a lease reports why.
    pub fn attach(opts: PoolOptions, role: Role) -> Result<Self, PoolError> {
        let now = monotonic_ns();
        let client_id = if opts.client_id == 0 { random_nonzero() } else { opts.client_id };
        let mut link = Self {
            stream_id: opts.stream_id,
            opts,
            role,
            client_id,
            client: None,
            subscription: None,
            lease: None,
            epoch: 0,
            state: LinkState::Backoff { retry_ns: now },
            failures: 0,
            next_keepalive_ns: 0,
            next_events_ns: 0,
            join_ns: now,
            correlation: i64::from(random_nonzero() >> 1) << 16,
            shared: Arc::new(LinkShared::default()),
            stats: LinkStats::default(),
            last_error: None,
            qos: None,
            producer_present: false,
        };
        link.try_attach(now)?;
        Ok(link)
    }

    /// The state shared with the data plane.
    pub fn shared(&self) -> Arc<LinkShared> {
        self.shared.clone()
    }

    /// The stream granted.
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// This client's id.
    pub fn client_id(&self) -> u32 {
        self.client_id
    }

    /// The lease held, if any.
    pub fn lease(&self) -> Option<Lease> {
        self.lease
    }

    /// The state machine's state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// The counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// The last failure, for logs.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Whether the stream has a producer now, as far as the driver's events tell.
    pub fn producer_present(&self) -> bool {
        self.producer_present
    }

    /// The options.
    pub fn options(&self) -> &PoolOptions {
        &self.opts
    }

    /// Queues a QoS report for the next keepalive.
    pub fn report_qos(&mut self, report: QosReport) {
        self.qos = Some(report);
    }

    /// The data plane found the mapped regions dead (stale heartbeat, changed pid, or a
    /// grant that does not map): drop the lease's regions and get new ones.
    pub fn regions_lost(&mut self, now_ns: u64, why: String) {
        self.last_error = Some(why);
        match self.role {
            // A consumer waits for the next epoch, then reattaches.
            Role::Consumer => {
                self.shared.publish(None);
                self.state = LinkState::AwaitingEpoch {
                    above: self.epoch,
                    deadline_ns: now_ns.saturating_add(self.freshness_ns()),
                };
            }
            // The driver still holds the lease: give it back, so the stream is not blocked
            // for every producer (this one's reattach included) until it expires.
            Role::Producer => self.release_lease(now_ns),
        }
    }

    /// Runs the state machine at `now_ns`: reconnect and reattach when due, keepalive when
    /// due, the driver's events. Returns whether it did anything.
    pub fn do_work(&mut self, now_ns: u64) -> bool {
        let mut work = false;
        match self.state {
            LinkState::Closed => return false,
            LinkState::Backoff { retry_ns } if now_ns >= retry_ns => {
                let _ = self.try_attach(now_ns);
                return true;
            }
            LinkState::Backoff { .. } => return false,
            LinkState::AwaitingEpoch { deadline_ns, .. } if now_ns >= deadline_ns => {
                self.last_error = Some("no announce with a higher epoch in time".to_owned());
                self.release_lease(now_ns);
                return true;
            }
            LinkState::Attached | LinkState::AwaitingEpoch { .. } => {}
        }
        if now_ns >= self.next_events_ns {
            self.next_events_ns = now_ns.saturating_add(EVENT_POLL.as_nanos() as u64);
            work |= self.poll_events(now_ns);
        }
        if self.lease.is_some() && now_ns >= self.next_keepalive_ns {
            self.keepalive(now_ns);
            work = true;
        }
        work
    }

    /// Detaches (best effort) and closes the link.
    pub fn close(&mut self) {
        self.detach();
        self.lease = None;
        self.state = LinkState::Closed;
        self.shared.publish(None);
    }

    fn freshness_ns(&self) -> u64 {
        3 * self.opts.announce_period.as_nanos() as u64
    }

    /// Connects if needed, subscribes to events, attaches; publishes the grant.
    fn try_attach(&mut self, now_ns: u64) -> Result<(), PoolError> {
        match self.attach_once(now_ns) {
            Ok(()) => {
                self.failures = 0;
                self.stats.attaches += 1;
                Ok(())
            }
            Err(e) => {
                self.stats.attach_failures += 1;
                self.failures = self.failures.saturating_add(1);
                self.state = LinkState::Backoff {
                    retry_ns: now_ns.saturating_add(backoff_ns(self.failures)),
                };
                self.last_error = Some(e.to_string());
                if e.is_connection() {
                    self.client = None;
                    self.subscription = None;
                }
                Err(e)
            }
        }
    }

    fn attach_once(&mut self, now_ns: u64) -> Result<(), PoolError> {
        if self.client.as_ref().is_none_or(Client::is_broken) {
            if self.client.is_some() {
                self.stats.reconnects += 1;
            }
            self.client = None;
            self.subscription = None;
            let client = Client::builder().timeout(self.opts.timeout).connect(&self.opts.socket)?;
            self.client = Some(client);
        }
        let client = self.client.as_mut().expect("connected above");
        if self.subscription.is_none() {
            let (subscription, current): (Subscription, SubscribeReply) =
                client.subscribe(MSG_POOL_SUBSCRIBE, &Subscribe {})?;
            self.subscription = Some(subscription);
            if let Some(a) = current.announces.iter().find(|a| a.stream_id == self.stream_id) {
                self.producer_present = a.producer_id != 0;
            }
        }
        if self.role == Role::Consumer {
            self.hello()?;
        }
        // A client id the driver says is taken (ours from a lease it still holds, or
        // another client's) gets one more try with a new random id if it was ours to pick.
        for attempt in 0..2 {
            self.correlation = self.correlation.wrapping_add(1);
            let request = AttachRequest {
                correlation_id: self.correlation,
                // The stream granted before (a dynamic stream's id after the first attach).
                stream_id: self.stream_id,
                client_id: self.client_id,
                role: self.role.code(),
                expected_layout_version: LAYOUT_VERSION,
                publish_mode: self.opts.publish_mode,
                require_hugepages: self.opts.require_hugepages,
                desired_node_id: self.opts.desired_node_id,
            };
            let client = self.client.as_mut().expect("connected above");
            let response: AttachResponse = client.call(MSG_POOL_ATTACH, &request)?;
            match check_attach(&response, self.correlation) {
                Ok((lease, grant)) => {
                    self.lease = Some(lease);
                    self.stream_id = grant.stream_id;
                    self.epoch = grant.epoch;
                    self.state = LinkState::Attached;
                    self.next_keepalive_ns =
                        now_ns.saturating_add(self.opts.keepalive_interval.as_nanos() as u64);
                    self.shared.publish(Some(grant));
                    return Ok(());
                }
                Err(PoolError::Refused { code, message })
                    if attempt == 0
                        && self.opts.client_id == 0
                        && message.contains("client_id already attached") =>
                {
                    self.client_id = random_nonzero();
                    let _ = (code, message);
                }
                Err(e) => return Err(e),
            }
        }
        Err(PoolError::Refused {
            code: super::CODE_REJECTED,
            message: "client_id already attached".to_owned(),
        })
    }

    /// ConsumerHello to the supervisor, before a consumer's attach: a supervisor that answers
    /// `use_shm = false` (`force_no_shm`) refuses this consumer, which reads shared memory
    /// only (the reply's fallback URI is in the error). A driver without a supervisor
    /// answers with an error, and the attach goes on.
    fn hello(&mut self) -> Result<(), PoolError> {
        let Some(client) = self.client.as_mut() else { return Ok(()) };
        let hello = ConsumerHello {
            stream_id: self.stream_id,
            consumer_id: self.client_id,
            supports_shm: true,
            supports_progress: false,
            mode: super::MODE_STREAM,
            max_rate_hz: 0,
            expected_layout_version: LAYOUT_VERSION,
            progress_interval_us: None,
            progress_bytes_delta: None,
            progress_major_delta_units: None,
            descriptor_stream_id: 0,
            control_stream_id: 0,
            descriptor_channel: String::new(),
            control_channel: String::new(),
        };
        match client.call::<ConsumerConfig>(MSG_POOL_HELLO, &hello) {
            Ok(config) if !config.use_shm => {
                Err(PoolError::NoShm { fallback: config.payload_fallback_uri })
            }
            Ok(_) | Err(crate::control::ClientError::Remote { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Detaches (best effort: the driver may be gone) a lease the driver still holds, then
    /// drops it as [`drop_lease`](Self::drop_lease) does.
    fn release_lease(&mut self, now_ns: u64) {
        self.detach();
        self.drop_lease(now_ns);
    }

    /// A DetachRequest for the lease held, if there is one and a connection (best effort:
    /// the answer is not needed, the lease is given up either way).
    fn detach(&mut self) {
        if let (Some(lease), Some(client)) = (self.lease, self.client.as_mut()) {
            self.correlation = self.correlation.wrapping_add(1);
            let request = DetachRequest {
                correlation_id: self.correlation,
                lease_id: lease.lease_id,
                stream_id: self.stream_id,
                client_id: self.client_id,
                role: self.role.code(),
            };
            let _: Result<DetachResponse, _> = client.call(MSG_POOL_DETACH, &request);
        }
    }

    /// Drops the lease (one the driver no longer holds, or gave up) and its regions; the next
    /// attach after the back-off.
    fn drop_lease(&mut self, now_ns: u64) {
        self.lease = None;
        self.shared.publish(None);
        self.failures = self.failures.saturating_add(1);
        self.state =
            LinkState::Backoff { retry_ns: now_ns.saturating_add(backoff_ns(self.failures)) };
    }

    fn keepalive(&mut self, now_ns: u64) {
        let Some(lease) = self.lease else { return };
        self.next_keepalive_ns =
            now_ns.saturating_add(self.opts.keepalive_interval.as_nanos() as u64);
        let Some(client) = self.client.as_mut() else { return };
        if let Some(report) = self.qos.take() {
            let _: Result<QosAck, _> = client.call(MSG_POOL_QOS, &report);
        }
        let request = LeaseKeepalive {
            lease_id: lease.lease_id,
            stream_id: self.stream_id,
            client_id: self.client_id,
            role: self.role.code(),
            client_timestamp_ns: now_ns,
        };
        match client.call::<KeepaliveAck>(MSG_POOL_KEEPALIVE, &request) {
            Ok(ack) if ack.extended => {
                if let Some(l) = self.lease.as_mut() {
                    l.expiry_ns = ack.lease_expiry_timestamp_ns;
                }
            }
            Ok(_) => {
                // The driver no longer knows the lease (expired, or a restarted driver).
                self.stats.revoked += 1;
                self.last_error = Some("keepalive not accepted: lease gone".to_owned());
                self.drop_lease(now_ns);
            }
            Err(e) => {
                // Spec §5.4: a keepalive that cannot be sent is fatal for the lease.
                self.last_error = Some(format!("keepalive failed: {e}"));
                if client.is_broken() {
                    self.client = None;
                    self.subscription = None;
                }
                self.drop_lease(now_ns);
            }
        }
    }

    /// Reads and applies the driver's events. Returns whether any arrived.
    fn poll_events(&mut self, now_ns: u64) -> bool {
        let mut any = false;
        for _ in 0..64 {
            let Some(client) = self.client.as_mut() else { break };
            let push = match client.try_next_push() {
                Ok(Some(push)) => push,
                Ok(None) => break,
                Err(e) => {
                    // The daemon went away: without its socket no lease can be kept.
                    self.last_error = Some(format!("control connection lost: {e}"));
                    self.client = None;
                    self.subscription = None;
                    self.drop_lease(now_ns);
                    return true;
                }
            };
            any = true;
            let Ok(event) = PoolEvent::decode(push.body.as_slice()) else { continue };
            match event.event {
                Some(pool_event::Event::Announce(a)) => self.on_announce(&a, now_ns),
                Some(pool_event::Event::LeaseRevoked(r)) => {
                    let ours = self.lease.is_some_and(|l| l.lease_id == r.lease_id);
                    if ours {
                        self.stats.revoked += 1;
                        self.last_error = Some(format!(
                            "lease revoked (reason {}): {}",
                            r.reason, r.error_message
                        ));
                        // Whatever the reason (a DETACHED revoke of a lease this link still
                        // holds came from someone else's detach): the lease is gone.
                        self.lease = None;
                        self.drop_lease(now_ns);
                    } else if self.role == Role::Consumer
                        && r.role == ROLE_PRODUCER
                        && r.stream_id == self.stream_id
                        && self.state == LinkState::Attached
                    {
                        self.producer_present = false;
                        // Spec §5.5: the producer of our stream went; wait for the
                        // higher-epoch announce (it follows the revoke), else reattach.
                        self.state = LinkState::AwaitingEpoch {
                            above: self.epoch,
                            deadline_ns: now_ns.saturating_add(self.freshness_ns()),
                        };
                    }
                }
                Some(pool_event::Event::Shutdown(s)) => {
                    self.stats.shutdowns += 1;
                    self.last_error = Some(format!("driver shutdown (reason {})", s.reason));
                    self.client = None;
                    self.subscription = None;
                    self.drop_lease(now_ns);
                    return true;
                }
                None => {}
            }
        }
        any
    }

    /// Spec §5.6: ignore stale, replayed, lower-epoch or mismatched announces; remap on a
    /// higher epoch of our stream (consumers; a producer's epochs come with its attach).
    fn on_announce(&mut self, announce: &PoolAnnounce, now_ns: u64) {
        if announce.stream_id != self.stream_id || self.role != Role::Consumer {
            return;
        }
        self.producer_present = announce.producer_id != 0;
        let verdict =
            judge_announce(announce, self.join_ns, now_ns, self.epoch, self.freshness_ns());
        match verdict {
            AnnounceVerdict::Current => {}
            AnnounceVerdict::Ignored(why) => {
                self.stats.announces_ignored += 1;
                self.last_error = Some(format!("announce ignored: {why}"));
            }
            AnnounceVerdict::Remap(grant) => {
                self.epoch = grant.epoch;
                self.stats.remaps += 1;
                if self.lease.is_some() {
                    self.state = LinkState::Attached;
                }
                self.shared.publish(Some(grant));
            }
        }
    }
}

/// What a consumer does with an announce of its stream (spec §5.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnnounceVerdict {
    /// The epoch mapped now: nothing to do.
    Current,
    /// Not to be used, and why.
    Ignored(&'static str),
    /// A higher epoch with a valid layout: map it.
    Remap(Grant),
}

/// The freshness rules of spec §5.6 for an announce received at `now_ns` by a consumer that
/// joined at `join_ns` and maps `mapped_epoch`: only MONOTONIC announces (realtime is never
/// trusted), none stamped before the join (a replay), none older than `freshness_ns` (3
/// announce periods), only a higher epoch, and only a layout the spec allows.
pub fn judge_announce(
    announce: &PoolAnnounce,
    join_ns: u64,
    now_ns: u64,
    mapped_epoch: u64,
    freshness_ns: u64,
) -> AnnounceVerdict {
    if announce.epoch == mapped_epoch {
        return AnnounceVerdict::Current;
    }
    if announce.announce_clock_domain != super::CLOCK_MONOTONIC {
        return AnnounceVerdict::Ignored("not stamped with the monotonic clock");
    }
    if announce.announce_timestamp_ns < join_ns {
        return AnnounceVerdict::Ignored("stamped before this consumer joined");
    }
    if now_ns.saturating_sub(announce.announce_timestamp_ns) > freshness_ns {
        return AnnounceVerdict::Ignored("older than three announce periods");
    }
    if announce.epoch < mapped_epoch {
        return AnnounceVerdict::Ignored("a lower epoch than the one mapped");
    }
    match check_announce(announce) {
        Ok(grant) => AnnounceVerdict::Remap(grant),
        Err(_) => AnnounceVerdict::Ignored("its layout breaks the spec"),
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if self.state != LinkState::Closed {
            self.close();
        }
    }
}

/// The back-off after `failures` (at least 1) failures in a row: 100 ms doubling to 3.2 s.
fn backoff_ns(failures: u32) -> u64 {
    (BACKOFF_BASE.as_nanos() as u64) << (failures.clamp(1, 6) - 1)
}

/// A random non-zero u32 (client ids, correlation seeds), from the clock and the pid: ids
/// need to differ between processes, not to be secret.
fn random_nonzero() -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut state = monotonic_ns()
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let v = super::driver::splitmix64(&mut state) as u32;
    if v == 0 || v == u32::MAX {
        1
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::proto::PayloadPool;

    fn pool(nslots: u32) -> PayloadPool {
        PayloadPool {
            pool_id: 1,
            pool_nslots: nslots,
            stride_bytes: 4096,
            region_uri: "shm:file?path=/dev/shm/x/1.pool|require_hugepages=false".into(),
        }
    }

    fn ok_response() -> AttachResponse {
        AttachResponse {
            correlation_id: 7,
            code: CODE_OK,
            lease_id: Some(11),
            lease_expiry_timestamp_ns: Some(3_000),
            stream_id: Some(10_000),
            epoch: Some(5),
            layout_version: Some(1),
            header_nslots: Some(8),
            header_slot_bytes: Some(256),
            node_id: Some(9),
            payload_pools: vec![pool(8)],
            header_region_uri: "shm:file?path=/dev/shm/x/header.ring|require_hugepages=false"
                .into(),
            error_message: String::new(),
            wake_region_uri: String::new(),
        }
    }

    /// Conformance 44: an OK response with a null required field, an empty URI, a slot size
    /// other than 256, no pools or a pool whose nslots differ is a failure (fail closed).
    #[test]
    fn c44_an_ok_response_that_breaks_the_rules_is_a_failure() {
        let (lease, grant) = check_attach(&ok_response(), 7).unwrap();
        assert_eq!((lease.lease_id, lease.node_id, grant.epoch, grant.nslots), (11, 9, 5, 8));
        assert!(check_attach(&ok_response(), 8).is_err(), "another correlation id");
        let broken: [fn(&mut AttachResponse); 10] = [
            |r| r.lease_id = None,
            |r| r.lease_id = Some(u64::MAX),
            |r| r.epoch = None,
            |r| r.stream_id = None,
            |r| r.header_nslots = None,
            |r| r.header_slot_bytes = Some(128),
            |r| r.header_region_uri.clear(),
            |r| r.payload_pools.clear(),
            |r| r.payload_pools[0].pool_nslots = 4,
            |r| r.payload_pools[0].region_uri.clear(),
        ];
        for (i, breaks) in broken.iter().enumerate() {
            let mut r = ok_response();
            breaks(&mut r);
            assert!(
                matches!(check_attach(&r, 7), Err(PoolError::BadGrant(_))),
                "case {i} was accepted"
            );
        }
        let mut refused = ok_response();
        refused.code = 3;
        refused.error_message = "producer already attached".into();
        assert!(matches!(check_attach(&refused, 7), Err(PoolError::Refused { code: 3, .. })));
    }

    fn announce(epoch: u64, at: u64) -> PoolAnnounce {
        let r = ok_response();
        PoolAnnounce {
            stream_id: 10_000,
            producer_id: 1,
            epoch,
            announce_timestamp_ns: at,
            announce_clock_domain: crate::pool::CLOCK_MONOTONIC,
            layout_version: 1,
            header_nslots: 8,
            header_slot_bytes: 256,
            payload_pools: r.payload_pools,
            header_region_uri: r.header_region_uri,
            wake_region_uri: String::new(),
        }
    }

    /// Conformance 54: an announce older than 3 periods, stamped before the join, of a lower
    /// epoch or with a bad layout is ignored; a higher epoch remaps.
    #[test]
    fn c54_consumer_freshness_rules() {
        let (join, now, fresh) = (1_000, 10_000, 3_000);
        let judge = |a: &PoolAnnounce| judge_announce(a, join, now, 5, fresh);
        assert!(matches!(judge(&announce(6, 9_000)), AnnounceVerdict::Remap(g) if g.epoch == 6));
        assert_eq!(judge(&announce(5, 9_000)), AnnounceVerdict::Current);
        assert!(matches!(judge(&announce(4, 9_000)), AnnounceVerdict::Ignored(_)), "lower");
        assert!(matches!(judge(&announce(6, 6_000)), AnnounceVerdict::Ignored(_)), "stale");
        assert!(matches!(judge(&announce(6, 500)), AnnounceVerdict::Ignored(_)), "replayed");
        let mut realtime = announce(6, 9_000);
        realtime.announce_clock_domain = 2;
        assert!(matches!(judge(&realtime), AnnounceVerdict::Ignored(_)), "realtime");
        let mut bad = announce(6, 9_000);
        bad.header_slot_bytes = 255;
        assert!(matches!(judge(&bad), AnnounceVerdict::Ignored(_)), "layout");
        let mut bad = announce(6, 9_000);
        bad.header_nslots = 6;
        assert!(matches!(judge(&bad), AnnounceVerdict::Ignored(_)), "nslots");
    }

    #[test]
    fn backoff_doubles_from_100_ms_to_3_2_s() {
        let ms = |f| backoff_ns(f) / 1_000_000;
        assert_eq!([ms(1), ms(2), ms(3), ms(6), ms(60)], [100, 200, 400, 3_200, 3_200]);
    }
}
