//! Arbitrary control requests from hostile clients, through the daemon's decoder into a pool
//! driver (with a fake file backend and a fake clock): decoding must never panic, and the
//! driver must stay within its bounds and keep its invariants whatever it is fed.
//!
//! Input: records of `[kind, conn, dt, len, body[len]]`; `kind` picks a msg_type (32-38), a
//! tick or a connection close; `dt` advances the clock (in ms).
#![no_main]

use corelane::pool::config::PoolConfig;
use corelane::pool::driver::{Action, ClientKey, Driver, DriverLimits, FakeBackend, Notice};
use corelane::pool::requests::{decode_request, PoolRequest};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[driver]
stream_id_range = "20000-20003"
[shm]
base_dir = "/dev/shm"
[policies]
allow_dynamic_streams = true
default_profile = "small"
announce_period_ms = 10
lease_keepalive_interval_ms = 5
lease_expiry_grace_intervals = 2
node_id_reuse_cooldown_ms = 20
[profiles.small]
header_nslots = 4
payload_pools = [{ pool_id = 1, stride_bytes = 64 }]
[streams.a]
stream_id = 10000
profile = "small"
"#;

fuzz_target!(|data: &[u8]| {
    let config = PoolConfig::from_toml_str(CONFIG).expect("the fuzz config loads");
    let limits = DriverLimits { max_leases: 8, max_node_id_cooldowns: 8, max_dynamic_streams: 4 };
    let mut driver = Driver::with_limits(&config, FakeBackend::default(), 7, 1_000_000_000, limits)
        .expect("the fuzz driver builds");
    let mut now: u64 = 1_000_000_000;
    let mut rest = data;
    while rest.len() >= 4 {
        let (kind, conn, dt, len) = (rest[0], rest[1], rest[2], usize::from(rest[3]));
        rest = &rest[4..];
        let body = &rest[..len.min(rest.len())];
        rest = &rest[body.len()..];
        now += u64::from(dt) * 1_000_000;
        let key = ClientKey(u64::from(conn % 4));
        match kind % 10 {
            k @ 0..=6 => {
                let Ok(request) = decode_request(32 + u16::from(k), body) else { continue };
                match request {
                    PoolRequest::Attach(r) => driver.attach(key, &r, now),
                    PoolRequest::Detach(r) => driver.detach(key, &r, now),
                    PoolRequest::Keepalive(k) => {
                        driver.keepalive(key, &k, now);
                    }
                    _ => {}
                }
            }
            7 => driver.client_gone(key),
            8 => driver.shutdown(now),
            _ => driver.tick(now),
        }
        assert!(driver.lease_count() <= limits.max_leases);
        let mut last_revoke_stream = None;
        for action in driver.drain_actions() {
            match action {
                Action::Broadcast(Notice::LeaseRevoked(r)) => {
                    last_revoke_stream = Some(r.stream_id)
                }
                Action::Broadcast(Notice::Announce(a)) => {
                    assert_ne!(a.epoch, 0, "an announce has an epoch");
                    let _ = last_revoke_stream;
                }
                _ => {}
            }
        }
        for s in driver.stream_status() {
            assert!(s.producer.is_none() || s.epoch != 0, "a producer holds an epoch");
        }
    }
});
