//! A connection's output: a queue of buffers written in order, and the lane's spare buffers.
//!
//! [`Output::copy`] appends an agent's bytes to the last buffer, in buffers of at most
//! [`COPY_CAP`] bytes taken from the lane's [`Spares`], so a steady stream of replies reuses the
//! same few buffers and no copy buffer ever grows past 64 KiB. [`Output::owned`] queues the
//! agent's own `Vec` as it is, without copying it. A written buffer goes back to the spares if
//! it is small and the spares are not full; otherwise it is freed, so a large message costs its
//! memory only until it is written.
//!
//! The io_uring backend hands the first buffers to the kernel ([`Output::start`]); those are
//! neither changed nor moved (their heap memory; the `Vec` headers may move) until their sends
//! complete, and new bytes go to a buffer behind them.

use std::collections::VecDeque;

/// Largest copy buffer: bytes beyond it start a new buffer.
pub(super) const COPY_CAP: usize = 64 * 1024;
/// Most memory the spare buffers of a lane keep (capacity).
pub(super) const SPARE_BYTES: usize = 256 * 1024;

/// Written buffers kept for reuse, at most [`SPARE_BYTES`] of them, none over [`COPY_CAP`].
#[derive(Debug, Default)]
pub(super) struct Spares {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

impl Spares {
    /// An empty buffer, reused if there is one.
    #[inline]
    pub(super) fn take(&mut self) -> Vec<u8> {
        match self.bufs.pop() {
            Some(buf) => {
                self.bytes -= buf.capacity();
                buf
            }
            None => Vec::new(),
        }
    }

    /// Keeps `buf` for reuse, or frees it if it is large or the spares are full.
    #[inline]
    pub(super) fn give(&mut self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        if capacity == 0 || capacity > COPY_CAP || self.bytes + capacity > SPARE_BYTES {
            return;
        }
        buf.clear();
        self.bytes += capacity;
        self.bufs.push(buf);
    }

    /// Memory held (capacity).
    pub(super) fn memory(&self) -> usize {
        self.bytes
    }
}

/// Output handed to a backend: bytes to copy into its buffers, or a buffer to take as it is.
pub(super) enum Bytes<'a> {
    Copy(&'a [u8]),
    Owned(Vec<u8>),
}

/// One connection's queued output.
#[derive(Debug, Default)]
pub(super) struct Output {
    bufs: VecDeque<Vec<u8>>,
    /// Bytes of the first buffer already written.
    written: usize,
    /// How many buffers from the front the kernel holds (io_uring sends in flight).
    in_flight: usize,
    /// Whether the last buffer takes more copied bytes: a copy buffer not in flight.
    open_back: bool,
    /// Bytes queued and not yet written.
    pending: usize,
}

impl Output {
    /// Bytes queued and not yet written.
    #[inline]
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// Whether nothing is queued.
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    /// Whether buffers are in flight.
    #[inline]
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues `bytes` for a descriptor whose flag `dirty` says whether it is listed for the
    /// end-of-pass flush; true when it was not (the caller lists it: once per flush).
    pub(super) fn queue(
        &mut self,
        bytes: Bytes<'_>,
        spares: &mut Spares,
        dirty: &mut bool,
    ) -> bool {
        match bytes {
            Bytes::Copy(data) => self.copy(data, spares),
            Bytes::Owned(buf) => self.owned(buf, spares),
        }
        !std::mem::replace(dirty, true)
    }

    /// Queues a copy of `data`.
    pub(super) fn copy(&mut self, mut data: &[u8], spares: &mut Spares) {
        while !data.is_empty() {
            if !self.open_back || self.bufs.len() == self.in_flight {
                self.bufs.push_back(spares.take());
                self.open_back = true;
            }
            // INVARIANT: a buffer was pushed above if there was none open.
            let back = self.bufs.back_mut().expect("an open back buffer");
            let room = COPY_CAP.saturating_sub(back.len());
            if room == 0 {
                self.open_back = false;
                continue;
            }
            let n = room.min(data.len());
            let need = back.len() + n;
            if need > back.capacity() {
                // Grow by doubling, never past COPY_CAP.
                let target = need.max(back.capacity() * 2).min(COPY_CAP).max(need);
                back.reserve_exact(target - back.len());
            }
            back.extend_from_slice(&data[..n]);
            self.pending += n;
            data = &data[n..];
        }
    }

    /// Queues `buf` as it is (no copy).
    pub(super) fn owned(&mut self, buf: Vec<u8>, spares: &mut Spares) {
        if buf.is_empty() {
            spares.give(buf);
            return;
        }
        self.pending += buf.len();
        self.bufs.push_back(buf);
        self.open_back = false;
    }

    /// The buffers not yet handed to the kernel, from the first: each with the bytes still to
    /// write (the first buffer may be partly written). Only when none is in flight.
    pub(super) fn unsent(&self) -> impl Iterator<Item = &[u8]> {
        let skip = if self.in_flight == 0 { 0 } else { self.bufs.len() };
        self.bufs.iter().enumerate().skip(skip).map(|(i, b)| {
            if i == 0 {
                &b[self.written..]
            } else {
                &b[..]
            }
        })
    }

    /// Bytes of the first buffer still to write (0 if there is none).
    #[inline]
    pub(super) fn front_rest(&self) -> usize {
        self.bufs.front().map_or(0, |b| b.len() - self.written)
    }

    /// The kernel now holds the first `n` buffers.
    pub(super) fn start(&mut self, n: usize) {
        debug_assert!(self.in_flight == 0 && n <= self.bufs.len());
        self.in_flight = n;
        if n == self.bufs.len() {
            self.open_back = false;
        }
    }

    /// The rest of the first buffer is written: frees it; returns the bytes that took.
    pub(super) fn finish_front(&mut self, spares: &mut Spares) -> usize {
        let Some(buf) = self.bufs.pop_front() else { return 0 };
        let bytes = buf.len() - self.written;
        self.pending -= bytes;
        self.written = 0;
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.bufs.is_empty() {
            self.open_back = false;
        }
        spares.give(buf);
        bytes
    }

    /// `n` more bytes of the first buffer are written (less than its rest).
    pub(super) fn advance(&mut self, n: usize) {
        debug_assert!(self.bufs.front().is_some_and(|b| self.written + n < b.len()));
        self.written += n;
        self.pending -= n;
    }

    /// The kernel gave the buffers in flight back without writing them all (a broken chain).
    pub(super) fn stop(&mut self) {
        self.in_flight = 0;
    }

    /// Drops every buffer the kernel does not hold (close): queued output is discarded.
    pub(super) fn discard(&mut self, spares: &mut Spares) {
        while self.bufs.len() > self.in_flight {
            if let Some(buf) = self.bufs.pop_back() {
                self.pending -= buf.len() - if self.bufs.is_empty() { self.written } else { 0 };
                spares.give(buf);
            }
        }
        if self.bufs.is_empty() {
            self.written = 0;
        }
        self.open_back = false;
    }

    /// Memory held (capacity of every queued buffer).
    pub(super) fn memory(&self) -> usize {
        self.bufs.iter().map(Vec::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(out: &mut Output, spares: &mut Spares) -> Vec<u8> {
        let mut got = Vec::new();
        while !out.is_empty() {
            got.extend_from_slice(out.unsent().next().unwrap());
            out.start(1);
            out.finish_front(spares);
        }
        got
    }

    #[test]
    fn copies_and_owned_buffers_go_out_in_order() {
        let mut spares = Spares::default();
        let mut out = Output::default();
        out.copy(b"ab", &mut spares);
        out.owned(b"CDE".to_vec(), &mut spares);
        out.copy(b"f", &mut spares);
        out.copy(b"g", &mut spares);
        assert_eq!(out.pending(), 7);
        assert_eq!(out.unsent().collect::<Vec<_>>(), [&b"ab"[..], b"CDE", b"fg"]);
        assert_eq!(drain(&mut out, &mut spares), b"abCDEfg");
        assert_eq!(out.pending(), 0);
    }

    #[test]
    fn a_large_copy_is_cut_into_small_buffers_that_are_reused() {
        let mut spares = Spares::default();
        let mut out = Output::default();
        let big: Vec<u8> = (0..(4 << 20)).map(|i| i as u8).collect();
        out.copy(&big, &mut spares);
        assert_eq!(out.bufs.len(), 64);
        assert!(out.bufs.iter().all(|b| b.capacity() <= COPY_CAP));
        assert_eq!(drain(&mut out, &mut spares), big);
        assert_eq!(out.memory(), 0);
        assert!(spares.memory() <= SPARE_BYTES, "{}", spares.memory());
        // The next reply reuses a spare: no allocation.
        let before = spares.memory();
        out.copy(b"small", &mut spares);
        assert!(spares.memory() < before);
    }

    #[test]
    fn bytes_in_flight_are_not_touched() {
        let mut spares = Spares::default();
        let mut out = Output::default();
        out.copy(b"first", &mut spares);
        out.start(1);
        let ptr = out.bufs[0].as_ptr();
        out.copy(b"second", &mut spares);
        assert_eq!(out.bufs.len(), 2, "new bytes go behind the buffer in flight");
        assert_eq!(out.bufs[0].as_ptr(), ptr);
        assert_eq!(out.unsent().count(), 0, "nothing to start while a send is in flight");
        out.discard(&mut spares);
        assert_eq!(out.bufs.len(), 1, "discard keeps what the kernel holds");
        assert_eq!(out.pending(), 5);
        out.advance(2);
        assert_eq!(out.finish_front(&mut spares), 3);
        assert_eq!(out.pending(), 0);
    }
}
