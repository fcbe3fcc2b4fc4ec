//! A request/response channel: one sealed memfd holding two rings of [`ByteRecord`]s, the
//! request ring (client → daemon) and the response ring (daemon → client), behind a
//! [`SegmentHeader`] that names the segment version and where the rings are.
//!
//! The records carry a byte stream: the control protocol's frames (the canonical 24-byte
//! header with its CRC32, then the protobuf body), cut into records of at most
//! [`RECORD_DATA`] bytes. A frame that fits starts and ends in one record (every request the
//! client library sends starts a record); a longer one spans records, and the receiver
//! reassembles it exactly as it would from a socket's reads. So the daemon decodes a
//! channel's requests with the same session, limits and errors as a socket's.
//!
//! Waiting, on each side:
//! - **the daemon** parks in its reactor, not on the ring: before parking, its lane arms the
//!   request ring's doorbell ([`ServerDuplex::arm_doorbell`]), and a client push that finds it
//!   armed ([`ClientDuplex::take_doorbell`]) writes one byte on the socket;
//! - **the client** spins on the response ring, or parks on its futex
//!   ([`ClientDuplex::wait`]); the daemon's push calls [`ServerDuplex::notify`], a `futex`
//!   wake only when the client sleeps.
//!
//! Segment layout (all little-endian; one definition, with size and offset tests):
//!
//! | offset | size | what |
//! |---|---|---|
//! | 0 | 64 | [`SegmentHeader`] |
//! | 64 | `region_len::<ByteRecord>(request_records)` | request ring |
//! | 64 + the above, rounded up to 64 | `region_len::<ByteRecord>(response_records)` | response ring |
//!
//! A hostile client can write anything anywhere in the segment. The daemon laid the header
//! and rings out and never reads the header again; every record length is checked
//! ([`RecordError`]), and impossible ring positions are a [`Corruption`] verdict. What the
//! daemon gets is the bytes of a stream, decoded like any outside bytes.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::mapping::{MapError, Mapping, MappingPart as Part, SizePolicy};
use crate::rings::region::Region;
use crate::rings::spsc::shm::{region_len, RegionError, ShmConsumer, ShmProducer};
use crate::rings::spsc::Corruption;
use crate::rings::wait::Parked;

/// `SegmentHeader::magic`: "CLIPCSEG".
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"CLIPCSEG");
/// The segment layout version this build speaks (seed 002's "v2" segments).
pub const SEGMENT_VERSION: u32 = 2;
/// Bytes of stream data one [`ByteRecord`] carries.
pub const RECORD_DATA: usize = 120;
/// Where the request ring starts.
pub const REQUESTS_OFFSET: usize = 64;

/// One record of a channel's byte stream: `len` bytes of `data` are the stream's next bytes.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ByteRecord {
    /// Bytes of `data` in use, `1..=RECORD_DATA`.
    pub len: U32,
    /// Zero.
    pub reserved: U32,
    /// The bytes.
    pub data: [u8; RECORD_DATA],
}

impl ByteRecord {
    /// The bytes this record carries, or why it is invalid.
    pub fn bytes(&self) -> Result<&[u8], RecordError> {
        let len = self.len.get() as usize;
        if len == 0 || len > RECORD_DATA {
            return Err(RecordError { len: self.len.get() });
        }
        Ok(&self.data[..len])
    }
}

const EMPTY_RECORD: ByteRecord =
    ByteRecord { len: U32::ZERO, reserved: U32::ZERO, data: [0; RECORD_DATA] };

/// A record whose length is not `1..=RECORD_DATA`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad channel record: expected a length of 1..={RECORD_DATA} bytes, got {len}")]
pub struct RecordError {
    /// The length read.
    pub len: u32,
}

/// The header at offset 0 of a segment, written by the daemon before the descriptor leaves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SegmentHeader {
    /// [`SEGMENT_MAGIC`], stored last.
    pub magic: U64,
    /// [`SEGMENT_VERSION`].
    pub version: U32,
    /// `size_of::<ByteRecord>()`.
    pub record_bytes: U32,
    /// Offset of the request ring.
    pub requests_offset: U64,
    /// Records of the request ring.
    pub request_records: U64,
    /// Offset of the response ring.
    pub responses_offset: U64,
    /// Records of the response ring.
    pub response_records: U64,
    /// Zero.
    pub reserved: [U64; 2],
}

/// Where each part of a segment of `request_records` and `response_records` lies:
/// `(responses_offset, total length)`, or `None` on overflow.
pub fn segment_layout(request_records: usize, response_records: usize) -> Option<(usize, usize)> {
    let requests = region_len::<ByteRecord>(request_records)?;
    let responses_offset = REQUESTS_OFFSET.checked_add(requests)?.checked_next_multiple_of(64)?;
    let total = responses_offset.checked_add(region_len::<ByteRecord>(response_records)?)?;
    Some((responses_offset, total))
}

/// The header's 8-byte word at `offset` (a multiple of 8 below 64) of `mapping`.
#[allow(unsafe_code)]
fn header_word(mapping: &Mapping, offset: usize) -> &AtomicU64 {
    assert!(offset + 8 <= REQUESTS_OFFSET, "header word {offset}");
    // SAFETY: the header (bytes 0..64) is accessed only through these words, and the rings'
    // parts start at REQUESTS_OFFSET: nothing else in this process touches these bytes.
    unsafe { mapping.word(offset) }.expect("segments are longer than their header")
}

/// The part `offset..offset + len` of a segment's mapping.
#[allow(unsafe_code)]
fn part(mapping: &Arc<Mapping>, offset: usize, len: usize) -> Option<Part> {
    // SAFETY: a segment's parts are its two rings, at REQUESTS_OFFSET and at the
    // responses offset of `segment_layout` (which starts past the end of the request ring),
    // each made once per segment, and the header lies before both: they never overlap.
    unsafe { Part::new(mapping, offset, len) }
}

fn store_header(mapping: &Mapping, header: &SegmentHeader) {
    let bytes = header.as_bytes();
    // The magic (word 0) goes last, with Release.
    for i in (1..8).rev() {
        let word = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        header_word(mapping, i * 8).store(word, Ordering::Relaxed);
    }
    let magic = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    // SYNC: Release pairs with the Acquire load of the magic in `load_header`: a client that
    // sees the magic sees the other words.
    header_word(mapping, 0).store(magic, Ordering::Release);
}

fn load_header(mapping: &Mapping) -> SegmentHeader {
    let mut bytes = [0u8; 64];
    // SYNC: Acquire pairs with the Release store of the magic in `store_header`.
    let magic = header_word(mapping, 0).load(Ordering::Acquire);
    bytes[..8].copy_from_slice(&magic.to_le_bytes());
    for i in 1..8 {
        let word = header_word(mapping, i * 8).load(Ordering::Relaxed);
        bytes[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
    }
    SegmentHeader::read_from_bytes(&bytes).expect("64 bytes")
}

/// Why a client could not open a channel segment. The texts are seed 002's.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The segment is of another layout version.
    #[error("protocol version mismatch: expected {SEGMENT_VERSION}, got {0}")]
    Version(u32),
    /// The segment could not be mapped or holds no valid channel.
    #[error("failed to open shared memory: {name}: {reason}")]
    Open {
        /// The segment's name.
        name: String,
        /// What was wrong.
        reason: String,
    },
}

/// The daemon's end: consumer of the request ring, producer of the response ring.
pub struct ServerDuplex {
    requests: ShmConsumer<ByteRecord, Part>,
    responses: ShmProducer<ByteRecord, Part>,
    batch: Batch,
}

/// Records being filled before one publication; kept between calls, so a push initialises
/// only what it uses (bytes past a record's `len` are left from an earlier push of this end:
/// what the peer reads there is its own channel's traffic).
type Batch = Box<[ByteRecord; BATCH]>;

/// Most records published at once.
const BATCH: usize = 16;

fn new_batch() -> Batch {
    Box::new([EMPTY_RECORD; BATCH])
}

impl ServerDuplex {
    /// Creates the segment `name` (a sealed memfd) with rings of `request_records` and
    /// `response_records` (powers of two), and returns it with the descriptor to send.
    pub fn create(
        name: &str,
        request_records: usize,
        response_records: usize,
    ) -> io::Result<(Self, OwnedFd)> {
        let invalid = |e: RegionError| io::Error::new(io::ErrorKind::InvalidInput, e);
        let (responses_offset, total) = segment_layout(request_records, response_records)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "channel too large"))?;
        let (mapping, fd) = Mapping::sealed_memfd(name, total)?;
        let mapping = Arc::new(mapping);
        let requests_len = responses_offset - REQUESTS_OFFSET;
        let part = |offset, len| {
            part(&mapping, offset, len).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "channel part outside its segment")
            })
        };
        let requests =
            ShmConsumer::create(part(REQUESTS_OFFSET, requests_len)?, request_records as u64)
                .map_err(invalid)?;
        let responses = ShmProducer::create(
            part(responses_offset, total - responses_offset)?,
            response_records as u64,
        )
        .map_err(invalid)?;
        let header = SegmentHeader {
            magic: SEGMENT_MAGIC.into(),
            version: SEGMENT_VERSION.into(),
            record_bytes: (size_of::<ByteRecord>() as u32).into(),
            requests_offset: (REQUESTS_OFFSET as u64).into(),
            request_records: (request_records as u64).into(),
            responses_offset: (responses_offset as u64).into(),
            response_records: (response_records as u64).into(),
            reserved: [U64::ZERO; 2],
        };
        store_header(&mapping, &header);
        Ok((Self { requests, responses, batch: new_batch() }, fd))
    }

    /// Appends the bytes of at most `max` request records to `out`; returns how many records,
    /// or the verdict on the client: a bad record or an impossible ring position (then the
    /// channel is to be closed).
    pub fn drain(&mut self, max: usize, out: &mut Vec<u8>) -> Result<usize, ChannelFault> {
        drain_bytes(&mut self.requests, max, out)
    }

    /// Pushes as much of `bytes` as the response ring has room for, in one publication;
    /// returns how many bytes went. Then [`notify`](Self::notify).
    pub fn push(&mut self, bytes: &[u8]) -> Result<usize, Corruption> {
        push_bytes(&mut self.responses, &mut self.batch, bytes)
    }

    /// Wakes the client if it sleeps on the response ring (a `futex` wake only then).
    pub fn notify(&self) -> bool {
        self.responses.notify()
    }

    /// Before the lane parks: `Ok(true)` armed and empty, `Ok(false)` requests are ready.
    pub fn arm_doorbell(&mut self) -> Result<bool, Corruption> {
        self.requests.arm_doorbell()
    }

    /// The lane woke: no more doorbells wanted.
    pub fn disarm_doorbell(&self) {
        self.requests.disarm_doorbell()
    }

    /// Whether requests wait.
    pub fn has_requests(&mut self) -> bool {
        !self.requests.is_empty()
    }
}

impl std::fmt::Debug for ServerDuplex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerDuplex").finish_non_exhaustive()
    }
}

/// Why the daemon gives up on a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelFault {
    /// A record with an impossible length.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// An impossible ring position.
    #[error("ring corrupt: {0}")]
    Ring(#[from] Corruption),
}

/// Appends the bytes of at most `max` records of `rx` to `out`; returns how many records, or
/// the verdict on the peer: a bad record (the records after it in this drain are dropped) or
/// an impossible ring position.
fn drain_bytes<R: Region>(
    rx: &mut ShmConsumer<ByteRecord, R>,
    max: usize,
    out: &mut Vec<u8>,
) -> Result<usize, ChannelFault> {
    let mut bad = None;
    let n = rx.drain(max, |record| match record.bytes() {
        Ok(bytes) if bad.is_none() => out.extend_from_slice(bytes),
        Ok(_) => {}
        Err(e) => {
            bad.get_or_insert(e);
        }
    })?;
    match bad {
        Some(e) => Err(ChannelFault::Record(e)),
        None => Ok(n),
    }
}

/// Pushes `bytes` as records, as many as fit now, `BATCH` per publication; returns the bytes
/// taken (those of the records published), or the verdict once the peer's position is
/// impossible.
fn push_bytes<R: Region>(
    tx: &mut ShmProducer<ByteRecord, R>,
    batch: &mut Batch,
    bytes: &[u8],
) -> Result<usize, Corruption> {
    let mut taken = 0;
    while taken < bytes.len() {
        let room = tx.slots().min(BATCH);
        if let Some(c) = tx.corruption() {
            return Err(c);
        }
        if room == 0 {
            break;
        }
        let chunks = bytes[taken..].chunks(RECORD_DATA).take(room);
        let mut n = 0;
        for (record, chunk) in batch.iter_mut().zip(chunks) {
            record.len = (chunk.len() as u32).into();
            record.data[..chunk.len()].copy_from_slice(chunk);
            n += 1;
        }
        // Fewer than `room` only if the peer's position turned impossible in between (the
        // next turn returns the verdict).
        let pushed = tx.push_slice(&batch[..n]);
        taken += batch[..pushed].iter().map(|r| r.len.get() as usize).sum::<usize>();
        if pushed < n {
            return tx.corruption().map_or(Ok(taken), Err);
        }
    }
    Ok(taken)
}

/// The client's end: producer of the request ring, consumer of the response ring.
pub struct ClientDuplex {
    requests: ShmProducer<ByteRecord, Part>,
    responses: ShmConsumer<ByteRecord, Part>,
    name: String,
    batch: Batch,
}

impl ClientDuplex {
    /// Maps the segment `fd` named `name` (as the grant said; for error texts) and attaches
    /// to both rings, after checking the header.
    pub fn attach(fd: OwnedFd, name: &str) -> Result<Self, OpenError> {
        let open = |reason: String| OpenError::Open { name: name.to_owned(), reason };
        let size = rustix::fs::fstat(&fd).map_err(|e| open(e.to_string()))?.st_size;
        let len = usize::try_from(size).unwrap_or(0);
        if len < REQUESTS_OFFSET {
            return Err(open(format!("segment of {len} bytes is too small for its header")));
        }
        let mapping = Mapping::from_fd(fd.as_fd(), SizePolicy::Sealed(len))
            .map_err(|e: MapError| open(e.to_string()))?;
        drop(fd);
        let header = load_header(&mapping);
        if header.magic.get() != SEGMENT_MAGIC {
            return Err(open(format!("not a channel segment (magic {:#x})", header.magic.get())));
        }
        if header.version.get() != SEGMENT_VERSION {
            return Err(OpenError::Version(header.version.get()));
        }
        if header.record_bytes.get() as usize != size_of::<ByteRecord>() {
            return Err(open(format!(
                "records of {} bytes, expected {}",
                header.record_bytes.get(),
                size_of::<ByteRecord>()
            )));
        }
        let (req, resp) = (header.request_records.get(), header.response_records.get());
        let layout = usize::try_from(req)
            .ok()
            .zip(usize::try_from(resp).ok())
            .and_then(|(a, b)| segment_layout(a, b))
            .filter(|&(off, total)| {
                header.requests_offset.get() == REQUESTS_OFFSET as u64
                    && header.responses_offset.get() == off as u64
                    && total <= len
            });
        let Some((responses_offset, total)) = layout else {
            return Err(open(format!(
                "rings of {req} and {resp} records do not fit a segment of {len} bytes"
            )));
        };
        let mapping = Arc::new(mapping);
        let part = |offset, len| {
            part(&mapping, offset, len).ok_or_else(|| open("ring outside the segment".to_owned()))
        };
        let requests =
            ShmProducer::attach(part(REQUESTS_OFFSET, responses_offset - REQUESTS_OFFSET)?)
                .map_err(|e| open(format!("request ring: {e}")))?;
        let responses = ShmConsumer::attach(part(responses_offset, total - responses_offset)?)
            .map_err(|e| open(format!("response ring: {e}")))?;
        Ok(Self { requests, responses, name: name.to_owned(), batch: new_batch() })
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Pushes as much of `bytes` as fits now; returns the bytes taken. Then
    /// [`take_doorbell`](Self::take_doorbell).
    pub fn push(&mut self, bytes: &[u8]) -> Result<usize, Corruption> {
        push_bytes(&mut self.requests, &mut self.batch, bytes)
    }

    /// `true` when the daemon's lane may be asleep and must be rung on the socket.
    pub fn take_doorbell(&self) -> bool {
        self.requests.take_doorbell()
    }

    /// Appends the bytes of the responses ready (at most `max` records) to `out`; returns the
    /// records taken. A bad record from the daemon is an error.
    pub fn pop(&mut self, max: usize, out: &mut Vec<u8>) -> Result<usize, ChannelFault> {
        drain_bytes(&mut self.responses, max, out)
    }

    /// Sleeps on the response ring's futex until a response is ready or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) -> Result<Parked, Corruption> {
        self.responses.wait(Some(timeout))
    }

    /// Whether the daemon gave up its end of the response ring.
    pub fn is_abandoned(&self) -> bool {
        self.responses.is_abandoned()
    }
}

impl std::fmt::Debug for ClientDuplex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDuplex").field("name", &self.name).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layouts_have_the_documented_sizes_and_offsets() {
        assert_eq!(size_of::<ByteRecord>(), 128);
        assert_eq!(std::mem::offset_of!(ByteRecord, len), 0);
        assert_eq!(std::mem::offset_of!(ByteRecord, data), 8);
        assert_eq!(size_of::<SegmentHeader>(), 64);
        assert_eq!(std::mem::offset_of!(SegmentHeader, version), 8);
        assert_eq!(std::mem::offset_of!(SegmentHeader, record_bytes), 12);
        assert_eq!(std::mem::offset_of!(SegmentHeader, requests_offset), 16);
        assert_eq!(std::mem::offset_of!(SegmentHeader, request_records), 24);
        assert_eq!(std::mem::offset_of!(SegmentHeader, responses_offset), 32);
        assert_eq!(std::mem::offset_of!(SegmentHeader, response_records), 40);
        let (off, total) = segment_layout(64, 256).unwrap();
        assert_eq!(off, 64 + region_len::<ByteRecord>(64).unwrap());
        assert_eq!(off % 64, 0);
        assert_eq!(total, off + region_len::<ByteRecord>(256).unwrap());
    }

    fn pair(req: usize, resp: usize) -> (ServerDuplex, ClientDuplex) {
        let (server, fd) = ServerDuplex::create("corelane_ipc_v2_test", req, resp).unwrap();
        let client = ClientDuplex::attach(fd, "corelane_ipc_v2_test").unwrap();
        (server, client)
    }

    #[test]
    fn bytes_cross_both_ways_in_records_and_long_messages_span_them() {
        let (mut server, mut client) = pair(16, 16);
        let message: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        assert_eq!(client.push(&message), Ok(1000));
        let mut got = Vec::new();
        assert_eq!(server.drain(64, &mut got), Ok(1000usize.div_ceil(RECORD_DATA)));
        assert_eq!(got, message);
        // The response ring holds 16 records: 16 * 120 bytes go now, the rest later.
        let long = vec![7u8; 3000];
        assert_eq!(server.push(&long), Ok(16 * RECORD_DATA));
        let mut out = Vec::new();
        assert_eq!(client.pop(usize::MAX, &mut out), Ok(16));
        assert_eq!(server.push(&long[16 * RECORD_DATA..]), Ok(3000 - 16 * RECORD_DATA));
        assert_eq!(client.pop(usize::MAX, &mut out), Ok(9));
        assert_eq!(out, long);
    }

    #[test]
    fn a_record_with_a_bad_length_is_a_fault_not_a_panic() {
        let (mut server, mut client) = pair(16, 16);
        let bad = ByteRecord { len: 121.into(), ..EMPTY_RECORD };
        assert_eq!(client.requests.push_slice(&[bad]), 1);
        let mut got = Vec::new();
        assert_eq!(server.drain(8, &mut got), Err(ChannelFault::Record(RecordError { len: 121 })));
        let zero = EMPTY_RECORD;
        assert_eq!(client.requests.push_slice(&[zero]), 1);
        assert!(matches!(server.drain(8, &mut got), Err(ChannelFault::Record(_))));
        assert!(got.is_empty());
    }

    #[test]
    fn a_segment_of_another_version_and_a_foreign_memfd_are_refused_with_seed_texts() {
        let (mapping, fd) = Mapping::sealed_memfd("corelane_ipc_v2_other", 65536).unwrap();
        let err = ClientDuplex::attach(fd.try_clone().unwrap(), "corelane_ipc_v2_other")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("failed to open shared memory: corelane_ipc_v2_other: "), "{err}");
        let mut header = SegmentHeader::read_from_bytes(&[0u8; 64]).unwrap();
        header.magic = SEGMENT_MAGIC.into();
        header.version = 3.into();
        store_header(&mapping, &header);
        let err = ClientDuplex::attach(fd, "corelane_ipc_v2_other").unwrap_err().to_string();
        assert_eq!(err, "protocol version mismatch: expected 2, got 3");
    }

    #[test]
    fn a_header_whose_rings_do_not_fit_is_refused() {
        let (_server, fd) = ServerDuplex::create("corelane_ipc_v2_fit", 16, 16).unwrap();
        let len = rustix::fs::fstat(&fd).unwrap().st_size as usize;
        let mapping = Mapping::from_fd(fd.as_fd(), SizePolicy::Sealed(len)).unwrap();
        let word = header_word(&mapping, 40);
        word.store(1 << 40, Ordering::Relaxed);
        let err = ClientDuplex::attach(fd, "corelane_ipc_v2_fit").unwrap_err().to_string();
        assert!(err.contains("do not fit a segment"), "{err}");
    }

    #[test]
    fn the_client_sleeps_on_the_futex_and_the_daemon_push_wakes_it() {
        let (mut server, mut client) = pair(16, 16);
        let waiter = std::thread::spawn(move || {
            let parked = client.wait(Duration::from_secs(10)).unwrap();
            let mut out = Vec::new();
            client.pop(8, &mut out).unwrap();
            (parked, out)
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(server.push(b"pong"), Ok(4));
        server.notify();
        let (parked, out) = waiter.join().unwrap();
        assert_eq!(parked, Parked::Ready);
        assert_eq!(out, b"pong");
    }
}
