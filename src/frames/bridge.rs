//! The pool bridge: the worker publishes every decoded frame into a tensor pool stream, so
//! local consumer processes (a model server, a recorder) read it zero-copy from shared
//! memory (`[frames] pool_stream`).
//!
//! Attaching as a producer is a blocking exchange with the pool driver over the daemon's
//! own control socket, which a lane must never wait for; a short-lived thread attaches
//! (retrying with back-off until the driver answers) and hands the [`Producer`] to the
//! detector lane through a one-slot channel. From then on the lane only claims and commits,
//! which never block; the producer's keeper thread does the keepalives.
//!
//! Each frame is one slot: the decoded picture as planar I420 (Y, then U, then V, tightly
//! packed), a `u8` tensor of dims `[height * 3 / 2, width]`, timestamped with the frame's
//! `ts_mono_ns` when the agent set one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};

use super::detector::Picture;
use crate::pool::{monotonic_ns, PoolOptions, Producer};
use crate::rings::shm::{Dtype, MajorOrder, ProgressUnit, TensorHeader};

/// Counters of the bridge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BridgeStats {
    /// Frames committed to the stream.
    pub published: u64,
    /// Frames not published: no lease yet or now, or no pool holds them.
    pub skipped: u64,
}

/// The detector lane's end of the bridge.
#[derive(Debug)]
pub struct Bridge {
    stream: u32,
    pending: Option<Receiver<Producer>>,
    producer: Option<Producer>,
    stats: BridgeStats,
    /// Set on drop: the attaching thread gives up.
    stop: Arc<AtomicBool>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Bridge {
    /// Starts attaching to `stream` through the daemon's control socket `socket`, in a thread.
    /// `allowed_dirs` are the directories the grant's files may be in (the pool's
    /// `allowed_base_dirs`).
    pub fn start(
        socket: PathBuf,
        stream: u32,
        allowed_dirs: Vec<PathBuf>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new().name("corelane-frames-bridge".into()).spawn(move || {
            let mut delay = Duration::from_millis(50);
            let mut warned = false;
            loop {
                let mut options = PoolOptions::new(&socket, stream);
                options.allowed_dirs.clone_from(&allowed_dirs);
                match Producer::attach(options) {
                    Ok(mut producer) => {
                        if let Err(e) = producer.spawn_keeper() {
                            tracing::warn!(stream, "frames: pool bridge keeper: {e}");
                        }
                        tracing::info!(stream, "frames: publishing accepted frames to the pool");
                        let _ = tx.send(producer); // the lane may be gone: then it drops
                        return;
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!(
                                stream,
                                "frames: pool bridge cannot attach yet: {e}; retrying"
                            );
                            warned = true;
                        }
                        // The lane's end dropped (the daemon stops): no one to attach for.
                        if stopped.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })?;
        Ok(Bridge {
            stream,
            pending: Some(rx),
            producer: None,
            stats: BridgeStats::default(),
            stop,
        })
    }

    /// The stream it publishes to.
    pub fn stream(&self) -> u32 {
        self.stream
    }

    /// Counters so far.
    pub fn stats(&self) -> BridgeStats {
        self.stats
    }

    /// Publishes `picture` (never blocks; without a lease the frame is skipped and counted).
    pub fn publish(&mut self, picture: &Picture, ts_mono_ns: u64) {
        if self.producer.is_none() {
            if let Some(rx) = &self.pending {
                match rx.try_recv() {
                    Ok(producer) => {
                        self.producer = Some(producer);
                        self.pending = None;
                    }
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => self.pending = None,
                }
            }
        }
        let Some(producer) = self.producer.as_mut() else {
            self.stats.skipped += 1;
            return;
        };
        let (w, h) = (picture.width as usize, picture.height as usize);
        let len = picture.y.len() + picture.u.len() + picture.v.len();
        let dims = [(h * 3 / 2) as i32, w as i32];
        let Ok(tensor) =
            TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &dims, &[], ProgressUnit::None, 0)
        else {
            self.stats.skipped += 1;
            return;
        };
        let Ok(mut claim) = producer.claim(len as u32) else {
            self.stats.skipped += 1;
            return;
        };
        claim.write_at(0, &picture.y);
        claim.write_at(picture.y.len(), &picture.u);
        claim.write_at(picture.y.len() + picture.u.len(), &picture.v);
        let ts = if ts_mono_ns == 0 { monotonic_ns() } else { ts_mono_ns };
        claim.commit(tensor, ts, 0);
        self.stats.published += 1;
    }
}
