//! What every detector backend sees and returns: a decoded 4:2:0 picture in, boxes out.
//!
//! The worker decodes NV12, I420 and JPEG into one [`Picture`] (planar Y, U, V, tightly
//! packed), so a backend reads one layout whatever the wire carried. A [`Detector`] turns a
//! picture into [`Detection`]s in xyxy pixels; the [`Tracker`](super::vision::track::Tracker)
//! then gives each a track id that follows the object across frames.

use std::fmt;

/// A decoded frame: planar 4:2:0, rows tightly packed (stride = width), even dimensions.
///
/// The buffers are reused from frame to frame: [`Picture::reset`] keeps their capacity.
#[derive(Debug, Default, Clone)]
pub struct Picture {
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// `width * height` luma bytes.
    pub y: Vec<u8>,
    /// `width/2 * height/2` Cb bytes.
    pub u: Vec<u8>,
    /// `width/2 * height/2` Cr bytes.
    pub v: Vec<u8>,
}

impl Picture {
    /// Sizes the planes for `width` x `height` (both even), keeping the buffers' capacity.
    /// The contents are unspecified until written.
    pub fn reset(&mut self, width: u32, height: u32) {
        debug_assert!(width.is_multiple_of(2) && height.is_multiple_of(2));
        self.width = width;
        self.height = height;
        let luma = width as usize * height as usize;
        self.y.resize(luma, 0);
        self.u.resize(luma / 4, 0);
        self.v.resize(luma / 4, 0);
    }
}

/// One object found in a picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Left edge, pixels.
    pub x1: f32,
    /// Top edge, pixels.
    pub y1: f32,
    /// Right edge (exclusive), pixels.
    pub x2: f32,
    /// Bottom edge (exclusive), pixels.
    pub y2: f32,
    /// Confidence in `0.0..=1.0`.
    pub conf: f32,
    /// Index into [`ModelIdentity::classes`].
    pub class: u16,
    /// Set by the tracker: 0 until tracked, then 1, 2, ... ("T1", "T2" on the wire).
    pub track_id: u32,
}

/// Intersection over union of two xyxy boxes (0 when they do not overlap or have no area).
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

impl Detection {
    /// The box as `[x1, y1, x2, y2]`.
    pub fn xyxy(&self) -> [f32; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }
}

/// The model that runs, as InitOk and every Result report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// Family: `"classical"` for the built-in detector, `"yolo"` for YOLO-style ONNX models.
    pub family: String,
    /// Name: `"motion"`, or the ONNX file's name.
    pub name: String,
    /// Version string of the backend or model.
    pub version: String,
    /// Class names, indexed by [`Detection::class`].
    pub classes: Vec<String>,
}

/// Why a detector could not run on a picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetectError {
    /// The backend is not loaded (MODEL_NOT_READY on the wire).
    NotReady(String),
    /// Anything else (INTERNAL on the wire).
    Internal(String),
}

impl fmt::Display for DetectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotReady(why) => write!(f, "model not ready: {why}"),
            Self::Internal(why) => write!(f, "detector failed: {why}"),
        }
    }
}

impl std::error::Error for DetectError {}

/// A detector backend. One instance serves one stream (it may keep state across frames, as
/// the motion detector keeps its background); the worker makes one per connection with a
/// [`DetectorFactory`].
pub trait Detector: Send {
    /// The model identity (constant for the detector's life).
    fn identity(&self) -> &ModelIdentity;

    /// Finds objects in `picture`, appending them to `out` (cleared by the caller) with
    /// `track_id` 0. Steady state allocates nothing.
    fn detect(&mut self, picture: &Picture, out: &mut Vec<Detection>) -> Result<(), DetectError>;
}

/// Makes a fresh [`Detector`] for each new stream.
pub trait DetectorFactory: Send + Sync {
    /// The identity every detector it makes reports (for InitOk, before any frame).
    fn identity(&self) -> &ModelIdentity;

    /// A detector for a new stream.
    fn make(&self) -> Box<dyn Detector>;
}
