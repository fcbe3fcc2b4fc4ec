//! The tensor pool: shared-memory header rings and payload pools, owned by one driver.
//!
//! - [`config`]: the driver's tp_driver-style TOML (`config/pool.toml` is the embedded default);
//! - [`driver`]: the sans-IO driver state machine (attach, keepalive, detach, expiry, epochs,
//!   announces, shutdown), with the filesystem behind [`driver::ShmBackend`];
//! - [`supervisor`]: ConsumerHello → ConsumerConfig and the consumer registry.
//!
//! The rules are those of `specs/tensor-pool.md` §5–§8; where the C reference differs, the
//! module docs say which way corelane goes.

pub mod config;
pub mod driver;
pub mod supervisor;
