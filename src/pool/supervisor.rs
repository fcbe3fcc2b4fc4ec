//! The supervisor: answers ConsumerHello with ConsumerConfig and keeps the consumer registry
//! (spec §6, conformance items 59-60). Sans-IO like the driver: inputs carry `now_ns`.
//!
//! For a valid Hello the answer is:
//! - `use_shm = supports_shm && !force_no_shm`;
//! - `mode = force_mode` when set, else the Hello's mode;
//! - per-consumer descriptor and control streams only when `per_consumer_enabled` and the
//!   consumer asked (channel non-empty AND stream ID non-zero). The channel is the configured
//!   one, or the consumer's when none is configured; the ID is `base + consumer_id % range`, or
//!   the consumer's when the base is 0. Otherwise the request is declined: empty channel, ID 0.
//! - `payload_fallback_uri` as configured.
//!
//! A Hello that has exactly one of channel and stream ID for a stream, an unknown mode, or that
//! would add a consumer to a full registry (`consumer_capacity`) is refused: no ConsumerConfig.
//!
//! Departures from the C supervisor: two live consumers never get the same per-consumer ID (C
//! hands out `base + id % range` even when it collides); on a collision the next free ID of the
//! range is taken, and a full range declines. A consumer keeps its ID across Hellos. The
//! consumer is stale, and dropped by [`Supervisor::tick`], once `consumer_stale_ms` passed
//! without a Hello or QosConsumer from it (C sweeps once per stale interval, so it may take up
//! to twice as long). Progress-hint aggregation is not implemented yet.
//!
//! ```
//! use corelane::pool::config::PoolConfig;
//! use corelane::pool::driver::{ConsumerHello, Mode};
//! use corelane::pool::supervisor::Supervisor;
//!
//! let config = PoolConfig::embedded_default().unwrap();
//! let mut supervisor = Supervisor::new(config.supervisor.as_ref().unwrap());
//! let hello = ConsumerHello {
//!     stream_id: 10000,
//!     consumer_id: 5,
//!     supports_shm: true,
//!     supports_progress: false,
//!     mode: Mode::Stream.to_wire(),
//!     max_rate_hz: 0,
//!     expected_layout_version: 1,
//!     progress_interval_us: None,
//!     progress_bytes_delta: None,
//!     progress_major_delta_units: None,
//!     descriptor_stream_id: 0,
//!     control_stream_id: 0,
//!     descriptor_channel: String::new(),
//!     control_channel: String::new(),
//! };
//! let answer = supervisor.hello(&hello, 0).unwrap();
//! assert!(answer.use_shm);
//! assert_eq!(answer.descriptor_stream_id, 0); // nothing asked, nothing assigned
//! ```

use std::collections::{BTreeSet, HashMap};

use crate::pool::config::SupervisorSection;
use crate::pool::driver::{ConsumerConfig, ConsumerHello, Mode, QosConsumer};

/// Longest channel a Hello may carry (the URI limit of the SHM spec), in bytes.
pub const MAX_CHANNEL_BYTES: usize = 4096;

/// Why a Hello got no ConsumerConfig.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Exactly one of descriptor channel and descriptor stream ID was given.
    #[error(
        "invalid descriptor request: expected channel and stream id both set or both empty, \
         got channel {channel:?} and stream id {stream_id}"
    )]
    DescriptorRequest {
        /// The channel given.
        channel: String,
        /// The stream ID given.
        stream_id: u32,
    },
    /// Exactly one of control channel and control stream ID was given.
    #[error(
        "invalid control request: expected channel and stream id both set or both empty, \
         got channel {channel:?} and stream id {stream_id}"
    )]
    ControlRequest {
        /// The channel given.
        channel: String,
        /// The stream ID given.
        stream_id: u32,
    },
    /// A channel longer than [`MAX_CHANNEL_BYTES`].
    #[error("channel too long: expected at most {MAX_CHANNEL_BYTES} bytes, got {len}")]
    ChannelTooLong {
        /// Its length.
        len: usize,
    },
    /// The Hello's mode is not STREAM or RATE_LIMITED.
    #[error("invalid mode: expected 1 (STREAM) or 2 (RATE_LIMITED), got {0}")]
    Mode(u8),
    /// A new consumer while the registry holds `consumer_capacity` consumers.
    #[error("consumer registry full: expected fewer than {capacity} consumers, got {capacity}")]
    RegistryFull {
        /// `consumer_capacity`.
        capacity: usize,
    },
}

/// A per-consumer stream: the channel and stream ID assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The channel.
    pub channel: String,
    /// The stream ID (non-zero).
    pub stream_id: u32,
}

/// A consumer dropped as stale; its per-consumer publications should be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleConsumer {
    /// The consumer.
    pub consumer_id: u32,
    /// The stream it consumed.
    pub stream_id: u32,
    /// Its descriptor stream, if it had one.
    pub descriptor: Option<Assignment>,
    /// Its control stream, if it had one.
    pub control: Option<Assignment>,
}

/// One registered consumer, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStatus {
    /// The consumer.
    pub consumer_id: u32,
    /// The stream it consumes.
    pub stream_id: u32,
    /// The mode it was given.
    pub mode: Mode,
    /// Its max rate (0 = unlimited).
    pub max_rate_hz: u32,
    /// Whether it wants FrameProgress.
    pub supports_progress: bool,
    /// Last Hello or QosConsumer (CLOCK_MONOTONIC ns).
    pub last_seen_ns: u64,
    /// Its descriptor stream.
    pub descriptor: Option<Assignment>,
    /// Its control stream.
    pub control: Option<Assignment>,
}

/// Which per-consumer stream.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Descriptor,
    Control,
}

/// The supervisor state machine. See the module documentation.
#[derive(Debug)]
pub struct Supervisor {
    config: SupervisorSection,
    stale_ns: u64,
    consumers: HashMap<u32, ConsumerStatus>,
    /// (last_seen_ns, consumer_id) of every consumer.
    by_last_seen: BTreeSet<(u64, u32)>,
    /// Assigned descriptor stream ID -> consumer.
    descriptor_ids: HashMap<u32, u32>,
    /// Assigned control stream ID -> consumer.
    control_ids: HashMap<u32, u32>,
}

impl Supervisor {
    /// A supervisor with an empty registry.
    pub fn new(config: &SupervisorSection) -> Self {
        Supervisor {
            config: config.clone(),
            stale_ns: u64::from(config.consumer_stale_ms) * 1_000_000,
            consumers: HashMap::new(),
            by_last_seen: BTreeSet::new(),
            descriptor_ids: HashMap::new(),
            control_ids: HashMap::new(),
        }
    }

    /// Handles a ConsumerHello: registers or refreshes the consumer and returns its
    /// ConsumerConfig, or why there is none.
    pub fn hello(
        &mut self,
        hello: &ConsumerHello,
        now_ns: u64,
    ) -> Result<ConsumerConfig, HelloError> {
        let descriptor_request = request(&hello.descriptor_channel, hello.descriptor_stream_id)
            .map_err(|()| HelloError::DescriptorRequest {
                channel: hello.descriptor_channel.clone(),
                stream_id: hello.descriptor_stream_id,
            })?;
        let control_request =
            request(&hello.control_channel, hello.control_stream_id).map_err(|()| {
                HelloError::ControlRequest {
                    channel: hello.control_channel.clone(),
                    stream_id: hello.control_stream_id,
                }
            })?;
        for channel in [&hello.descriptor_channel, &hello.control_channel] {
            if channel.len() > MAX_CHANNEL_BYTES {
                return Err(HelloError::ChannelTooLong { len: channel.len() });
            }
        }
        let hello_mode = Mode::from_wire(hello.mode).ok_or(HelloError::Mode(hello.mode))?;
        let capacity = self.config.consumer_capacity as usize;
        let previous = self.consumers.get(&hello.consumer_id);
        if previous.is_none() && self.consumers.len() >= capacity {
            return Err(HelloError::RegistryFull { capacity });
        }
        let (previous_descriptor, previous_control) =
            previous.map_or((None, None), |c| (c.descriptor.clone(), c.control.clone()));

        let descriptor = self.assign(
            Kind::Descriptor,
            descriptor_request,
            hello.consumer_id,
            previous_descriptor,
        );
        let control =
            self.assign(Kind::Control, control_request, hello.consumer_id, previous_control);
        let mode = Mode::from_wire(self.config.force_mode).unwrap_or(hello_mode);

        if let Some(old) = self.consumers.get(&hello.consumer_id) {
            self.by_last_seen.remove(&(old.last_seen_ns, hello.consumer_id));
        }
        self.by_last_seen.insert((now_ns, hello.consumer_id));
        self.consumers.insert(
            hello.consumer_id,
            ConsumerStatus {
                consumer_id: hello.consumer_id,
                stream_id: hello.stream_id,
                mode,
                max_rate_hz: hello.max_rate_hz,
                supports_progress: hello.supports_progress,
                last_seen_ns: now_ns,
                descriptor: descriptor.clone(),
                control: control.clone(),
            },
        );

        let (descriptor_channel, descriptor_stream_id) = split(descriptor);
        let (control_channel, control_stream_id) = split(control);
        Ok(ConsumerConfig {
            stream_id: hello.stream_id,
            consumer_id: hello.consumer_id,
            use_shm: hello.supports_shm && !self.config.force_no_shm,
            mode,
            descriptor_stream_id,
            control_stream_id,
            payload_fallback_uri: self.config.payload_fallback_uri.clone(),
            descriptor_channel,
            control_channel,
        })
    }

    /// Handles a QosConsumer: a registered consumer counts as seen now. Returns whether the
    /// consumer was registered.
    pub fn qos(&mut self, qos: &QosConsumer, now_ns: u64) -> bool {
        let Some(consumer) = self.consumers.get_mut(&qos.consumer_id) else { return false };
        self.by_last_seen.remove(&(consumer.last_seen_ns, qos.consumer_id));
        consumer.last_seen_ns = now_ns.max(consumer.last_seen_ns);
        self.by_last_seen.insert((consumer.last_seen_ns, qos.consumer_id));
        true
    }

    /// Drops every consumer unheard of for `consumer_stale_ms` (none when it is 0) and returns
    /// them, so their per-consumer publications can be closed.
    pub fn tick(&mut self, now_ns: u64) -> Vec<StaleConsumer> {
        let mut stale = Vec::new();
        if self.stale_ns == 0 {
            return stale;
        }
        while let Some(&(seen, consumer_id)) = self.by_last_seen.first() {
            if seen.saturating_add(self.stale_ns) > now_ns {
                break;
            }
            self.by_last_seen.pop_first();
            let Some(consumer) = self.consumers.remove(&consumer_id) else { continue };
            self.release(Kind::Descriptor, consumer_id, consumer.descriptor.as_ref());
            self.release(Kind::Control, consumer_id, consumer.control.as_ref());
            stale.push(StaleConsumer {
                consumer_id,
                stream_id: consumer.stream_id,
                descriptor: consumer.descriptor,
                control: consumer.control,
            });
        }
        stale
    }

    /// When the next consumer goes stale, if any (and the sweep is on).
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.stale_ns == 0 {
            return None;
        }
        self.by_last_seen.first().map(|&(seen, _)| seen.saturating_add(self.stale_ns))
    }

    /// Registered consumers.
    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// One consumer's entry.
    pub fn consumer(&self, consumer_id: u32) -> Option<&ConsumerStatus> {
        self.consumers.get(&consumer_id)
    }

    /// The per-consumer stream for one kind, or `None` to decline. `requested` is the Hello's
    /// (channel, ID) when it asked; `previous` the consumer's current assignment.
    fn assign(
        &mut self,
        kind: Kind,
        requested: Option<(&str, u32)>,
        consumer_id: u32,
        previous: Option<Assignment>,
    ) -> Option<Assignment> {
        let (channel, base, range) = match kind {
            Kind::Descriptor => (
                &self.config.per_consumer_descriptor_channel,
                self.config.per_consumer_descriptor_base,
                self.config.per_consumer_descriptor_range,
            ),
            Kind::Control => (
                &self.config.per_consumer_control_channel,
                self.config.per_consumer_control_base,
                self.config.per_consumer_control_range,
            ),
        };
        let assignment = match (self.config.per_consumer_enabled, requested) {
            (true, Some((asked_channel, asked_id))) => {
                let channel =
                    if channel.is_empty() { asked_channel.to_owned() } else { channel.clone() };
                let stream_id = if base == 0 {
                    Some(asked_id)
                } else if range == 0 {
                    None // the config refuses this; a hand-built section declines
                } else {
                    let kept = previous.as_ref().map(|p| p.stream_id).filter(|id| {
                        (base..=base.saturating_add(range - 1)).contains(id)
                            && self.ids(kind).get(id).is_none_or(|&owner| owner == consumer_id)
                    });
                    kept.or_else(|| self.probe(kind, base, range, consumer_id))
                };
                match stream_id {
                    Some(stream_id) if stream_id != 0 && !channel.is_empty() => {
                        Some(Assignment { channel, stream_id })
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if previous.as_ref().map(|p| p.stream_id) != assignment.as_ref().map(|a| a.stream_id) {
            self.release(kind, consumer_id, previous.as_ref());
        }
        if let Some(a) = &assignment {
            self.ids_mut(kind).insert(a.stream_id, consumer_id);
        }
        assignment
    }

    /// `base + consumer_id % range`, or the next ID of the range no other consumer holds.
    fn probe(&self, kind: Kind, base: u32, range: u32, consumer_id: u32) -> Option<u32> {
        let ids = self.ids(kind);
        let start = consumer_id % range;
        // Live consumers hold at most consumers.len() IDs, so that many + 1 probes find a free
        // one if the range has one.
        let probes = u64::from(range).min(self.consumers.len() as u64 + 1);
        (0..probes)
            // The offset is below range, so it fits u32; the config checked that base + range
            // - 1 fits too (a hand-built section that overflows just finds fewer IDs).
            .filter_map(|i| base.checked_add(((u64::from(start) + i) % u64::from(range)) as u32))
            .find(|id| ids.get(id).is_none_or(|&owner| owner == consumer_id))
    }

    fn release(&mut self, kind: Kind, consumer_id: u32, assignment: Option<&Assignment>) {
        if let Some(a) = assignment {
            let ids = self.ids_mut(kind);
            if ids.get(&a.stream_id) == Some(&consumer_id) {
                ids.remove(&a.stream_id);
            }
        }
    }

    fn ids(&self, kind: Kind) -> &HashMap<u32, u32> {
        match kind {
            Kind::Descriptor => &self.descriptor_ids,
            Kind::Control => &self.control_ids,
        }
    }

    fn ids_mut(&mut self, kind: Kind) -> &mut HashMap<u32, u32> {
        match kind {
            Kind::Descriptor => &mut self.descriptor_ids,
            Kind::Control => &mut self.control_ids,
        }
    }
}

/// The request rule: both set → asked; both empty → not asked; exactly one → invalid.
fn request(channel: &str, stream_id: u32) -> Result<Option<(&str, u32)>, ()> {
    match (channel.is_empty(), stream_id == 0) {
        (false, false) => Ok(Some((channel, stream_id))),
        (true, true) => Ok(None),
        _ => Err(()),
    }
}

fn split(assignment: Option<Assignment>) -> (String, u32) {
    assignment.map_or((String::new(), 0), |a| (a.channel, a.stream_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::config::PoolConfig;

    const MS: u64 = 1_000_000;
    const CHANNEL: &str = "aeron:ipc?term-length=4m";

    /// The example config's supervisor (per-consumer on: 31000+1000, 32000+1000), with edits.
    fn supervisor(edit: impl FnOnce(&mut SupervisorSection)) -> Supervisor {
        let text = include_str!("../../config/pool-example.toml");
        let config = PoolConfig::from_toml_str(text).unwrap();
        let mut section = config.supervisor.unwrap();
        edit(&mut section);
        Supervisor::new(&section)
    }

    fn hello(consumer_id: u32) -> ConsumerHello {
        ConsumerHello {
            stream_id: 10000,
            consumer_id,
            supports_shm: true,
            supports_progress: false,
            mode: Mode::Stream.to_wire(),
            max_rate_hz: 0,
            expected_layout_version: 1,
            progress_interval_us: None,
            progress_bytes_delta: None,
            progress_major_delta_units: None,
            descriptor_stream_id: 0,
            control_stream_id: 0,
            descriptor_channel: String::new(),
            control_channel: String::new(),
        }
    }

    /// A Hello asking for both per-consumer streams.
    fn asking(consumer_id: u32) -> ConsumerHello {
        ConsumerHello {
            descriptor_stream_id: 5,
            control_stream_id: 6,
            descriptor_channel: "aeron:udp?endpoint=consumer:1".into(),
            control_channel: "aeron:udp?endpoint=consumer:2".into(),
            ..hello(consumer_id)
        }
    }

    #[test]
    fn c59_hello_with_half_a_request_is_rejected_without_config() {
        let mut s = supervisor(|_| {});
        let cases = [
            (CHANNEL, 0, "", 0, "descriptor"),
            ("", 31001, "", 0, "descriptor"),
            ("", 0, CHANNEL, 0, "control"),
            ("", 0, "", 32001, "control"),
        ];
        for (dc, did, cc, cid, which) in cases {
            let h = ConsumerHello {
                descriptor_channel: dc.into(),
                descriptor_stream_id: did,
                control_channel: cc.into(),
                control_stream_id: cid,
                ..hello(9)
            };
            let err = s.hello(&h, 0).unwrap_err();
            match (&err, which) {
                (HelloError::DescriptorRequest { .. }, "descriptor")
                | (HelloError::ControlRequest { .. }, "control") => {}
                _ => panic!("case {dc:?}/{did}/{cc:?}/{cid}: got {err}"),
            }
            assert!(err.to_string().contains("expected channel and stream id both set"));
        }
        // A refused Hello registers nothing.
        assert_eq!(s.consumer_count(), 0);
    }

    #[test]
    fn c60_per_consumer_ids_modes_and_shm() {
        // Enabled: base + id % range on the configured channel, for both kinds.
        let mut s = supervisor(|_| {});
        let config = s.hello(&asking(1234), 0).unwrap();
        assert_eq!(config.descriptor_stream_id, 31000 + 1234 % 1000);
        assert_eq!(config.descriptor_channel, CHANNEL);
        assert_eq!(config.control_stream_id, 32000 + 1234 % 1000);
        assert_eq!(config.control_channel, CHANNEL);
        assert!(config.use_shm);
        assert_eq!(config.mode, Mode::Stream);
        assert_eq!((config.stream_id, config.consumer_id), (10000, 1234));
        assert_eq!(config.payload_fallback_uri, "");

        // Enabled but not asked: declined.
        let config = s.hello(&hello(77), 0).unwrap();
        assert_eq!((config.descriptor_stream_id, config.descriptor_channel.as_str()), (0, ""));
        assert_eq!((config.control_stream_id, config.control_channel.as_str()), (0, ""));

        // Disabled: declined even when asked.
        let mut s = supervisor(|c| c.per_consumer_enabled = false);
        let config = s.hello(&asking(1234), 0).unwrap();
        assert_eq!((config.descriptor_stream_id, config.descriptor_channel.as_str()), (0, ""));
        assert_eq!((config.control_stream_id, config.control_channel.as_str()), (0, ""));

        // force_no_shm, force_mode, payload_fallback_uri.
        let mut s = supervisor(|c| {
            c.force_no_shm = true;
            c.force_mode = Mode::RateLimited.to_wire();
            c.payload_fallback_uri = "bridge://host:9000".into();
        });
        let config = s.hello(&hello(1), 0).unwrap();
        assert!(!config.use_shm);
        assert_eq!(config.mode, Mode::RateLimited);
        assert_eq!(config.payload_fallback_uri, "bridge://host:9000");

        // Without force: the consumer's own choices.
        let mut s = supervisor(|_| {});
        let h =
            ConsumerHello { supports_shm: false, mode: Mode::RateLimited.to_wire(), ..hello(2) };
        let config = s.hello(&h, 0).unwrap();
        assert!(!config.use_shm);
        assert_eq!(config.mode, Mode::RateLimited);
    }

    #[test]
    fn unset_channel_and_base_take_the_consumers_request() {
        let mut s = supervisor(|c| {
            c.per_consumer_descriptor_channel = String::new();
            c.per_consumer_descriptor_base = 0;
            c.per_consumer_descriptor_range = 0;
        });
        let config = s.hello(&asking(3), 0).unwrap();
        assert_eq!(config.descriptor_channel, "aeron:udp?endpoint=consumer:1");
        assert_eq!(config.descriptor_stream_id, 5);
        // The control stream still follows its configured base.
        assert_eq!(config.control_stream_id, 32003);
    }

    #[test]
    fn colliding_assignments_probe_the_next_free_id_and_a_full_range_declines() {
        let mut s = supervisor(|c| {
            c.per_consumer_descriptor_range = 3;
            c.per_consumer_control_range = 3;
        });
        // 1 % 3 == 4 % 3 == 7 % 3 == 1.
        let a = s.hello(&asking(1), 0).unwrap();
        let b = s.hello(&asking(4), 0).unwrap();
        let c = s.hello(&asking(7), 0).unwrap();
        assert_eq!(a.descriptor_stream_id, 31001);
        assert_eq!(b.descriptor_stream_id, 31002);
        assert_eq!(c.descriptor_stream_id, 31000);
        assert_eq!(
            (a.control_stream_id, b.control_stream_id, c.control_stream_id),
            (32001, 32002, 32000)
        );
        // The range is full: a fourth consumer is declined, but still configured.
        let d = s.hello(&asking(10), 0).unwrap();
        assert_eq!((d.descriptor_stream_id, d.descriptor_channel.as_str()), (0, ""));
        assert_eq!(d.control_stream_id, 0);
        // A repeated Hello keeps the consumer's ID.
        assert_eq!(s.hello(&asking(4), 1).unwrap().descriptor_stream_id, 31002);
        // When consumer 1 goes stale, its ID is free again for consumer 10.
        s.qos(&qos(4), 5000 * MS);
        s.qos(&qos(7), 5000 * MS);
        s.qos(&qos(10), 5000 * MS);
        let gone = s.tick(5000 * MS);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].consumer_id, 1);
        assert_eq!(gone[0].descriptor.as_ref().map(|a| a.stream_id), Some(31001));
        let d = s.hello(&asking(10), 5001 * MS).unwrap();
        assert_eq!(d.descriptor_stream_id, 31001);
    }

    #[test]
    fn a_consumer_that_stops_asking_frees_its_id() {
        let mut s = supervisor(|c| c.per_consumer_descriptor_range = 1);
        assert_eq!(s.hello(&asking(1), 0).unwrap().descriptor_stream_id, 31000);
        assert_eq!(s.hello(&asking(2), 0).unwrap().descriptor_stream_id, 0);
        assert_eq!(s.hello(&hello(1), 1).unwrap().descriptor_stream_id, 0);
        assert_eq!(s.hello(&asking(2), 2).unwrap().descriptor_stream_id, 31000);
    }

    fn qos(consumer_id: u32) -> QosConsumer {
        QosConsumer {
            stream_id: 10000,
            consumer_id,
            epoch: 1,
            last_seq_seen: 0,
            drops_gap: 0,
            drops_late: 0,
            mode: 1,
        }
    }

    #[test]
    fn registry_full_rejects_a_new_consumer_but_not_a_known_one() {
        let mut s = supervisor(|c| c.consumer_capacity = 2);
        s.hello(&hello(1), 0).unwrap();
        s.hello(&hello(2), 0).unwrap();
        let err = s.hello(&hello(3), 0).unwrap_err();
        assert_eq!(err, HelloError::RegistryFull { capacity: 2 });
        assert!(err.to_string().contains("registry full"));
        assert!(s.hello(&hello(2), 1).is_ok());
        assert_eq!(s.consumer_count(), 2);
    }

    #[test]
    fn stale_sweep_after_consumer_stale_ms_without_hello_or_qos() {
        let mut s = supervisor(|_| {}); // 5000 ms
        s.hello(&hello(1), 0).unwrap();
        s.hello(&hello(2), 0).unwrap();
        assert_eq!(s.poll_timeout(), Some(5000 * MS));
        // QoS refreshes consumer 2; an unknown consumer's QoS registers nothing.
        assert!(s.qos(&qos(2), 3000 * MS));
        assert!(!s.qos(&qos(99), 3000 * MS));
        assert!(s.tick(5000 * MS - 1).is_empty());
        let gone = s.tick(5000 * MS);
        assert_eq!(gone.iter().map(|g| g.consumer_id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.consumer_count(), 1);
        assert_eq!(s.poll_timeout(), Some(8000 * MS));
        assert!(s.tick(8000 * MS - 1).is_empty());
        assert_eq!(s.tick(8000 * MS).len(), 1);
        assert_eq!(s.consumer_count(), 0);
        assert_eq!(s.poll_timeout(), None);
        // A full registry frees up once consumers go stale.
        let mut s = supervisor(|c| c.consumer_capacity = 1);
        s.hello(&hello(1), 0).unwrap();
        assert!(s.hello(&hello(2), 1).is_err());
        s.tick(5000 * MS);
        assert!(s.hello(&hello(2), 5000 * MS).is_ok());
    }

    #[test]
    fn stale_ms_zero_never_sweeps() {
        let mut s = supervisor(|c| c.consumer_stale_ms = 0);
        s.hello(&hello(1), 0).unwrap();
        assert_eq!(s.poll_timeout(), None);
        assert!(s.tick(u64::MAX).is_empty());
        assert_eq!(s.consumer_count(), 1);
    }

    #[test]
    fn invalid_mode_and_long_channel_are_rejected() {
        let mut s = supervisor(|_| {});
        let err = s.hello(&ConsumerHello { mode: 0, ..hello(1) }, 0).unwrap_err();
        assert_eq!(err, HelloError::Mode(0));
        let long = ConsumerHello {
            descriptor_channel: format!("aeron:{}", "x".repeat(MAX_CHANNEL_BYTES)),
            descriptor_stream_id: 1,
            ..hello(1)
        };
        assert!(matches!(s.hello(&long, 0), Err(HelloError::ChannelTooLong { .. })));
        assert_eq!(s.consumer_count(), 0);
    }
}
