//! The daemon's table of services: adding a service is its folder plus one line here.
//!
//! Each line is `field: ConfigType => SERVICE,`: the config section `[field]` deserialises
//! into `Config::field` of type `ConfigType`, and `SERVICE` (a [`Service`]) says everything
//! else: its keys, agents, counters, links, control requests, status and CLI subcommands.
//! The same list generates the typed [`Config`](crate::config::Config) struct, the key
//! table the loader checks, the agents a lane may host, and what `corelane run` builds, in
//! this order.

use super::service::Service;

/// Calls `$callback!` with the table. The one definition of the list of services.
macro_rules! for_each_service {
    ($callback:ident) => {
        $callback! {
            /// `[control]`: the control socket (always on).
            control: crate::config::ControlConfig => crate::daemon::control_service::CONTROL,
            /// `[metrics]`: the counters file, lane gauges and the Prometheus endpoint.
            metrics: crate::config::MetricsConfig => crate::daemon::metrics_agent::METRICS,
            /// `[pool]`: the tensor pool driver.
            pool: crate::config::PoolSection => crate::pool::service::POOL,
            /// `[alloc]`: the alloc server (exact ledger of device-memory allocations).
            alloc: crate::config::AllocConfig => crate::alloc::service::ALLOC,
            /// `[frames]`: the frame worker (frame protocol v1 over TCP) and its detector.
            frames: crate::config::FramesConfig => crate::frames::service::FRAMES,
        }
    };
}
pub(crate) use for_each_service;

macro_rules! define_table {
    ($($(#[$doc:meta])* $field:ident: $config:ty => $service:expr,)*) => {
        /// Every service, in table order.
        pub static SERVICES: &[&dyn Service] = &[$(&$service),*];
    };
}
for_each_service!(define_table);

/// The service that provides `agent`.
pub fn owner_of(agent: &str) -> Option<&'static dyn Service> {
    SERVICES.iter().copied().find(|s| s.agents().contains(&agent))
}

/// Every agent name of every service, in table order.
pub fn all_agents() -> impl Iterator<Item = &'static str> {
    SERVICES.iter().flat_map(|s| s.agents().iter().copied())
}
