//! The tensor pool driver as a daemon service: its config (`[pool]`), its agent `pool` (the
//! sans-IO [`Driver`] and [`Supervisor`] driven from a lane, the files made by [`FsBackend`]),
//! its control requests (msg_types 32-38) and its CLI subcommands.
//!
//! The agent answers every request on one [`ControlPort`] whose answers and pushes share one
//! link back to the control agent, so what the driver orders reaches clients in that order:
//! a producer attach's announce before its OK response, a lease revocation before the
//! epoch-bumped announce it causes.
//!
//! File creation runs on the pool agent's lane (a new epoch: mkdir, fallocate, prefault,
//! fsync; milliseconds for a large profile). Place the `pool` agent on a lane of its own when
//! other agents on that lane must not wait that long.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use prost::Message;

use super::config::{PoolConfig, Profile};
use super::driver::{
    self, Action, ClientKey, Driver, EpochUris, GcPolicy, Notice, Response, ShmBackend,
};
use super::files::{self, CreateOptions, EpochFiles};
use super::layout::ShmLayout;
use super::proto;
use super::requests::{decode_request, PoolRequest, QosReport};
use super::supervisor::Supervisor;
use super::{
    monotonic_ns, MSG_POOL_ATTACH, MSG_POOL_DETACH, MSG_POOL_HELLO, MSG_POOL_KEEPALIVE,
    MSG_POOL_QOS, MSG_POOL_STATUS, MSG_POOL_SUBSCRIBE,
};
use crate::config::{Config, ConfigError, SectionSpec, POOL_SECTION};
use crate::control::{ConnRef, ControlPort, Request, ToService, CODE_BAD_REQUEST_BODY, CODE_LIMIT};
use crate::daemon::service::Agents;
use crate::daemon::{
    Build, CliContext, DaemonError, Prepare, Prepared, RequestSpec, Service, StatusCell,
};
use crate::metrics::{Counter, CounterId, CounterSpec};
use crate::rings::seqlock::PoolSpec;
use crate::runtime::{Agent, Ctx};

/// The pool service, as named in the table of services.
pub static POOL: PoolService = PoolService;

/// Most connections subscribed to the driver's events; more are refused ([`CODE_LIMIT`]).
pub const MAX_SUBSCRIBERS: usize = 1024;

/// Most epoch directories a stream keeps on disk (the current one included), whatever the
/// epoch GC policy says.
pub const MAX_EPOCHS_ON_DISK: u32 = 8;

/// Most subscriptions one connection may hold (a client needs one).
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 4;

/// Most requests the pool agent takes per pass.
const REQUESTS_PER_PASS: usize = 64;

/// Consumers whose QoS reports are kept per stream (for `pool status` drops).
const MAX_QOS_CONSUMERS: usize = 1024;

/// Error code of a pool request refused by the supervisor (ConsumerHello).
pub const CODE_POOL_REFUSED: u16 = 0x0500;

const REQUESTS: &[RequestSpec] = &[
    RequestSpec { msg_type: MSG_POOL_ATTACH, name: "pool_attach" },
    RequestSpec { msg_type: MSG_POOL_KEEPALIVE, name: "pool_keepalive" },
    RequestSpec { msg_type: MSG_POOL_DETACH, name: "pool_detach" },
    RequestSpec { msg_type: MSG_POOL_SUBSCRIBE, name: "pool_subscribe" },
    RequestSpec { msg_type: MSG_POOL_HELLO, name: "pool_hello" },
    RequestSpec { msg_type: MSG_POOL_QOS, name: "pool_qos" },
    RequestSpec { msg_type: MSG_POOL_STATUS, name: "pool_status" },
];

/// The tensor pool driver service.
#[derive(Debug)]
pub struct PoolService;

/// The driver configuration of `config`: the file `pool.config_file` if set, else the
/// `[pool.*]` tables.
pub fn pool_config(config: &Config) -> Result<PoolConfig, String> {
    let section = &config.pool;
    if section.config_file.is_empty() {
        return PoolConfig::from_table(&section.driver_tables()).map_err(|e| e.to_string());
    }
    let text = std::fs::read_to_string(&section.config_file)
        .map_err(|e| format!("cannot read pool.config_file {}: {e}", section.config_file))?;
    PoolConfig::from_toml_str(&text).map_err(|e| format!("{}: {e}", section.config_file))
}

impl Service for PoolService {
    fn name(&self) -> &'static str {
        "pool"
    }

    fn section(&self) -> &SectionSpec {
        &POOL_SECTION
    }

    fn agents(&self) -> &'static [&'static str] {
        &["pool"]
    }

    fn requests(&self) -> &'static [RequestSpec] {
        REQUESTS
    }

    fn enabled(&self, config: &Config) -> bool {
        config.pool.enabled
    }

    fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        if !config.pool.enabled {
            return Ok(());
        }
        let pool = pool_config(config)
            .map_err(|reason| ConfigError::Invalid { at: "pool".into(), reason })?;
        ShmLayout::new(&pool.shm.base_dir, &pool.shm.namespace)
            .map_err(|e| ConfigError::Invalid { at: "pool.shm".into(), reason: e.to_string() })?;
        Ok(())
    }

    fn prepare(&self, cx: &mut Prepare<'_>) -> Result<Box<dyn Prepared>, DaemonError> {
        let pool = pool_config(cx.config)
            .map_err(|message| DaemonError::Service { service: "pool", message })?;
        for key in pool.unknown_keys() {
            tracing::warn!(key = %key, "pool config: unknown key ignored");
        }
        let counters = PoolCounterIds::register(cx)?;
        Ok(Box::new(PoolPrepared { pool, counters }))
    }

    fn commands(&self) -> Vec<clap::Command> {
        crate::cli::pool::commands()
    }

    fn run_command(&self, name: &str, matches: &clap::ArgMatches, cli: &CliContext) -> ExitCode {
        crate::cli::pool::run(name, matches, cli)
    }
}

struct PoolCounterIds {
    attached: CounterId,
    refused: CounterId,
    revoked: CounterId,
    announces: CounterId,
    leases: CounterId,
    subscribers: CounterId,
}

impl PoolCounterIds {
    fn register(cx: &mut Prepare<'_>) -> Result<Self, DaemonError> {
        Ok(Self {
            attached: cx.register(CounterSpec::counter(
                "corelane_pool_attach_total",
                &[("result", "ok")],
                "Tensor pool attach requests by result.",
            ))?,
            refused: cx.register(CounterSpec::counter(
                "corelane_pool_attach_total",
                &[("result", "refused")],
                "Tensor pool attach requests by result.",
            ))?,
            revoked: cx.register(CounterSpec::counter(
                "corelane_pool_leases_revoked_total",
                &[],
                "Tensor pool leases ended (detached, expired, revoked).",
            ))?,
            announces: cx.register(CounterSpec::counter(
                "corelane_pool_announces_total",
                &[],
                "Tensor pool announces sent (periodic and on change).",
            ))?,
            leases: cx.register(CounterSpec::gauge(
                "corelane_pool_leases",
                &[],
                "Tensor pool leases held now.",
            ))?,
            subscribers: cx.register(CounterSpec::gauge(
                "corelane_pool_subscribers",
                &[],
                "Control connections subscribed to the driver's events.",
            ))?,
        })
    }
}

struct PoolPrepared {
    pool: PoolConfig,
    counters: PoolCounterIds,
}

impl Prepared for PoolPrepared {
    fn build(self: Box<Self>, cx: &mut Build<'_>) -> Result<Agents, DaemonError> {
        let routes: Vec<(u16, &'static str)> =
            REQUESTS.iter().map(|r| (r.msg_type, r.name)).collect();
        let port = cx.serve_all(&routes, "pool");
        let counters = PoolCounters {
            attached: cx.counter(self.counters.attached),
            refused: cx.counter(self.counters.refused),
            revoked: cx.counter(self.counters.revoked),
            announces: cx.counter(self.counters.announces),
            leases: cx.counter(self.counters.leases),
            subscribers: cx.counter(self.counters.subscribers),
        };
        let agent = PoolAgent::new(&self.pool, port, cx.status("pool"), counters)
            .map_err(|message| DaemonError::Service { service: "pool", message })?;
        Ok(vec![("pool", Box::new(agent) as Box<dyn Agent>)])
    }
}

/// The files of a driver: the canonical layout under `shm.base_dir`.
#[derive(Debug)]
pub struct FsBackend {
    layout: ShmLayout,
    create: CreateOptions,
    pid: u64,
    hugetlbfs: bool,
    /// The current epoch's files of each stream (holding an mlock, when asked). The driver
    /// never maps them for reading or writing: a peer that can open them could truncate one
    /// under the mapping (SIGBUS in the daemon); superblocks are written with `pwrite`.
    current: HashMap<u32, EpochFiles>,
}

impl FsBackend {
    /// The backend for `pool`'s `[shm]` and `[policies]`.
    pub fn new(pool: &PoolConfig) -> Result<Self, String> {
        let layout =
            ShmLayout::new(&pool.shm.base_dir, &pool.shm.namespace).map_err(|e| e.to_string())?;
        let hugetlbfs =
            files::is_hugetlbfs(std::path::Path::new(&pool.shm.base_dir)).unwrap_or(false);
        Ok(Self {
            layout,
            create: CreateOptions {
                permissions_mode: pool.shm.permissions_mode,
                prefault: pool.policies.prefault_shm,
                mlock: pool.policies.mlock_shm,
                require_hugepages: false,
            },
            pid: u64::from(std::process::id()),
            hugetlbfs,
            current: HashMap::new(),
        })
    }

    /// The layout.
    pub fn layout(&self) -> &ShmLayout {
        &self.layout
    }

    /// The wake sidecar's URI of `stream_id`'s current epoch, if it is `epoch`.
    fn wake_uri(&self, stream_id: u32, epoch: u64) -> String {
        match self.current.get(&stream_id) {
            Some(files) if files.epoch == epoch => files.wake_uri.to_string(),
            _ => String::new(),
        }
    }
}

impl ShmBackend for FsBackend {
    fn create_epoch(
        &mut self,
        stream_id: u32,
        epoch: u64,
        profile: &Profile,
        require_hugepages: bool,
    ) -> Result<EpochUris, String> {
        let pools: Vec<PoolSpec> = profile
            .payload_pools
            .iter()
            .map(|p| PoolSpec { pool_id: p.pool_id, stride_bytes: p.stride_bytes })
            .collect();
        let opts = CreateOptions { require_hugepages, ..self.create };
        let made = files::create_epoch(
            &self.layout,
            stream_id,
            epoch,
            profile.header_nslots,
            &pools,
            &opts,
            self.pid,
            monotonic_ns(),
        )
        .map_err(|e| e.to_string())?;
        // However fast epochs come (a client cycling attach/detach), a stream keeps at most
        // MAX_EPOCHS_ON_DISK epoch directories, whatever their age: the oldest go first (a
        // consumer that had not mapped one yet reattaches).
        let now = monotonic_ns();
        if let Err(e) = files::gc_epochs(&self.layout, stream_id, epoch, MAX_EPOCHS_ON_DISK, 0, now)
        {
            tracing::warn!(stream_id, "pool: epoch cap: {e}");
        }
        let uris = EpochUris {
            header_uri: made.header_uri.to_string(),
            pool_uris: made.pools.iter().map(|p| p.uri.to_string()).collect(),
        };
        self.current.insert(stream_id, made);
        Ok(uris)
    }

    fn gc(&mut self, stream_id: u32, current_epoch: u64, now_ns: u64, policy: GcPolicy) {
        match files::gc_epochs(
            &self.layout,
            stream_id,
            current_epoch,
            policy.keep,
            policy.min_age_ns,
            now_ns,
        ) {
            Ok(removed) => {
                for r in removed {
                    tracing::debug!(stream_id, epoch = r.epoch, "pool: epoch files removed");
                }
            }
            Err(e) => tracing::warn!(stream_id, "pool: epoch gc failed: {e}"),
        }
    }

    fn base_is_hugetlbfs(&self) -> bool {
        self.hugetlbfs
    }

    fn max_epoch_on_disk(&self, stream_id: u32) -> Option<u64> {
        files::max_epoch_on_disk(&self.layout, stream_id).ok().flatten()
    }

    fn entropy(&mut self) -> Option<u64> {
        let mut bytes = [0u8; 8];
        match rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()) {
            Ok(8) => Some(u64::from_le_bytes(bytes)),
            _ => None,
        }
    }
}

struct PoolCounters {
    attached: Counter,
    refused: Counter,
    revoked: Counter,
    announces: Counter,
    leases: Counter,
    subscribers: Counter,
}

/// What the consumers and the producer of a stream last reported (QoS).
#[derive(Debug, Default)]
struct StreamQos {
    epoch: u64,
    frames: u64,
    drops: HashMap<u32, u64>,
}

/// The pool agent: the driver and supervisor on a lane.
pub struct PoolAgent {
    driver: Driver<FsBackend>,
    supervisor: Option<Supervisor>,
    port: Option<ControlPort>,
    subscribers: Vec<(ConnRef, u64)>,
    /// The last announce of each stream (answers a new subscription).
    announces: HashMap<u32, proto::PoolAnnounce>,
    qos: HashMap<u32, StreamQos>,
    lease_ttl_ns: u64,
    announce_period_ns: u64,
    /// `Instant` of the lane and CLOCK_MONOTONIC ns at one moment (both are CLOCK_MONOTONIC
    /// on Linux; this spares a clock read per pass).
    clock: (Instant, u64),
    next_status_ns: u64,
    status: StatusCell,
    counters: PoolCounters,
    shut_down: bool,
}

impl std::fmt::Debug for PoolAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolAgent")
            .field("subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

impl PoolAgent {
    fn new(
        pool: &PoolConfig,
        port: Option<ControlPort>,
        status: StatusCell,
        counters: PoolCounters,
    ) -> Result<Self, String> {
        let backend = FsBackend::new(pool)?;
        let now = monotonic_ns();
        let seed = now ^ (u64::from(std::process::id()) << 40);
        let driver = Driver::new(pool, backend, seed, now).map_err(|e| e.to_string())?;
        let supervisor = pool.supervisor.as_ref().map(Supervisor::new);
        status.set("base_dir", driver.backend().layout().base_dir().display());
        status.set("namespace", pool.shm.namespace.clone());
        Ok(Self {
            driver,
            supervisor,
            port,
            subscribers: Vec::new(),
            announces: HashMap::new(),
            qos: HashMap::new(),
            lease_ttl_ns: pool.lease_ttl_ns(),
            announce_period_ns: pool.announce_period_ns().max(1),
            clock: (Instant::now(), now),
            next_status_ns: 0,
            status,
            counters,
            shut_down: false,
        })
    }

    fn now_ns(&self, now: Instant) -> u64 {
        let (at, ns) = self.clock;
        ns.saturating_add(now.saturating_duration_since(at).as_nanos() as u64)
    }

    fn handle(&mut self, request: Request, now_ns: u64) {
        let key = ClientKey(request.conn.0);
        let decoded = match decode_request(request.msg_type, &request.body) {
            Ok(d) => d,
            Err(e) => {
                if let Some(port) = &mut self.port {
                    port.error(&request, CODE_BAD_REQUEST_BODY, &e.to_string());
                }
                return;
            }
        };
        match decoded {
            PoolRequest::Attach(req) => {
                self.driver.attach(key, &req, now_ns);
                self.apply(Some(&request));
            }
            PoolRequest::Detach(req) => {
                self.driver.detach(key, &req, now_ns);
                self.apply(Some(&request));
            }
            PoolRequest::Keepalive(keepalive) => {
                let extended = self.driver.keepalive(key, &keepalive, now_ns);
                let ack = proto::KeepaliveAck {
                    extended,
                    lease_expiry_timestamp_ns: if extended {
                        now_ns.saturating_add(self.lease_ttl_ns)
                    } else {
                        0
                    },
                };
                self.respond(&request, &ack);
                self.apply(None);
            }
            PoolRequest::Subscribe if self.subscribers.len() >= MAX_SUBSCRIBERS => {
                let text = format!(
                    "too many subscribers: {MAX_SUBSCRIBERS} connections follow the pool \
                     driver already"
                );
                if let Some(port) = &mut self.port {
                    port.error(&request, CODE_LIMIT, &text);
                }
            }
            PoolRequest::Subscribe
                if self.subscribers.iter().filter(|(c, _)| *c == request.conn).count()
                    >= MAX_SUBSCRIPTIONS_PER_CONNECTION =>
            {
                let text = format!(
                    "too many subscriptions: a connection may hold \
                     {MAX_SUBSCRIPTIONS_PER_CONNECTION}"
                );
                if let Some(port) = &mut self.port {
                    port.error(&request, CODE_LIMIT, &text);
                }
            }
            PoolRequest::Subscribe => {
                let mut announces: Vec<_> = self.announces.values().cloned().collect();
                announces.sort_by_key(|a| a.stream_id);
                self.respond(&request, &proto::SubscribeReply { announces });
                if !self.subscribers.contains(&(request.conn, request.msg_id)) {
                    self.subscribers.push((request.conn, request.msg_id));
                    self.counters.subscribers.set(self.subscribers.len() as u64);
                }
            }
            PoolRequest::Hello(hello) => self.hello(&request, hello, now_ns),
            PoolRequest::Qos(q) => {
                self.qos_report(q, now_ns);
                self.respond(&request, &proto::QosAck {});
            }
            PoolRequest::Status => {
                let status = self.pool_status(now_ns);
                self.respond(&request, &status);
            }
        }
    }

    fn hello(&mut self, request: &Request, hello: driver::ConsumerHello, now_ns: u64) {
        let Some(supervisor) = &mut self.supervisor else {
            let text = "no supervisor: the pool config has no [supervisor] section";
            if let Some(port) = &mut self.port {
                port.error(request, CODE_POOL_REFUSED, text);
            }
            return;
        };
        match supervisor.hello(&hello, now_ns) {
            Ok(c) => {
                let config = proto::ConsumerConfig {
                    stream_id: c.stream_id,
                    consumer_id: c.consumer_id,
                    use_shm: c.use_shm,
                    mode: u32::from(c.mode as u8),
                    descriptor_stream_id: c.descriptor_stream_id,
                    control_stream_id: c.control_stream_id,
                    payload_fallback_uri: c.payload_fallback_uri,
                    descriptor_channel: c.descriptor_channel,
                    control_channel: c.control_channel,
                };
                self.respond(request, &config);
            }
            Err(e) => {
                if let Some(port) = &mut self.port {
                    port.error(request, CODE_POOL_REFUSED, &e.to_string());
                }
            }
        }
    }

    fn qos_report(&mut self, q: QosReport, now_ns: u64) {
        match q {
            QosReport::Producer { stream_id, producer_id, epoch, current_seq } => {
                // Only the stream's producer, for its current epoch, says how many frames
                // there are (a client cannot set another stream's numbers).
                let current = self.driver.stream(stream_id).filter(|s| {
                    s.epoch == epoch && s.producer.is_some_and(|p| p.client_id == producer_id)
                });
                if current.is_none() {
                    return;
                }
                if let Some(s) = self.stream_qos(stream_id) {
                    if s.epoch != epoch {
                        s.drops.clear(); // a new epoch starts the counts again
                    }
                    s.epoch = epoch;
                    s.frames = current_seq;
                }
            }
            QosReport::Consumer(c) => {
                if let Some(supervisor) = &mut self.supervisor {
                    supervisor.qos(&c, now_ns);
                }
                if let Some(s) = self.stream_qos(c.stream_id) {
                    if s.drops.len() < MAX_QOS_CONSUMERS || s.drops.contains_key(&c.consumer_id) {
                        s.drops.insert(c.consumer_id, c.drops_gap.saturating_add(c.drops_late));
                    }
                }
            }
            QosReport::Empty => {}
        }
    }

    /// The QoS record of a stream the driver knows (reports for others are ignored, so a
    /// client cannot grow the map).
    fn stream_qos(&mut self, stream_id: u32) -> Option<&mut StreamQos> {
        self.driver.stream(stream_id)?;
        Some(self.qos.entry(stream_id).or_default())
    }

    fn pool_status(&self, now_ns: u64) -> proto::PoolStatus {
        let streams = self
            .driver
            .stream_status()
            .into_iter()
            .map(|s| {
                let qos = self.qos.get(&s.stream_id).filter(|q| q.epoch == s.epoch);
                proto::StreamStatus {
                    stream_id: s.stream_id,
                    profile: s.profile.clone(),
                    epoch: s.epoch,
                    producer_client_id: s.producer.map(|p| p.client_id),
                    producer_node_id: s.producer.map(|p| p.node_id),
                    producer_lease_expiry_ns: s.producer.map(|p| p.expiry_ns),
                    consumers: s.consumers as u32,
                    frames: qos.map_or(0, |q| q.frames),
                    drops: self.qos.get(&s.stream_id).map_or(0, |q| q.drops.values().sum()),
                    dynamic: s.dynamic,
                    header_region_uri: self
                        .announces
                        .get(&s.stream_id)
                        .map(|a| a.header_region_uri.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        proto::PoolStatus {
            streams,
            leases: self.driver.lease_count() as u32,
            registered_consumers: self.supervisor.as_ref().map_or(0, |s| s.consumer_count() as u32),
            driver_now_ns: now_ns,
        }
    }

    fn respond(&mut self, request: &Request, msg: &impl Message) {
        if let Some(port) = &mut self.port {
            port.respond(request, msg);
        }
    }

    /// Carries out the driver's queued actions: replies to `request`, notices to every
    /// subscriber, in the driver's order.
    fn apply(&mut self, request: Option<&Request>) {
        while let Some(action) = self.driver.poll_action() {
            match action {
                Action::Reply { msg, .. } => {
                    let Some(request) = request else { continue };
                    match msg {
                        Response::Attach(r) => {
                            let ok = r.code == driver::ResponseCode::Ok;
                            if ok {
                                self.counters.attached.inc();
                            } else {
                                self.counters.refused.inc();
                            }
                            let wake = match (r.stream_id, r.epoch) {
                                (Some(s), Some(e)) if ok => self.driver.backend().wake_uri(s, e),
                                _ => String::new(),
                            };
                            let reply = attach_response(r, wake);
                            self.respond(request, &reply);
                        }
                        Response::Detach(r) => {
                            let reply = proto::DetachResponse {
                                correlation_id: r.correlation_id,
                                code: r.code as i32,
                                error_message: r.error_message,
                            };
                            self.respond(request, &reply);
                        }
                    }
                }
                Action::Broadcast(notice) => self.broadcast(notice),
                Action::Log(event) => tracing::info!(?event, "pool driver"),
            }
        }
        self.counters.leases.set(self.driver.lease_count() as u64);
    }

    fn broadcast(&mut self, notice: Notice) {
        let event = match notice {
            Notice::Announce(a) => {
                self.counters.announces.inc();
                let wake = self.driver.backend().wake_uri(a.stream_id, a.epoch);
                let announce = announce(a, wake);
                self.announces.insert(announce.stream_id, announce.clone());
                proto::pool_event::Event::Announce(announce)
            }
            Notice::LeaseRevoked(r) => {
                self.counters.revoked.inc();
                proto::pool_event::Event::LeaseRevoked(proto::LeaseRevoked {
                    timestamp_ns: r.timestamp_ns,
                    lease_id: r.lease_id,
                    stream_id: r.stream_id,
                    client_id: r.client_id,
                    role: u32::from(r.role as u8),
                    reason: u32::from(r.reason as u8),
                    error_message: r.error_message,
                })
            }
            Notice::DriverShutdown(s) => {
                proto::pool_event::Event::Shutdown(proto::DriverShutdown {
                    timestamp_ns: s.timestamp_ns,
                    reason: u32::from(s.reason as u8),
                    error_message: s.error_message,
                })
            }
        };
        let event = proto::PoolEvent { event: Some(event) };
        if let Some(port) = &mut self.port {
            for &(conn, msg_id) in &self.subscribers {
                // A full link drops the push (counted by the port): clients recover from
                // the next periodic announce, and a missed revoke from their keepalive.
                let _ = port.push(conn, msg_id, MSG_POOL_SUBSCRIBE, &event);
            }
        }
    }

    fn publish_status(&self) {
        let streams = self.driver.stream_status();
        let with_epoch = streams.iter().filter(|s| s.epoch != 0).count();
        self.status.set("streams", streams.len());
        self.status.set("active_streams", with_epoch);
        self.status.set("leases", self.driver.lease_count());
        self.status.set("subscribers", self.subscribers.len());
    }
}

fn pools(pools: Vec<driver::PayloadPool>) -> Vec<proto::PayloadPool> {
    pools
        .into_iter()
        .map(|p| proto::PayloadPool {
            pool_id: u32::from(p.pool_id),
            pool_nslots: p.pool_nslots,
            stride_bytes: p.stride_bytes,
            region_uri: p.region_uri,
        })
        .collect()
}

fn attach_response(r: driver::AttachResponse, wake: String) -> proto::AttachResponse {
    proto::AttachResponse {
        correlation_id: r.correlation_id,
        code: r.code as i32,
        lease_id: r.lease_id,
        lease_expiry_timestamp_ns: r.lease_expiry_timestamp_ns,
        stream_id: r.stream_id,
        epoch: r.epoch,
        layout_version: r.layout_version,
        header_nslots: r.header_nslots,
        header_slot_bytes: r.header_slot_bytes.map(u32::from),
        node_id: r.node_id,
        payload_pools: pools(r.payload_pools),
        header_region_uri: r.header_region_uri,
        error_message: r.error_message,
        wake_region_uri: wake,
    }
}

fn announce(a: driver::Announce, wake: String) -> proto::PoolAnnounce {
    proto::PoolAnnounce {
        stream_id: a.stream_id,
        producer_id: a.producer_id,
        epoch: a.epoch,
        announce_timestamp_ns: a.announce_timestamp_ns,
        announce_clock_domain: u32::from(a.announce_clock_domain as u8),
        layout_version: a.layout_version,
        header_nslots: a.header_nslots,
        header_slot_bytes: u32::from(a.header_slot_bytes),
        payload_pools: pools(a.payload_pools),
        header_region_uri: a.header_region_uri,
        wake_region_uri: wake,
    }
}

impl Agent for PoolAgent {
    fn name(&self) -> &str {
        "pool"
    }

    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let now_ns = self.now_ns(ctx.now);
        let mut work = 0;
        for _ in 0..REQUESTS_PER_PASS {
            let Some(message) = self.port.as_mut().and_then(ControlPort::poll) else { break };
            work += 1;
            match message {
                ToService::Request(request) => self.handle(request, now_ns),
                ToService::Closed(conn) => {
                    let before = self.subscribers.len();
                    self.subscribers.retain(|&(c, _)| c != conn);
                    if self.subscribers.len() != before {
                        self.counters.subscribers.set(self.subscribers.len() as u64);
                    }
                    self.driver.client_gone(ClientKey(conn.0));
                }
            }
        }
        if self.driver.poll_timeout().is_some_and(|due| due <= now_ns) {
            self.driver.tick(now_ns);
            self.apply(None);
            work += 1;
        }
        if now_ns >= self.next_status_ns {
            self.next_status_ns = now_ns.saturating_add(self.announce_period_ns / 4);
            if let Some(supervisor) = &mut self.supervisor {
                supervisor.tick(now_ns);
            }
            self.publish_status();
        }
        work
    }

    fn on_stopping(&mut self, ctx: &mut Ctx<'_>) {
        self.on_close(ctx);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>) {
        if !self.shut_down {
            self.shut_down = true;
            let now_ns = self.now_ns(ctx.now);
            self.driver.shutdown(now_ns);
            self.apply(None);
        }
    }
}
