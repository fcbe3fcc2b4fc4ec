//! The tensor pool: shared-memory header rings and payload pools byte-compatible with the SHM
//! Tensor Pool spec v1.2 (`shared/specs/tensor-pool.md`), the driver that owns them (leases,
//! epochs, announces) as a daemon service, and the producer and consumer libraries.
//!
//! - [`config`]: the driver's tp_driver-style TOML (the `[pool.*]` tables of
//!   `config/corelane.toml`, or a file: `config/pool.toml` is a complete one);
//! - [`driver`]: the sans-IO driver state machine (attach, keepalive, detach, expiry, epochs,
//!   announces, shutdown), with the filesystem behind [`driver::ShmBackend`];
//! - [`supervisor`]: ConsumerHello -> ConsumerConfig and the consumer registry;
//! - [`service`]: the driver on a daemon lane, its files ([`service::FsBackend`]), its control
//!   requests and CLI;
//! - [`Producer`] / [`Consumer`]: the client libraries (attach over the control socket, map
//!   the regions, claim -> write -> commit / poll, keepalives, reattach, remap), with their
//!   control plane in [`link`] and [`keeper`] (the client state machine of spec §5.9);
//! - [`proto`]: the control messages (msg_types [`MSG_POOL_ATTACH`]..[`MSG_POOL_STATUS`]);
//! - [`layout`], [`files`]: the canonical file layout, epoch creation (nothing half-created is
//!   left behind) and epoch GC; [`uri`]: `shm:file?` URIs and every mapping check of spec §4;
//!   [`inspect`]: decoding any region file (`corelane inspect`).
//!
//! The rules are those of `specs/tensor-pool.md` §5–§8; where the C reference differs, the
//! module docs say which way corelane goes.

pub mod config;
pub mod consumer;
pub mod driver;
pub mod files;
pub mod inspect;
pub mod keeper;
pub mod layout;
pub mod link;
pub mod producer;
pub mod proto;
pub mod regions;
pub mod requests;
pub mod service;
pub mod supervisor;
pub mod uri;

pub use consumer::{Consumer, ConsumerPoll, ConsumerStats, RecvError, Wait};
pub use link::{Grant, Lease, LinkState, LinkStats, PoolOptions, Role};
pub use producer::{Claim, ClaimError, Producer, ProducerStats};

/// `AttachRequest` / `AttachResponse`.
pub const MSG_POOL_ATTACH: u16 = 32;
/// `LeaseKeepalive` / `KeepaliveAck`.
pub const MSG_POOL_KEEPALIVE: u16 = 33;
/// `DetachRequest` / `DetachResponse`.
pub const MSG_POOL_DETACH: u16 = 34;
/// `Subscribe` / `SubscribeReply`, then `PoolEvent` pushes.
pub const MSG_POOL_SUBSCRIBE: u16 = 35;
/// `ConsumerHello` / `ConsumerConfig`.
pub const MSG_POOL_HELLO: u16 = 36;
/// `QosReport` / `QosAck`.
pub const MSG_POOL_QOS: u16 = 37;
/// `PoolStatusRequest` / `PoolStatus`.
pub const MSG_POOL_STATUS: u16 = 38;

/// Role PRODUCER.
pub const ROLE_PRODUCER: u32 = 1;
/// Role CONSUMER.
pub const ROLE_CONSUMER: u32 = 2;
/// ResponseCode OK.
pub const CODE_OK: i32 = 0;
/// ResponseCode REJECTED.
pub const CODE_REJECTED: i32 = 3;
/// LeaseRevokeReason DETACHED.
pub const REVOKE_DETACHED: u32 = 1;
/// ClockDomain MONOTONIC.
pub const CLOCK_MONOTONIC: u32 = 1;
/// Mode STREAM.
pub const MODE_STREAM: u32 = 1;

/// CLOCK_MONOTONIC in nanoseconds: the clock of leases, epochs, announces and slot
/// timestamps on this host (the same clock in every process).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// Errors of the pool client libraries.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The control socket failed.
    #[error("control socket: {0}")]
    Control(#[from] crate::control::ClientError),
    /// The driver refused the request.
    #[error("driver refused (code {code}): {message}")]
    Refused {
        /// The spec's response code.
        code: i32,
        /// Its text.
        message: String,
    },
    /// The driver's answer breaks the spec's rules (treated as a failure: fail closed).
    #[error("bad grant from the driver: {0}")]
    BadGrant(String),
    /// A region URI or file was refused.
    #[error("region refused: {0}")]
    Uri(#[from] uri::UriError),
    /// A region could not be mapped.
    #[error("cannot map region: {0}")]
    Map(#[from] crate::mapping::MapError),
    /// The supervisor answered the consumer's hello with `use_shm = false`
    /// (`supervisor.force_no_shm`); this consumer reads shared memory only.
    #[error("the supervisor refuses shared memory to this consumer (force_no_shm); fallback uri: '{fallback}'")]
    NoShm {
        /// The supervisor's `payload_fallback_uri` ("" if none).
        fallback: String,
    },
    /// A region's superblock or layout does not match the grant.
    #[error("region does not match the grant: {0}")]
    Stream(#[from] crate::rings::seqlock::StreamError),
}

impl PoolError {
    /// Whether the control connection is gone (reconnect before retrying).
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            PoolError::Control(
                crate::control::ClientError::Closed
                    | crate::control::ClientError::Connect { .. }
                    | crate::control::ClientError::Io(_)
                    | crate::control::ClientError::Wire(_)
            )
        )
    }
}
