//! The Unix-socket endpoints: one connected `AF_UNIX` stream per channel (per direction),
//! non-blocking, both sides spinning on `EAGAIN`. A message is a little-endian `u32` length and
//! the payload, written with one `writev` (no staging copy) and read back exactly: the
//! length, then the payload, straight into the caller's buffer.
//!
//! A `wake` channel's consumer reads in blocking mode instead (the ordinary way to sleep
//! until data), with a read timeout of [`super::PARK_SLICE`] so that it still looks after the
//! other process between messages; the producer's end stays non-blocking (its writes never
//! fill the buffer there).
//!
//! The child is a fresh process, so it cannot inherit one end of a `socketpair` without
//! descriptor passing; the consumer binds a socket file in the measurement's directory and
//! the producer connects to it, which makes the same kernel object (a connected pair of
//! stream sockets).

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use super::Channel;
use crate::pair::Waiter;
use crate::spawn::Watch;

/// Between two attempts to connect or accept while the other side starts.
const RETRY: Duration = Duration::from_micros(200);

/// The producer's end.
#[derive(Debug)]
pub struct UnixTx {
    stream: UnixStream,
}

impl UnixTx {
    /// Connects to the consumer's socket, retrying until it exists (the watch bounds it).
    pub fn new(w: &Watch, ch: &Channel) -> Result<Self, String> {
        let path = path(ch);
        let stream = loop {
            match UnixStream::connect(&path) {
                Ok(stream) => break stream,
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
                {
                    w.check();
                    std::thread::sleep(RETRY);
                }
                Err(e) => return Err(format!("cannot connect to {}: {e}", path.display())),
            }
        };
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("cannot make a socket non-blocking: {e}"))?;
        Ok(Self { stream })
    }

    /// Writes the length and `payload` (one `writev`, then the rest if the socket buffer was
    /// full), spinning on `EAGAIN`.
    #[inline]
    pub fn send(&mut self, w: &Watch, payload: &[u8]) -> Result<(), String> {
        let prefix = (payload.len() as u32).to_le_bytes();
        let total = prefix.len() + payload.len();
        let (mut sent, mut turns) = (0, 0);
        while sent < total {
            let wrote = if sent < prefix.len() {
                self.stream.write_vectored(&[IoSlice::new(&prefix[sent..]), IoSlice::new(payload)])
            } else {
                self.stream.write(&payload[sent - prefix.len()..])
            };
            match wrote {
                Ok(0) => return Err("the socket accepted no bytes (peer gone?)".into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => w.turn(&mut turns),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("socket write failed: {e}")),
            }
        }
        Ok(())
    }
}

/// The consumer's end, and where it is in the message being read.
#[derive(Debug)]
pub struct UnixRx {
    stream: UnixStream,
    prefix: [u8; 4],
    /// Bytes of the current message read so far, length included.
    have: usize,
}

impl UnixRx {
    /// Binds the channel's socket and accepts the producer (the watch bounds the wait).
    pub fn new(w: &Watch, ch: &Channel) -> Result<Self, String> {
        let path = path(ch);
        let listener = UnixListener::bind(&path)
            .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot make a listener non-blocking: {e}"))?;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    w.check();
                    std::thread::sleep(RETRY);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("accept on {} failed: {e}", path.display())),
            }
        };
        let _ = std::fs::remove_file(&path);
        if ch.wake {
            // Blocking reads that time out with EAGAIN (WouldBlock), which `recv` returns as
            // `Ok(None)`.
            stream
                .set_nonblocking(false)
                .and_then(|()| stream.set_read_timeout(Some(super::PARK_SLICE)))
                .map_err(|e| format!("cannot make a socket blocking with a timeout: {e}"))?;
        } else {
            stream
                .set_nonblocking(true)
                .map_err(|e| format!("cannot make a socket non-blocking: {e}"))?;
        }
        Ok(Self { stream, prefix: [0; 4], have: 0 })
    }

    /// Reads on: `Ok(Some(len))` once a whole message is in `buf`, `Ok(None)` when the socket
    /// has nothing more now (`EAGAIN`; a part already read stays in `buf`, so pass the same
    /// buffer until a message completes). On a `wake` channel a read blocks, and `Ok(None)`
    /// means the read timed out.
    #[inline]
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, String> {
        loop {
            let read = if self.have < self.prefix.len() {
                self.stream.read(&mut self.prefix[self.have..])
            } else {
                let len = u32::from_le_bytes(self.prefix) as usize;
                let got = self.have - self.prefix.len();
                if got == len {
                    self.have = 0;
                    return Ok(Some(len));
                }
                let Some(rest) = buf.get_mut(got..len) else {
                    return Err(format!(
                        "a {len}-byte message does not fit the {}-byte buffer",
                        buf.len()
                    ));
                };
                self.stream.read(rest)
            };
            match read {
                Ok(0) => return Err("the peer closed the socket mid-stream".into()),
                Ok(n) => self.have += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("socket read failed: {e}")),
            }
        }
    }
}

fn path(ch: &Channel) -> PathBuf {
    ch.dir.join(format!("stream{}.sock", ch.index))
}
