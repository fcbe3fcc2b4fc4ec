//! Shared-memory channels between the daemon and its clients: one SPSC ring of fixed-size
//! records per segment, in memory the daemon owns, written by the client with no syscall.
//!
//! # The mechanism
//!
//! - **A segment is a sealed memfd the daemon creates** ([`ServerRx::create`], through
//!   [`Mapping::sealed_memfd`]): sized for one ring, then sealed with `F_SEAL_SHRINK |
//!   F_SEAL_GROW | F_SEAL_SEAL`. The client can write its bytes but never change its size, so
//!   no client can make the daemon fault (`SIGBUS`) on a page that is gone. The name (shown
//!   in `/proc/<pid>/fd`) is conventionally `corelane-<service>-<client pid>`.
//! - **One ring per segment.** The daemon lays the ring out and attaches as its *consumer*
//!   ([`ShmConsumer::create`]), leaving the producer role free; the client maps the
//!   descriptor ([`ClientTx::attach`], `SizePolicy::Sealed`: it checks the seals and the size
//!   before mapping) and attaches as the producer, which validates the ring header. A
//!   per-thread record ring is one segment per client thread; a request/response channel
//!   will be two.
//! - **The descriptor travels over the client's Unix stream socket** with `SCM_RIGHTS`
//!   ([`send_with_fd`] on the daemon's side, [`recv_with_fd`] on the client's), attached to
//!   the first byte of a message of the service's protocol that says what it is.
//! - **The socket is the doorbell and the liveness signal.** A daemon lane that found the
//!   ring empty arms it ([`ServerRx::arm_doorbell`]) before it parks in its reactor; a
//!   client whose push finds it armed ([`ClientTx::take_doorbell`] returns `true`) writes a
//!   byte (or a message: the service's protocol decides) on the socket, which ends the park.
//!   No lost wake-up: the arming and the push are a Dekker pair (`corelane_rings::wait`,
//!   model-checked with loom). When the socket hangs up, the client is gone: the daemon
//!   drains what it published ([`ServerRx::finish`]) and drops the segment. The producer
//!   role word names a pid, but it is the client's to write: liveness and identity come from
//!   the socket (hang-up, `SO_PEERCRED`), never from the segment.
//!
//! # What a hostile client can do
//!
//! It can write anything into the segment: garbage records (the daemon gets garbage
//! records, which the service validates like any outside bytes), an impossible `tail` (a
//! [`Corruption`] verdict: the ring is poisoned, reported on every later call, and the
//! service cuts the client off), any header, role or wait word (the daemon read the header
//! once, when it laid the ring out, and never trusts the other words: a forged wait word
//! only costs the client its own doorbells, or makes it ring for nothing), or punch holes in
//! the memfd (zeroes, within the sealed size). It can pass the descriptor on, or keep it
//! after it hangs up: the memory stays allocated, one ring's worth, until the last
//! descriptor and mapping are gone. It cannot resize the segment, make a drain take more
//! than its bound (or [`finish`](ServerRx::finish) more than one ring's capacity), make the
//! daemon read outside the mapping, or block it. What it costs the daemon is bounded: one
//! segment per ring the service granted.
//!
//! ```
//! use std::os::fd::AsFd;
//! use std::os::unix::net::UnixStream;
//! use corelane::channel::{recv_with_fd, send_with_fd, ClientTx, ServerRx};
//!
//! let (daemon_end, client_end) = UnixStream::pair()?;
//! // Daemon: one ring of 1024 records for this client, its descriptor sent with a message.
//! let (mut ring, fd) = ServerRx::<[u64; 2]>::create("corelane-doc-1", 1024)?;
//! send_with_fd(daemon_end.as_fd(), b"ring", fd.as_fd())?;
//! drop(fd); // the daemon's mapping keeps the memory; the client has its own descriptor
//! // Client: receives the descriptor, maps it, pushes without a syscall.
//! let mut buf = [0u8; 16];
//! let (n, fd) = recv_with_fd(client_end.as_fd(), &mut buf)?;
//! assert_eq!(&buf[..n], b"ring");
//! let mut tx = ClientTx::<[u64; 2]>::attach(fd.expect("a descriptor"))?;
//! tx.push([1, 2]).unwrap();
//! if tx.take_doorbell() {
//!     // the daemon sleeps: ring it with a byte on the socket
//! }
//! // Daemon: a bounded drain, in its lane.
//! let mut got = Vec::new();
//! assert_eq!(ring.drain(64, |r| got.push(r)), Ok(1));
//! assert_eq!(got, [[1, 2]]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod duplex;

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::mapping::{MapError, Mapping, SizePolicy};
use crate::rings::spsc::shm::{
    region_len, ConsumerStats, Holder, Record, RegionError, ShmConsumer, ShmProducer, ShmPushError,
};
use crate::rings::spsc::Corruption;

/// The daemon's end of a segment: the consumer of the ring a client writes.
/// `Send`, not `Sync`, not `Clone`.
pub struct ServerRx<T: Record> {
    rx: ShmConsumer<T, Mapping>,
}

impl<T: Record> ServerRx<T> {
    /// Creates a sealed memfd named `name` holding a ring of `capacity` records (a power of
    /// two), laid out and attached as its consumer. Returns the ring and the descriptor to
    /// pass to the client (see [`send_with_fd`]), which may be closed once sent.
    pub fn create(name: &str, capacity: usize) -> io::Result<(Self, OwnedFd)> {
        let invalid = |e: RegionError| io::Error::new(io::ErrorKind::InvalidInput, e);
        if !capacity.is_power_of_two() {
            return Err(invalid(RegionError::Capacity(capacity as u64)));
        }
        let len = region_len::<T>(capacity).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a ring of {capacity} records does not fit in the address space"),
            )
        })?;
        let (mapping, fd) = Mapping::sealed_memfd(name, len)?;
        let rx = ShmConsumer::create(mapping, capacity as u64).map_err(invalid)?;
        Ok((Self { rx }, fd))
    }

    /// Hands at most `max` records, oldest first, to `f`; returns how many, or the verdict
    /// once the client's `tail` was impossible (then the client is to be cut off). See
    /// [`ShmConsumer::drain`].
    #[inline]
    pub fn drain(&mut self, max: usize, f: impl FnMut(T)) -> Result<usize, Corruption> {
        self.rx.drain(max, f)
    }

    /// The last drain, once the client is gone (its socket hung up) or when the daemon
    /// exits: hands what the ring holds to `f` and gives the segment up. Takes at most one
    /// ring's capacity, whatever the client does meanwhile: a client that is still alive
    /// (and kept pushing) loses what it pushes after this call's one look at `tail`.
    pub fn finish(mut self, f: impl FnMut(T)) -> Result<usize, Corruption> {
        let capacity = self.rx.capacity();
        self.rx.drain(capacity, f)
    }

    /// Before the lane parks: asks the client to ring the doorbell on its next push, then
    /// looks once more. `Ok(true)`: armed and empty, park; `Ok(false)`: records are ready,
    /// drain them instead. [`disarm_doorbell`](Self::disarm_doorbell) after the park. See
    /// [`ShmConsumer::arm_doorbell`].
    #[inline]
    pub fn arm_doorbell(&mut self) -> Result<bool, Corruption> {
        self.rx.arm_doorbell()
    }

    /// After the park (or a look that found records): no doorbell wanted.
    #[inline]
    pub fn disarm_doorbell(&self) {
        self.rx.disarm_doorbell()
    }

    /// What the producer role word says: [`Holder::Free`] until the client attaches. The
    /// client writes this word: a claim, not an identity (see the module doc).
    pub fn producer(&self) -> Holder {
        self.rx.peer()
    }

    /// The pid the producer role word names while a producer is attached.
    pub fn producer_pid(&self) -> Option<u32> {
        match self.rx.peer() {
            Holder::Attached { pid } => Some(pid),
            _ => None,
        }
    }

    /// Whether a producer attached and then detached: once empty, the ring stays empty (a
    /// producer killed before it could detach leaves the role attached: its socket tells).
    pub fn is_abandoned(&self) -> bool {
        self.rx.is_abandoned()
    }

    /// Records ready right now.
    pub fn len(&mut self) -> usize {
        self.rx.len()
    }

    /// Whether no record is ready right now.
    pub fn is_empty(&mut self) -> bool {
        self.rx.is_empty()
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.rx.capacity()
    }

    /// The verdict, once the client's `tail` was impossible.
    pub fn corruption(&self) -> Option<Corruption> {
        self.rx.corruption()
    }

    /// Records and drains so far.
    pub fn stats(&self) -> ConsumerStats {
        self.rx.stats()
    }
}

impl<T: Record> std::fmt::Debug for ServerRx<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerRx").field("ring", &self.rx).finish()
    }
}

/// The client's end of a segment: the producer of a ring the daemon reads.
/// `Send`, not `Sync`, not `Clone`. Dropping it detaches (the daemon sees
/// [`ServerRx::is_abandoned`]) but rings no doorbell: every push is followed by
/// [`take_doorbell`](Self::take_doorbell), and the end of a client is its socket's hang-up.
pub struct ClientTx<T: Record> {
    tx: ShmProducer<T, Mapping>,
}

/// Why a client could not attach to a segment.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The descriptor is not a sealed memfd of a usable size, or could not be mapped.
    #[error(transparent)]
    Map(#[from] MapError),
    /// The segment holds no ring for records of this type, or its producer role is taken.
    #[error("shared-memory channel: {0}")]
    Ring(#[from] RegionError),
}

impl<T: Record> ClientTx<T> {
    /// Maps the segment `fd` (received from the daemon: it must be sealed against resizing,
    /// and is mapped whole) and attaches as the producer of its ring, after validating the
    /// ring header against `T`. The descriptor is closed; the mapping stays.
    pub fn attach(fd: OwnedFd) -> Result<Self, ChannelError> {
        let size = rustix::fs::fstat(&fd).map_err(io::Error::from).map_err(MapError::from)?.st_size;
        let len = usize::try_from(size).unwrap_or(0);
        let mapping = Mapping::from_fd(fd.as_fd(), SizePolicy::Sealed(len))?;
        drop(fd);
        Ok(Self { tx: ShmProducer::attach(mapping)? })
    }

    /// Pushes one record (plain stores and one release of `tail`; no syscall), or hands it
    /// back if the ring is full or the daemon's position is impossible. Then, or after a
    /// batch, [`take_doorbell`](Self::take_doorbell).
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), ShmPushError<T>> {
        self.tx.push(value)
    }

    /// Copies as many of `items` as fit and publishes them at once; returns how many.
    #[inline]
    pub fn push_slice(&mut self, items: &[T]) -> usize {
        self.tx.push_slice(items)
    }

    /// Call after a push or a batch: `true` when the daemon armed its doorbell and may be
    /// asleep, and the caller must ring it on the socket (at most one `true` per arming).
    /// A fence and a load otherwise.
    #[inline]
    pub fn take_doorbell(&self) -> bool {
        self.tx.take_doorbell()
    }

    /// Free slots right now.
    pub fn slots(&mut self) -> usize {
        self.tx.slots()
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    /// The verdict, once the daemon's `head` was impossible.
    pub fn corruption(&self) -> Option<Corruption> {
        self.tx.corruption()
    }

    /// Whether the daemon gave its end up.
    pub fn is_abandoned(&self) -> bool {
        self.tx.is_abandoned()
    }
}

impl<T: Record> std::fmt::Debug for ClientTx<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTx").field("ring", &self.tx).finish()
    }
}

/// Sends `bytes` with the descriptor `fd` attached (`SCM_RIGHTS`) on a Unix stream socket,
/// without blocking (`MSG_DONTWAIT`) and without `SIGPIPE` (`MSG_NOSIGNAL`). Call it when the
/// connection has nothing else queued: the descriptor travels with the first byte, and the
/// whole of `bytes` must go in this one call. A small message on a Unix stream socket either
/// goes whole or fails with `WouldBlock` (then nothing was sent: try again later); a short
/// write, which only a message larger than the socket buffer can cause, is an error after
/// which the connection must be dropped (the descriptor and part of the message went).
/// `bytes` must not be empty (a descriptor cannot travel alone on a stream). Returns
/// `bytes.len()`.
pub fn send_with_fd(socket: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a descriptor must travel with at least one byte, got an empty message",
        ));
    }
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    // The buffer is sized for exactly this message.
    let pushed = control.push(SendAncillaryMessage::ScmRights(&fds));
    debug_assert!(pushed, "cmsg_space!(ScmRights(1)) holds one descriptor");
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    let sent = rustix::net::sendmsg(socket, &[IoSlice::new(bytes)], &mut control, flags)?;
    if sent != bytes.len() {
        return Err(io::Error::other(format!(
            "short write of a message with a descriptor: sent {sent} of {} bytes",
            bytes.len()
        )));
    }
    Ok(sent)
}

/// Descriptors one [`recv_with_fd`] accepts in its control buffer: the one it keeps and a
/// few extra it closes. More is a truncated control message (the kernel closes what did not
/// fit), an error.
pub const RECV_FDS: usize = 4;

/// Receives bytes into `buf` from a Unix stream socket, and the descriptor that came with
/// them, if any (`MSG_CMSG_CLOEXEC`: it is close-on-exec from the start). Blocks or not as
/// the socket does. `Ok((0, None))` is the end of the stream (with a non-empty `buf`).
/// Extra descriptors a peer attached are closed; a control message the kernel had to
/// truncate (more descriptors than [`RECV_FDS`] or other ancillary data) is an error, and
/// everything it brought is closed. The bytes read are the caller's to parse: a descriptor
/// arrives with the first byte of the message it was sent with.
pub fn recv_with_fd(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(RECV_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut kept = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                // The first is kept; every other one is closed as it drops here.
                kept.get_or_insert(fd);
            }
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "truncated control message: the peer sent more than {RECV_FDS} descriptors \
                 or other ancillary data"
            ),
        ));
    }
    Ok((msg.bytes, kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    use crate::rings::spsc::shm::{
        Role, PRODUCER_ROLE_OFFSET, SLOTS_OFFSET, TAIL_OFFSET, WAIT_OFFSET,
    };

    type Rec = [u64; 2];

    /// Daemon creates, sends the descriptor; client receives and attaches.
    fn connected(capacity: usize) -> (ServerRx<Rec>, ClientTx<Rec>, OwnedFd) {
        let (daemon, client) = UnixStream::pair().unwrap();
        let (ring, fd) = ServerRx::<Rec>::create("corelane-test-channel", capacity).unwrap();
        assert_eq!(send_with_fd(daemon.as_fd(), b"hello", fd.as_fd()).unwrap(), 5);
        let mut buf = [0u8; 64];
        let (n, received) = recv_with_fd(client.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let tx = ClientTx::<Rec>::attach(received.expect("a descriptor came")).unwrap();
        (ring, tx, fd)
    }

    #[test]
    fn a_round_trip_over_a_socket_pair() {
        let (mut ring, mut tx, _fd) = connected(8);
        assert_eq!(ring.producer_pid(), Some(std::process::id()));
        assert!(!ring.is_abandoned());
        assert_eq!(tx.capacity(), 8);
        tx.push([1, !1]).unwrap();
        assert_eq!(tx.push_slice(&[[2, !2], [3, !3]]), 2);
        assert_eq!(ring.len(), 3);
        let mut got = Vec::new();
        assert_eq!(ring.drain(2, |r| got.push(r)), Ok(2));
        assert_eq!(ring.drain(8, |r| got.push(r)), Ok(1));
        assert_eq!(got, [[1, !1], [2, !2], [3, !3]]);
        assert!(ring.is_empty());
        // Full: the record comes back.
        assert_eq!(tx.push_slice(&[[0, 0]; 8]), 8);
        assert!(matches!(tx.push([9, 9]), Err(ShmPushError::Full([9, 9]))));
        drop(tx);
        assert!(ring.is_abandoned());
        assert_eq!(ring.finish(|_| {}), Ok(8), "finish takes what is left");
    }

    #[test]
    fn a_second_client_cannot_attach_and_a_wrong_record_type_is_refused() {
        let (ring, fd) = ServerRx::<Rec>::create("corelane-test-channel", 8).unwrap();
        let err = ClientTx::<u32>::attach(fd.try_clone().unwrap()).unwrap_err();
        assert!(matches!(err, ChannelError::Ring(RegionError::RecordMismatch { .. })), "{err}");
        let _tx = ClientTx::<Rec>::attach(fd.try_clone().unwrap()).unwrap();
        let err = ClientTx::<Rec>::attach(fd).unwrap_err();
        assert!(
            matches!(err, ChannelError::Ring(RegionError::RoleTaken { role: Role::Producer, .. })),
            "{err}"
        );
        assert_eq!(ring.producer_pid(), Some(std::process::id()));
    }

    #[test]
    fn a_never_attached_ring_is_free_not_abandoned() {
        let (mut ring, _fd) = ServerRx::<Rec>::create("corelane-test-channel", 4).unwrap();
        assert_eq!(ring.producer(), Holder::Free);
        assert_eq!(ring.producer_pid(), None);
        assert!(!ring.is_abandoned());
        assert_eq!(ring.drain(4, |_| panic!("no record")), Ok(0));
        assert!(ServerRx::<Rec>::create("corelane-test-channel", 6).is_err());
        assert!(ServerRx::<Rec>::create("corelane-test-channel", 0).is_err());
    }

    #[test]
    fn the_client_cannot_resize_the_segment() {
        let (_ring, _tx, fd) = connected(8);
        let len = region_len::<Rec>(8).unwrap() as u64;
        assert_eq!(rustix::fs::ftruncate(&fd, 64).unwrap_err(), rustix::io::Errno::PERM);
        assert_eq!(rustix::fs::ftruncate(&fd, len * 2).unwrap_err(), rustix::io::Errno::PERM);
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size as u64, len);
    }

    #[test]
    fn an_unsealed_descriptor_is_refused() {
        let plain =
            rustix::fs::memfd_create("corelane-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&plain, 4096).unwrap();
        let err = ClientTx::<Rec>::attach(plain).unwrap_err();
        assert!(matches!(err, ChannelError::Map(MapError::NotSealed { .. })), "{err}");
        let (daemon, _client) = UnixStream::pair().unwrap();
        let err = ClientTx::<Rec>::attach(daemon.into()).unwrap_err();
        assert!(matches!(err, ChannelError::Map(MapError::Io(_))), "a socket: {err}");
    }

    /// Garbage written (through the descriptor, as any process that holds it can) into the
    /// header, the slots, the role and wait words and `tail`: the daemon's end gets garbage
    /// records or a verdict, never a panic, a hang or an access out of bounds.
    #[test]
    fn garbage_in_the_segment_is_garbage_records_or_a_verdict() {
        let (mut ring, mut tx, fd) = connected(8);
        tx.push_slice(&[[1, 1], [2, 2]]);
        let scribble = |offset: usize, value: u64| {
            rustix::io::pwrite(&fd, &value.to_le_bytes(), offset as u64).unwrap();
        };
        // Header and role words: the daemon read its header once and does not look again.
        for offset in (0..64).step_by(8) {
            scribble(offset, 0xdead_beef_dead_beef);
        }
        scribble(PRODUCER_ROLE_OFFSET, 0x1234_5678_9abc_def0);
        assert_eq!(ring.producer(), Holder::Invalid(0x1234_5678_9abc_def0));
        assert_eq!(ring.producer_pid(), None);
        scribble(WAIT_OFFSET, u64::MAX);
        scribble(SLOTS_OFFSET, 0x4141_4141);
        let mut got = Vec::new();
        assert_eq!(ring.drain(8, |r| got.push(r)), Ok(2));
        assert_eq!(got, [[0x4141_4141, 1], [2, 2]], "garbage in, garbage out");
        assert_eq!(ring.arm_doorbell(), Ok(true), "the wait word is rewritten, not trusted");
        ring.disarm_doorbell();
        // An impossible tail: the verdict, for good.
        scribble(TAIL_OFFSET, 1 << 50);
        let verdict = ring.drain(8, |_| panic!("no record from a corrupt ring")).unwrap_err();
        assert_eq!(verdict.seen, 1 << 50);
        assert_eq!(ring.arm_doorbell(), Err(verdict));
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.corruption(), Some(verdict));
        assert_eq!(ring.finish(|_| panic!("no record")), Err(verdict));
    }

    #[test]
    fn the_doorbell_rings_exactly_once_when_armed() {
        let (mut ring, mut tx, _fd) = connected(8);
        tx.push([1, 1]).unwrap();
        assert!(!tx.take_doorbell(), "not armed");
        assert_eq!(ring.arm_doorbell(), Ok(false), "a record is ready");
        assert!(!tx.take_doorbell(), "a refused arming is undone");
        assert_eq!(ring.drain(8, |_| {}), Ok(1));
        assert_eq!(ring.arm_doorbell(), Ok(true));
        tx.push([2, 2]).unwrap();
        assert!(tx.take_doorbell(), "armed and empty: ring");
        tx.push([3, 3]).unwrap();
        assert!(!tx.take_doorbell(), "exactly once per arming");
        ring.disarm_doorbell();
        assert_eq!(ring.drain(8, |_| {}), Ok(2));
    }

    /// The doorbell end to end: a client thread pushes and rings on the socket when told;
    /// the daemon arms and then blocks reading the socket. No lost wake-up, no timeout.
    #[test]
    fn a_daemon_asleep_on_the_socket_is_woken_by_the_client() {
        use std::io::{Read, Write};
        let (mut daemon, mut client) = UnixStream::pair().unwrap();
        let (mut ring, fd) = ServerRx::<Rec>::create("corelane-test-channel", 16).unwrap();
        send_with_fd(daemon.as_fd(), b"r", fd.as_fd()).unwrap();
        let writer = std::thread::spawn(move || {
            let mut buf = [0u8; 8];
            let (_, fd) = recv_with_fd(client.as_fd(), &mut buf).unwrap();
            let mut tx = ClientTx::<Rec>::attach(fd.unwrap()).unwrap();
            let mut rings = 0;
            for n in 0..2000u64 {
                while tx.push([n, !n]).is_err() {
                    std::thread::yield_now();
                }
                if tx.take_doorbell() {
                    client.write_all(b"!").unwrap();
                    rings += 1;
                }
            }
            rings
        });
        daemon.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let (mut next, mut woken) = (0u64, 0);
        while next < 2000 {
            let drained = ring
                .drain(16, |r| {
                    assert_eq!(r, [next, !next]);
                    next += 1;
                })
                .unwrap();
            if drained == 0 && ring.arm_doorbell().unwrap() {
                let mut byte = [0u8; 1];
                daemon.read_exact(&mut byte).expect("woken by the client, not timed out");
                woken += 1;
                ring.disarm_doorbell();
            }
        }
        let rings = writer.join().unwrap();
        assert!(woken <= rings, "{woken} wakes, {rings} rings");
    }

    #[test]
    fn extra_descriptors_are_closed_and_a_truncated_control_message_is_an_error() {
        let (daemon, client) = UnixStream::pair().unwrap();
        // A pipe's write end as the extra descriptor: once every copy is closed, its read
        // end sees the end of the stream.
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        let (_ring, memfd) = ServerRx::<Rec>::create("corelane-test-channel", 4).unwrap();
        let send = |fds: &[BorrowedFd<'_>]| {
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
            rustix::net::sendmsg(&daemon, &[IoSlice::new(b"x")], &mut control, SendFlags::empty())
                .unwrap();
        };
        send(&[memfd.as_fd(), write_end.as_fd()]);
        let mut buf = [0u8; 8];
        let (n, fd) = recv_with_fd(client.as_fd(), &mut buf).unwrap();
        assert_eq!(n, 1);
        assert!(ClientTx::<Rec>::attach(fd.unwrap()).is_ok(), "the first one is kept");
        // Too many: an error, and everything received closed.
        send(&[write_end.as_fd(); 16]);
        let err = recv_with_fd(client.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        drop(write_end);
        let mut byte = [0u8; 1];
        assert_eq!(rustix::io::read(&read_end, &mut byte), Ok(0), "no copy of the write end left");
        // No descriptor, and the end of the stream.
        rustix::net::send(&daemon, b"plain", SendFlags::empty()).unwrap();
        assert_eq!(recv_with_fd(client.as_fd(), &mut buf).unwrap().1.map(|_| ()), None);
        drop(daemon);
        assert_eq!(recv_with_fd(client.as_fd(), &mut buf).unwrap().0, 0);
        assert!(send_with_fd(client.as_fd(), b"", memfd.as_fd()).is_err(), "empty message");
        let err = send_with_fd(client.as_fd(), b"x", memfd.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "no SIGPIPE: {err}");
    }
}
