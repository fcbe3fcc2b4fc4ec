//! Frame sources of the edge agent: a synthetic generator (moving shapes, for demos and
//! benchmarks) and raw NV12/I420 files of back-to-back frames (looping at EOF).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use std::time::Duration;

pub use super::core::FrameInfo;
use super::core::{plane_layout, RawFormat};
use crate::frames::detector::Picture;
use crate::frames::vision::yuv::{pack, rgb_to_picture, ColorSpec};
use crate::pool::{Consumer, PoolOptions, Wait};
use crate::rings::shm::Dtype;

/// Why a source could not produce a frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be opened or read.
    #[error("frame file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's size is not a whole number of frames.
    #[error(
        "frame file {path}: size {size} bytes is not a multiple of the frame size {frame} bytes \
         (--size and --format set the frame size)"
    )]
    NotWholeFrames {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The bytes of one frame.
        frame: usize,
    },
    /// The pool stream could not be attached.
    #[error("pool stream {stream}: {why}")]
    Pool {
        /// The stream.
        stream: u32,
        /// Why.
        why: String,
    },
    /// The file holds no frame.
    #[error("frame file {path}: empty, expected raw frames of {frame} bytes each")]
    Empty {
        /// The file.
        path: PathBuf,
        /// The bytes of one frame.
        frame: usize,
    },
}

/// Something that captures frames into a reused buffer.
pub trait FrameSource {
    /// Captures the next frame into `buf` (its contents replaced, its capacity reused);
    /// `None` when no new frame is there yet (a pool stream whose producer has not committed
    /// one since: the capture is skipped).
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<Option<FrameInfo>, SourceError>;
}

/// Capture timestamps now: (monotonic ns, wall-clock ns).
pub fn timestamps() -> (u64, u64) {
    let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let mono = mono.tv_sec as u64 * 1_000_000_000 + mono.tv_nsec as u64;
    let utc = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (mono, utc)
}

fn info(format: RawFormat, width: u32, height: u32) -> FrameInfo {
    let (planes, nplanes, _) = plane_layout(format, width, height);
    let (ts_mono_ns, ts_utc_ns) = timestamps();
    FrameInfo { format, width, height, planes, nplanes, ts_mono_ns, ts_utc_ns }
}

/// Moving rectangles on a textured background ([`vision::synthetic`](crate::frames::vision::synthetic)),
/// deterministic for a seed: the worker's motion detector finds and tracks them.
#[derive(Debug)]
pub struct Synthetic {
    format: RawFormat,
    width: u32,
    height: u32,
    scene: crate::frames::vision::synthetic::Synthetic,
}

impl Synthetic {
    /// Rectangles moving in `width` x `height` frames (even dimensions) in `format`, placed
    /// as `seed` decides.
    pub fn new(format: RawFormat, width: u32, height: u32, seed: u64) -> Self {
        let objects = (width as usize * height as usize / 40_000).clamp(1, 4);
        let scene = crate::frames::vision::synthetic::Synthetic::new(width, height, objects, seed);
        Self { format, width, height, scene }
    }

    /// The xyxy boxes of the rectangles in the last frame.
    pub fn truth(&self) -> &[[f32; 4]] {
        self.scene.truth()
    }
}

impl FrameSource for Synthetic {
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<Option<FrameInfo>, SourceError> {
        let (planes, nplanes) = self.scene.frame(self.format, buf);
        let (ts_mono_ns, ts_utc_ns) = timestamps();
        Ok(Some(FrameInfo {
            format: self.format,
            width: self.width,
            height: self.height,
            planes,
            nplanes,
            ts_mono_ns,
            ts_utc_ns,
        }))
    }
}

/// Raw frames of one size back to back in a file, read in a loop.
#[derive(Debug)]
pub struct RawFile {
    path: PathBuf,
    file: File,
    format: RawFormat,
    width: u32,
    height: u32,
    frame_bytes: usize,
}

impl RawFile {
    /// Opens `path`; its size must be a non-zero multiple of one frame's bytes.
    pub fn open(
        path: &Path,
        format: RawFormat,
        width: u32,
        height: u32,
    ) -> Result<Self, SourceError> {
        let io = |source| SourceError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let (_, _, frame_bytes) = plane_layout(format, width, height);
        if size == 0 {
            return Err(SourceError::Empty { path: path.to_owned(), frame: frame_bytes });
        }
        if size % frame_bytes as u64 != 0 {
            return Err(SourceError::NotWholeFrames {
                path: path.to_owned(),
                size,
                frame: frame_bytes,
            });
        }
        Ok(Self { path: path.to_owned(), file, format, width, height, frame_bytes })
    }
}

impl FrameSource for RawFile {
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<Option<FrameInfo>, SourceError> {
        buf.clear();
        buf.resize(self.frame_bytes, 0);
        let io = |source| SourceError::Io { path: self.path.clone(), source };
        let mut filled = 0;
        let mut rewound = false;
        while filled < self.frame_bytes {
            match self.file.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 && !rewound => {
                    self.file.seek(SeekFrom::Start(0)).map_err(io)?;
                    rewound = true;
                }
                Ok(0) => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file shrank while reading",
                    );
                    return Err(io(e));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(Some(info(self.format, self.width, self.height)))
    }
}

/// The most payload bytes a pool frame may have (1920x1080 RGB fits).
pub const MAX_POOL_FRAME: usize = 8 << 20;

/// How long one capture waits for the producer's next commit.
const POOL_WAIT: Duration = Duration::from_millis(5);

/// Frames of a local tensor pool stream (`--source pool:STREAM`): a camera producer's, or
/// another worker's bridge. A `u8` tensor `[height * 3 / 2, width]` is taken as raw 4:2:0
/// in `--format`; a `u8` tensor `[height, width, 3]` as RGB, converted to `--format`. Other
/// shapes are skipped (counted, one warning).
#[derive(Debug)]
pub struct PoolSource {
    consumer: Consumer,
    stream: u32,
    format: RawFormat,
    payload: Vec<u8>,
    picture: Picture,
    skipped: u64,
}

impl PoolSource {
    /// Attaches as a consumer of `stream` through the daemon's control socket `socket`.
    pub fn attach(socket: &Path, stream: u32, format: RawFormat) -> Result<Self, SourceError> {
        let mut consumer = Consumer::attach(PoolOptions::new(socket, stream))
            .map_err(|e| SourceError::Pool { stream, why: e.to_string() })?;
        consumer
            .spawn_keeper()
            .map_err(|e| SourceError::Pool { stream, why: format!("keeper thread: {e}") })?;
        Ok(Self {
            consumer,
            stream,
            format,
            payload: vec![0; MAX_POOL_FRAME],
            picture: Picture::default(),
            skipped: 0,
        })
    }

    /// Frames skipped for their shape.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

impl FrameSource for PoolSource {
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<Option<FrameInfo>, SourceError> {
        let Ok(frame) = self.consumer.recv(&mut self.payload, POOL_WAIT, Wait::Futex) else {
            return Ok(None);
        };
        let data = &self.payload[..frame.payload_len.min(self.payload.len())];
        let (ts_mono_ns, ts_utc_ns) = timestamps();
        let shape = &frame.tensor.shape;
        let even = |w: u32, h: u32| w > 0 && h > 0 && w.is_multiple_of(2) && h.is_multiple_of(2);
        let (width, height) = match (shape.dtype, shape.dims()) {
            (Dtype::Uint8, &[rows, w]) if rows.is_multiple_of(3) && even(w, rows / 3 * 2) => {
                let h = rows / 3 * 2;
                let (_, _, bytes) = plane_layout(self.format, w, h);
                if data.len() < bytes {
                    return Ok(self.skip(shape.dims()));
                }
                buf.clear();
                buf.extend_from_slice(&data[..bytes]);
                (w, h)
            }
            (Dtype::Uint8, &[h, w, 3]) if even(w, h) && data.len() >= (w * h * 3) as usize => {
                let rgb = &data[..(w * h * 3) as usize];
                rgb_to_picture(rgb, w, h, ColorSpec::default(), &mut self.picture);
                pack(&self.picture, self.format, buf);
                (w, h)
            }
            _ => return Ok(self.skip(shape.dims())),
        };
        let (planes, nplanes, _) = plane_layout(self.format, width, height);
        Ok(Some(FrameInfo {
            format: self.format,
            width,
            height,
            planes,
            nplanes,
            ts_mono_ns: if frame.tensor.timestamp_ns == 0 {
                ts_mono_ns
            } else {
                frame.tensor.timestamp_ns
            },
            ts_utc_ns,
        }))
    }
}

impl PoolSource {
    fn skip(&mut self, dims: &[u32]) -> Option<FrameInfo> {
        if self.skipped == 0 {
            tracing::warn!(
                stream = self.stream,
                "pool frames of shape {dims:?} are skipped: expected u8 [height*3/2, width] \
                 (4:2:0) or [height, width, 3] (RGB), both sizes even"
            );
        }
        self.skipped += 1;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_frames_have_the_layout_and_move() {
        let mut s = Synthetic::new(RawFormat::I420, 320, 240, 3);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let info = s.next_frame(&mut a).unwrap().unwrap();
        s.next_frame(&mut b).unwrap();
        assert_eq!(a.len(), 320 * 240 * 3 / 2);
        assert!(!s.truth().is_empty());
        assert_eq!(info.nplanes, 3);
        assert_ne!(a, b, "the shapes move");
        let mut again = Vec::new();
        Synthetic::new(RawFormat::I420, 320, 240, 3).next_frame(&mut again).unwrap();
        assert_eq!(a, again, "deterministic");
    }

    #[test]
    fn raw_files_loop_and_must_hold_whole_frames() {
        let dir = std::env::temp_dir().join(format!("corelane-agent-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("two.nv12");
        let frame = 8 * 4 * 3 / 2;
        let bytes: Vec<u8> = (0..2 * frame).map(|i| (i / frame) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mut f = RawFile::open(&path, RawFormat::Nv12, 8, 4).unwrap();
        let mut buf = Vec::new();
        for expect in [0u8, 1, 0, 1] {
            f.next_frame(&mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == expect));
        }
        std::fs::write(&path, &bytes[..frame + 5]).unwrap();
        let err = RawFile::open(&path, RawFormat::Nv12, 8, 4).unwrap_err().to_string();
        assert!(err.contains(&format!("{}", frame + 5)) && err.contains("48"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
