//! corelane's endpoints: one header ring and one payload pool per channel, in two files of the
//! measurement's directory, laid out the way the tensor pool's driver lays out a stream.
//!
//! The whole of what the measurements use is [`lay_out`] (the driver's part), [`CorelaneTx`]
//! (`new`, `send`, `send_ringing`) and [`CorelaneRx`] (`new`, `recv`, `recv_parked`): the
//! calls the tensor pool's `Producer` and `Consumer` client libraries wrap, so swapping those
//! in later changes this file only.
//!
//! A channel with `wake` set also has the stream's `corelane.wake` sidecar
//! ([`WAKE_FILE_BYTES`] zero bytes, as the driver makes it), mapped read-write by both sides:
//! the producer rings its doorbell after each commit (what `pool::Claim::commit` does), the
//! consumer parks on it until `Subscriber::ready` (what `pool::Consumer::wait` does). Only
//! that channel's endpoints touch it; `send` and `recv` never do.

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use corelane::mapping::Mapping;
use corelane_rings::seqlock::{
    Poll, PoolSpec, Publisher, Stream, StreamSpec, Subscriber, TooLarge, WakeRegion,
    WAKE_FILE_BYTES,
};
use corelane_rings::shm::{self, Dtype, MajorOrder, ProgressUnit, TensorHeader};

use super::Channel;

/// The epoch of every stream here (one layout per measurement, never re-laid).
const EPOCH: u64 = 1;
/// The one payload pool's id.
const POOL_ID: u16 = 1;

/// The driver's part: creates the channel's two files, sizes them (`ftruncate`) to
/// `shm::header_ring_len` and `shm::payload_pool_len`, and lays the stream out
/// (`Stream::create`), and for a `wake` channel the zeroed `corelane.wake` beside them. Both
/// endpoints then open the files themselves.
pub fn lay_out(ch: &Channel) -> Result<(), String> {
    let spec = spec(ch);
    let (header, pool) = paths(ch);
    let (header_len, pool_len) = lens(&spec);
    let wake = ch.wake.then(|| (wake_path(ch), WAKE_FILE_BYTES));
    for (path, len) in [(header, header_len), (pool, pool_len)].into_iter().chain(wake) {
        let path = &path;
        let file =
            File::create_new(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        file.set_len(len as u64).map_err(|e| format!("cannot size {}: {e}", path.display()))?;
    }
    let (header, pool) = map(ch)?;
    let pid = u64::from(rustix::process::getpid().as_raw_nonzero().get().unsigned_abs());
    Stream::create(&spec, header, vec![pool], pid, super::now_ns())
        .map(drop)
        .map_err(|e| format!("cannot lay out stream {}: {e}", ch.index))
}

/// The producer: [`Publisher`] on the channel's stream, one frame per `send`.
#[derive(Debug)]
pub struct CorelaneTx {
    publisher: Publisher<Mapping>,
    tensor: TensorHeader,
    /// The `corelane.wake` doorbell of a `wake` channel.
    wake: Option<WakeRegion<Mapping>>,
}

impl CorelaneTx {
    /// Maps the channel's files (`Mapping::open`) and opens the stream for writing.
    pub fn new(ch: &Channel) -> Result<Self, String> {
        let publisher = Publisher::new(open(ch)?)
            .map_err(|e| format!("cannot write stream {}: {e}", ch.index))?;
        Ok(Self { publisher, tensor: tensor(ch.len)?, wake: open_wake(ch)? })
    }

    /// One frame: claim the next slot, copy `payload` into its pool slot, write the header
    /// (timestamp 0: the harness puts its own in the payload), commit.
    #[inline]
    pub fn send(&mut self, payload: &[u8]) -> Result<u64, TooLarge> {
        let mut claim = self.publisher.claim(payload.len() as u32)?;
        claim.write_payload(payload);
        Ok(claim.finish(self.tensor, 0, 0).commit())
    }

    /// [`send`](Self::send), then the doorbell rung, as `pool::Claim::commit` does: a fence
    /// and a load, and a futex wake when a consumer is parked. Without a wake file, `send`.
    #[inline]
    pub fn send_ringing(&mut self, payload: &[u8]) -> Result<u64, TooLarge> {
        let seq = self.send(payload)?;
        if let Some(wake) = &self.wake {
            wake.doorbell().ring();
        }
        Ok(seq)
    }
}

/// The consumer: [`Subscriber::poll`] copying each frame out into the caller's buffer, with
/// both seqlock checks and the header validation: the default read a user gets.
#[derive(Debug)]
pub struct CorelaneRx {
    subscriber: Subscriber<Mapping>,
    /// The `corelane.wake` doorbell of a `wake` channel.
    wake: Option<WakeRegion<Mapping>>,
}

impl CorelaneRx {
    /// Maps the channel's files and opens the stream for reading from seq 0.
    pub fn new(ch: &Channel) -> Result<Self, String> {
        Ok(Self { subscriber: Subscriber::new(open(ch)?), wake: open_wake(ch)? })
    }

    /// The next frame copied into `buf`, or why not (empty, or dropped and counted).
    #[inline]
    pub fn recv(&mut self, buf: &mut [u8]) -> Poll {
        self.subscriber.poll(buf)
    }

    /// Sleeps on the doorbell until `Subscriber::ready` (at most `slice`), as
    /// `pool::Consumer::wait` does, then [`recv`](Self::recv). Without a wake file, `recv`.
    #[inline]
    pub fn recv_parked(&mut self, buf: &mut [u8], slice: Duration) -> Poll {
        if let Some(wake) = &self.wake {
            let subscriber = &self.subscriber;
            wake.doorbell().park(|| subscriber.ready(), Some(slice));
        }
        self.subscriber.poll(buf)
    }
}

/// What the driver would announce for this channel: one pool whose stride is the payload
/// rounded up to 64 bytes, `ch.depth` slots.
fn spec(ch: &Channel) -> StreamSpec {
    let stride = ch.len.div_ceil(64) * 64;
    StreamSpec {
        epoch: EPOCH,
        stream_id: ch.index,
        nslots: ch.depth,
        pools: vec![PoolSpec {
            pool_id: POOL_ID,
            stride_bytes: u32::try_from(stride).expect("payloads here are at most 1 MiB"),
        }],
    }
}

fn lens(spec: &StreamSpec) -> (usize, usize) {
    let stride = spec.pools[0].stride_bytes;
    (
        shm::header_ring_len(spec.nslots) as usize,
        shm::payload_pool_len(spec.nslots, stride) as usize,
    )
}

fn paths(ch: &Channel) -> (PathBuf, PathBuf) {
    (
        ch.dir.join(format!("stream{}.header", ch.index)),
        ch.dir.join(format!("stream{}.pool", ch.index)),
    )
}

fn wake_path(ch: &Channel) -> PathBuf {
    ch.dir.join(format!("stream{}.wake", ch.index))
}

/// A `wake` channel's `corelane.wake`, mapped read-write (`Mapping::open`); else `None`.
fn open_wake(ch: &Channel) -> Result<Option<WakeRegion<Mapping>>, String> {
    if !ch.wake {
        return Ok(None);
    }
    let path = wake_path(ch);
    let mapping = Mapping::open(&path, WAKE_FILE_BYTES)
        .map_err(|e| format!("cannot map {}: {e}", path.display()))?;
    WakeRegion::open(mapping)
        .map(Some)
        .map_err(|e| format!("cannot open {} as a wake file: {e}", path.display()))
}

fn map(ch: &Channel) -> Result<(Mapping, Mapping), String> {
    let (header_len, pool_len) = lens(&spec(ch));
    let (header, pool) = paths(ch);
    let open = |path: &PathBuf, len| {
        Mapping::open(path, len).map_err(|e| format!("cannot map {}: {e}", path.display()))
    };
    Ok((open(&header, header_len)?, open(&pool, pool_len)?))
}

fn open(ch: &Channel) -> Result<Stream<Mapping>, String> {
    let (header, pool) = map(ch)?;
    Stream::open(&spec(ch), header, vec![pool])
        .map_err(|e| format!("cannot open stream {}: {e}", ch.index))
}

/// A one-dimensional byte tensor of `len` bytes.
fn tensor(len: usize) -> Result<TensorHeader, String> {
    let dims = [i32::try_from(len).map_err(|_| format!("{len} bytes is too long a tensor"))?];
    TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &dims, &[], ProgressUnit::None, 0)
        .map_err(|e| format!("cannot describe a {len}-byte tensor: {e}"))
}
