//! YOLO-style ONNX detectors on tract (pure Rust, CPU), behind the `onnx` cargo feature.
//!
//! [`OnnxFactory::load`] reads the model once: it fixes the input to 1x3xHxW float32 (H and W
//! from the model, 640x640 where they are symbolic), optimises it, and checks that the output
//! is a layout the decoder knows. Each stream then gets an [`OnnxDetector`] sharing that plan;
//! per frame it
//!
//! 1. converts the 4:2:0 [`Picture`] straight into the letterboxed NCHW input tensor (BT.709
//!    full range, bilinear, scale = min(W/w, H/h), centred, 114/255 gray padding),
//! 2. runs the plan,
//! 3. decodes YOLOv8 `[1, 4+C, N]` or YOLOv5 `[1, N, 5+C]` output (cx, cy, w, h in input
//!    pixels), keeps confidence >= 0.25, runs class-aware NMS (IoU 0.45, at most 300 boxes) and
//!    maps the boxes back through the letterbox to frame pixels, clamped to the frame.
//!
//! The input tensor, the sampling tables and the candidate list are reused across frames;
//! tract allocates the output tensors of each run.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::detector::{DetectError, Detection, Detector, DetectorFactory, ModelIdentity, Picture};

/// Input side used where the model leaves height or width symbolic.
pub const DEFAULT_INPUT_SIDE: usize = 640;
/// Candidates below this confidence are dropped before NMS.
pub const CONF_THRESHOLD: f32 = 0.25;
/// NMS removes a box overlapping a better one of the same class by more than this IoU.
pub const IOU_THRESHOLD: f32 = 0.45;
/// At most this many boxes per frame survive NMS.
pub const MAX_DETECTIONS: usize = 300;

/// Letterbox padding value, as Ultralytics pads (114 of 255 in every channel).
const PAD_GRAY: f32 = 114.0 / 255.0;

/// Why an ONNX model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// No file at the path.
    #[error("onnx model file not found: {}", .path.display())]
    NotFound {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read onnx model file {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX protobuf with a graph.
    #[error("not an onnx model: {}: {reason}", .path.display())]
    NotOnnx {
        /// The file.
        path: PathBuf,
        /// What was wrong with its contents.
        reason: String,
    },
    /// The model's input is not one float32 tensor of rank 4 with 3 channels.
    #[error("unsupported model input: expected one float32 input of shape 1x3xHxW, found {found}")]
    UnsupportedInput {
        /// The input(s) as found.
        found: String,
    },
    /// The model's output is neither YOLOv8 `[1, 4+C, N]` nor YOLOv5 `[1, N, 5+C]`.
    #[error(
        "output layout not recognised: expected [1, 4+C, N] (yolov8) or [1, N, 5+C] (yolov5), \
         found {found}"
    )]
    UnrecognisedOutput {
        /// The output shape(s) as found.
        found: String,
    },
    /// tract could not translate, type or optimise the model (an unsupported operator, say).
    #[error("tract cannot prepare the model: {0}")]
    Tract(String),
}

/// A loaded, optimised ONNX model that makes one [`OnnxDetector`] per stream.
pub struct OnnxFactory {
    shared: Arc<Shared>,
}

impl OnnxFactory {
    /// Loads and optimises the model at `path`; see the module doc for what it accepts.
    pub fn load(path: &Path) -> Result<OnnxFactory, OnnxError> {
        let bytes = std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => OnnxError::NotFound { path: path.to_owned() },
            _ => OnnxError::Io { path: path.to_owned(), source },
        })?;
        let not_onnx = |reason: String| OnnxError::NotOnnx { path: path.to_owned(), reason };
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(|e| not_onnx(format!("protobuf decode failed: {e:#}")))?;
        match &proto.graph {
            Some(graph) if !graph.node.is_empty() => {}
            Some(_) => return Err(not_onnx("the graph has no nodes".into())),
            None => return Err(not_onnx("no graph in the file".into())),
        }
        let name = path
            .file_name()
            .map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned());
        Self::from_proto(&proto, name)
    }

    /// The model in `proto`, reported under `name`.
    fn from_proto(proto: &ModelProto, name: String) -> Result<OnnxFactory, OnnxError> {
        let mut model = tract_onnx::onnx().model_for_proto_model(proto).map_err(tract_error)?;
        let (height, width) = fix_input(&mut model)?;
        let plan =
            model.into_optimized().and_then(|typed| typed.into_runnable()).map_err(tract_error)?;
        let layout = output_layout(plan.model())?;
        let classes = class_names(proto, layout.classes());
        let identity =
            ModelIdentity { family: "yolo".into(), name, version: model_version(proto), classes };
        Ok(OnnxFactory { shared: Arc::new(Shared { plan, identity, width, height, layout }) })
    }

    /// A detector of this model with its own run state and buffers.
    pub fn detector(&self) -> Result<OnnxDetector, DetectError> {
        OnnxDetector::new(self.shared.clone())
    }

    /// The model input's height and width, pixels.
    pub fn input_size(&self) -> (usize, usize) {
        (self.shared.height, self.shared.width)
    }
}

impl DetectorFactory for OnnxFactory {
    fn identity(&self) -> &ModelIdentity {
        &self.shared.identity
    }

    fn make(&self) -> Box<dyn Detector> {
        match self.detector() {
            Ok(detector) => Box::new(detector),
            // A plan that loaded always spawns a state (tract's spawn only allocates); should
            // it not, the stream still gets a detector, and every frame says why it cannot run.
            Err(err) => Box::new(Broken { identity: self.shared.identity.clone(), err }),
        }
    }
}

impl fmt::Debug for OnnxFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

/// One stream's detector: the shared plan, its own tract state and reused buffers.
pub struct OnnxDetector {
    shared: Arc<Shared>,
    state: TypedSimpleState,
    /// The 1x3xHxW input; exclusively ours between runs, so it is refilled in place.
    input: Arc<Tensor>,
    /// Column sampling table for the current frame size.
    columns: Vec<Tap>,
    /// Frame size (width, height) that `columns` was built for.
    columns_for: (u32, u32),
    /// Decoded boxes before NMS, in input pixels.
    candidates: Vec<Detection>,
}

impl OnnxDetector {
    fn new(shared: Arc<Shared>) -> Result<OnnxDetector, DetectError> {
        let state = shared.plan.spawn().map_err(|e| DetectError::Internal(format!("{e:#}")))?;
        let input = Tensor::zero::<f32>(&[1, 3, shared.height, shared.width])
            .map_err(|e| DetectError::Internal(format!("{e:#}")))?;
        Ok(OnnxDetector {
            shared,
            state,
            input: Arc::new(input),
            columns: Vec::new(),
            columns_for: (0, 0),
            candidates: Vec::new(),
        })
    }
}

impl Detector for OnnxDetector {
    fn identity(&self) -> &ModelIdentity {
        &self.shared.identity
    }

    fn detect(&mut self, picture: &Picture, out: &mut Vec<Detection>) -> Result<(), DetectError> {
        check_picture(picture)?;
        let (width, height) = (self.shared.width, self.shared.height);
        let letterbox = Letterbox::new(picture.width, picture.height, width, height);
        if self.columns_for != (picture.width, picture.height) {
            build_columns(&letterbox, picture.width, &mut self.columns);
            self.columns_for = (picture.width, picture.height);
        }
        if Arc::get_mut(&mut self.input).is_none() {
            // tract kept a reference to last frame's input (it does not after `run` returns,
            // so this is a fallback): start a fresh tensor rather than share a written one.
            self.input = Arc::new(internal(Tensor::zero::<f32>(&[1, 3, height, width]))?);
        }
        {
            // The `is_none` branch above made the Arc exclusive.
            let input = Arc::get_mut(&mut self.input).expect("input tensor is exclusive");
            let mut view = internal(input.try_as_plain_ram_mut())?;
            let nchw = internal(view.as_slice_mut::<f32>())?;
            picture_to_rgb_f32_letterboxed(picture, &letterbox, &self.columns, nchw);
        }

        let outputs = internal(self.state.run(tvec![self.input.clone().into_tvalue()]))?;
        let output = outputs.first().ok_or_else(|| internal_msg("model produced no output"))?;
        let view = internal(output.try_as_plain_ram())?;
        let data = internal(view.as_slice::<f32>())?;
        self.candidates.clear();
        decode(data, output.shape(), CONF_THRESHOLD, &mut self.candidates)
            .map_err(|e| DetectError::Internal(e.to_string()))?;
        nms(&mut self.candidates, IOU_THRESHOLD, MAX_DETECTIONS);
        out.extend(
            self.candidates.iter().map(|d| letterbox.frame_box(d, picture.width, picture.height)),
        );
        Ok(())
    }
}

impl fmt::Debug for OnnxDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxDetector")
            .field("model", &self.shared)
            .field("columns_for", &self.columns_for)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Loading helpers.

/// What every detector of one model shares.
struct Shared {
    plan: Arc<TypedSimplePlan>,
    identity: ModelIdentity,
    width: usize,
    height: usize,
    layout: Layout,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxModel")
            .field("identity", &self.identity)
            .field("input", &format_args!("1x3x{}x{}", self.height, self.width))
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// The detector a factory hands out if tract could not make a run state: it reports why.
#[derive(Debug)]
struct Broken {
    identity: ModelIdentity,
    err: DetectError,
}

impl Detector for Broken {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn detect(&mut self, _: &Picture, _: &mut Vec<Detection>) -> Result<(), DetectError> {
        Err(self.err.clone())
    }
}

#[cold]
fn tract_error(e: TractError) -> OnnxError {
    OnnxError::Tract(format!("{e:#}"))
}

#[cold]
fn internal_msg(why: &str) -> DetectError {
    DetectError::Internal(why.to_owned())
}

fn internal<T>(r: TractResult<T>) -> Result<T, DetectError> {
    r.map_err(|e| DetectError::Internal(format!("{e:#}")))
}

/// Checks the single input is (or can be made) 1x3xHxW float32 and pins it; returns (H, W).
fn fix_input(model: &mut InferenceModel) -> Result<(usize, usize), OnnxError> {
    let inputs = model.input_outlets().map_err(tract_error)?.len();
    let fact = model.input_fact(0).map_err(tract_error)?.clone();
    let unsupported = || OnnxError::UnsupportedInput {
        found: format!("{inputs} input(s), the first {}", fact.format_dt_shape()),
    };
    if inputs != 1 {
        return Err(unsupported());
    }
    if let Some(dt) = fact.datum_type.concretize() {
        if dt != f32::datum_type() {
            return Err(unsupported());
        }
    }
    // A concrete dim must have the expected value; a symbolic or unknown one is pinned.
    let dim = |axis: usize| {
        let concrete = fact.shape.dim(axis)?.concretize()?.to_i64().ok()?;
        usize::try_from(concrete).ok()
    };
    let rank = fact.shape.rank().concretize();
    if rank.is_some_and(|rank| rank != 4) {
        return Err(unsupported());
    }
    if dim(0).is_some_and(|n| n != 1) || dim(1).is_some_and(|c| c != 3) {
        return Err(unsupported());
    }
    let height = dim(2).unwrap_or(DEFAULT_INPUT_SIDE);
    let width = dim(3).unwrap_or(DEFAULT_INPUT_SIDE);
    if height == 0 || width == 0 {
        return Err(unsupported());
    }
    let pinned = InferenceFact::dt_shape(f32::datum_type(), tvec![1, 3, height, width]);
    model.set_input_fact(0, pinned).map_err(tract_error)?;
    Ok((height, width))
}

/// The decoder layout of the plan's first output, which must have a concrete shape.
fn output_layout(model: &TypedModel) -> Result<Layout, OnnxError> {
    let outputs = model.output_outlets().map_err(tract_error)?.len();
    let fact = model.output_fact(0).map_err(tract_error)?;
    let found = || OnnxError::UnrecognisedOutput {
        found: format!("{outputs} output(s), the first {:?} {:?}", fact.datum_type, fact.shape),
    };
    if fact.datum_type != f32::datum_type() {
        return Err(found());
    }
    let shape = fact.shape.as_concrete().ok_or_else(found)?;
    Layout::from_shape(shape).ok_or_else(found)
}

/// Class names from metadata_props "names", padded with "classK" up to `count`.
fn class_names(proto: &ModelProto, count: usize) -> Vec<String> {
    let mut names = proto
        .metadata_props
        .iter()
        .find(|entry| entry.key == "names")
        .and_then(|entry| parse_names(&entry.value))
        .unwrap_or_default();
    for k in names.len()..count {
        names.push(format!("class{k}"));
    }
    names
}

/// Parses `{0: 'person', 1: 'bicycle'}` (Ultralytics) or `person,bicycle` (plain list;
/// brackets and quotes around items are tolerated). Missing dict keys become "classK".
fn parse_names(text: &str) -> Option<Vec<String>> {
    let text = text.trim();
    if let Some(body) = text.strip_prefix('{') {
        return parse_names_dict(body.strip_suffix('}')?);
    }
    let body = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    let names: Vec<String> = body
        .split(',')
        .map(|item| item.trim().trim_matches(|c| c == '\'' || c == '"').trim().to_owned())
        .collect();
    (!names.iter().all(String::is_empty)).then_some(names)
}

/// The inside of a Python dict literal with integer keys and quoted string values.
fn parse_names_dict(body: &str) -> Option<Vec<String>> {
    let mut entries: Vec<(usize, String)> = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let key: usize = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start().strip_prefix(':')?.trim_start();
        let quote = rest.chars().next().filter(|&c| c == '\'' || c == '"')?;
        rest = &rest[1..];
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => value.push(chars.next()?.1),
                (at, c) if c == quote => break at,
                (_, c) => value.push(c),
            }
        };
        entries.push((key, value));
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    let len = entries.iter().map(|(key, _)| key + 1).max()?;
    if len > usize::from(u16::MAX) {
        return None;
    }
    let mut names: Vec<String> = (0..len).map(|k| format!("class{k}")).collect();
    for (key, value) in entries {
        names[key] = value;
    }
    Some(names)
}

/// `"tract; <producer> <producer_version>; opset <n>[; model <version>]"`.
fn model_version(proto: &ModelProto) -> String {
    let mut version = String::from("tract");
    let producer = format!("{} {}", proto.producer_name, proto.producer_version);
    if !producer.trim().is_empty() {
        version.push_str("; ");
        version.push_str(producer.trim());
    }
    let opset = proto
        .opset_import
        .iter()
        .find(|import| import.domain.is_empty() || import.domain == "ai.onnx")
        .map(|import| import.version);
    if let Some(opset) = opset {
        version.push_str(&format!("; opset {opset}"));
    }
    if proto.model_version != 0 {
        version.push_str(&format!("; model {}", proto.model_version));
    }
    version
}

// ---------------------------------------------------------------------------------------------
// Pre-processing: 4:2:0 picture -> letterboxed NCHW RGB.

/// Where a frame sits inside the model input: scaled by `sx`, `sy` (the same factor up to the
/// rounding of the resized size) and offset by the padding.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Letterbox {
    /// Model input size.
    input_w: usize,
    input_h: usize,
    /// The resized frame's size and top-left corner inside the input.
    content_w: usize,
    content_h: usize,
    left: usize,
    top: usize,
    /// Input pixels per frame pixel, per axis.
    sx: f32,
    sy: f32,
}

impl Letterbox {
    fn new(frame_w: u32, frame_h: u32, input_w: usize, input_h: usize) -> Letterbox {
        let (fw, fh) = (frame_w as f32, frame_h as f32);
        let scale = (input_w as f32 / fw).min(input_h as f32 / fh);
        let content_w = ((fw * scale).round() as usize).clamp(1, input_w);
        let content_h = ((fh * scale).round() as usize).clamp(1, input_h);
        Letterbox {
            input_w,
            input_h,
            content_w,
            content_h,
            left: (input_w - content_w) / 2,
            top: (input_h - content_h) / 2,
            sx: content_w as f32 / fw,
            sy: content_h as f32 / fh,
        }
    }

    /// A box in input pixels to frame pixels, clamped to the frame.
    fn frame_box(&self, d: &Detection, frame_w: u32, frame_h: u32) -> Detection {
        let (fw, fh) = (frame_w as f32, frame_h as f32);
        let x = |v: f32| ((v - self.left as f32) / self.sx).clamp(0.0, fw);
        let y = |v: f32| ((v - self.top as f32) / self.sy).clamp(0.0, fh);
        Detection { x1: x(d.x1), y1: y(d.y1), x2: x(d.x2), y2: y(d.y2), ..*d }
    }
}

/// Bilinear taps for one output column: luma and chroma source columns and weights.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Tap {
    x0: u32,
    x1: u32,
    wx: f32,
    cx0: u32,
    cx1: u32,
    cwx: f32,
}

/// Source position of output sample `o` (pixel centres aligned), split into the two
/// neighbouring source indices below `len` and the weight of the second.
fn source_taps(o: usize, scale: f32, len: u32) -> (u32, u32, f32) {
    let s = ((o as f32 + 0.5) / scale - 0.5).clamp(0.0, (len - 1) as f32);
    taps_at(s, len)
}

fn taps_at(s: f32, len: u32) -> (u32, u32, f32) {
    let s = s.clamp(0.0, (len - 1) as f32);
    let i0 = s.floor() as u32;
    let i1 = (i0 + 1).min(len - 1);
    (i0, i1, s - i0 as f32)
}

/// Chroma position for a luma position: 4:2:0 chroma sits at the centre of each 2x2 block.
fn chroma_taps(luma_pos: f32, chroma_len: u32) -> (u32, u32, f32) {
    taps_at((luma_pos + 0.5) * 0.5 - 0.5, chroma_len)
}

fn build_columns(letterbox: &Letterbox, frame_w: u32, columns: &mut Vec<Tap>) {
    columns.clear();
    columns.extend((0..letterbox.content_w).map(|o| {
        let (x0, x1, wx) = source_taps(o, letterbox.sx, frame_w);
        let luma_pos = x0 as f32 + wx;
        let (cx0, cx1, cwx) = chroma_taps(luma_pos, frame_w / 2);
        Tap { x0, x1, wx, cx0, cx1, cwx }
    }));
}

/// Writes `picture` into `nchw` (1x3xHxW, H and W from `letterbox`): bilinear resize by the
/// letterbox scale, YUV 4:2:0 -> RGB with BT.709 full-range coefficients, values in 0..1,
/// PAD_GRAY around the centred content. `columns` comes from `build_columns` for this frame
/// width; `picture` has been checked by `check_picture`.
fn picture_to_rgb_f32_letterboxed(
    picture: &Picture,
    letterbox: &Letterbox,
    columns: &[Tap],
    nchw: &mut [f32],
) {
    let (w, h) = (letterbox.input_w, letterbox.input_h);
    debug_assert_eq!(nchw.len(), 3 * w * h);
    debug_assert_eq!(columns.len(), letterbox.content_w);
    let frame_w = picture.width as usize;
    let chroma_w = frame_w / 2;
    let (r_plane, rest) = nchw.split_at_mut(w * h);
    let (g_plane, b_plane) = rest.split_at_mut(w * h);
    let luma = |row: usize, col: u32| f32::from(picture.y[row * frame_w + col as usize]);
    let cb = |row: usize, col: u32| f32::from(picture.u[row * chroma_w + col as usize]);
    let cr = |row: usize, col: u32| f32::from(picture.v[row * chroma_w + col as usize]);
    let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;

    for oy in 0..h {
        let (r_row, g_row, b_row) =
            (&mut r_plane[oy * w..][..w], &mut g_plane[oy * w..][..w], &mut b_plane[oy * w..][..w]);
        let content_row = oy.checked_sub(letterbox.top).filter(|&r| r < letterbox.content_h);
        let Some(row) = content_row else {
            for plane_row in [r_row, g_row, b_row] {
                plane_row.fill(PAD_GRAY);
            }
            continue;
        };
        let (y0, y1, wy) = source_taps(row, letterbox.sy, picture.height);
        let (cy0, cy1, cwy) = chroma_taps(y0 as f32 + wy, picture.height / 2);
        let (y0, y1, cy0, cy1) = (y0 as usize, y1 as usize, cy0 as usize, cy1 as usize);
        let content = letterbox.left..letterbox.left + letterbox.content_w;
        for plane_row in [&mut *r_row, &mut *g_row, &mut *b_row] {
            plane_row[..content.start].fill(PAD_GRAY);
            plane_row[content.end..].fill(PAD_GRAY);
        }
        let pixels = r_row[content.clone()]
            .iter_mut()
            .zip(&mut g_row[content.clone()])
            .zip(&mut b_row[content])
            .zip(columns);
        for (((r, g), b), tap) in pixels {
            let yy = lerp(
                lerp(luma(y0, tap.x0), luma(y0, tap.x1), tap.wx),
                lerp(luma(y1, tap.x0), luma(y1, tap.x1), tap.wx),
                wy,
            );
            let uu = lerp(
                lerp(cb(cy0, tap.cx0), cb(cy0, tap.cx1), tap.cwx),
                lerp(cb(cy1, tap.cx0), cb(cy1, tap.cx1), tap.cwx),
                cwy,
            ) - 128.0;
            let vv = lerp(
                lerp(cr(cy0, tap.cx0), cr(cy0, tap.cx1), tap.cwx),
                lerp(cr(cy1, tap.cx0), cr(cy1, tap.cx1), tap.cwx),
                cwy,
            ) - 128.0;
            // BT.709 full range: R = Y + 1.5748 Cr, G = Y - 0.1873 Cb - 0.4681 Cr,
            // B = Y + 1.8556 Cb (Kr = 0.2126, Kb = 0.0722).
            *r = ((yy + 1.5748 * vv) / 255.0).clamp(0.0, 1.0);
            *g = ((yy - 0.187_324 * uu - 0.468_124 * vv) / 255.0).clamp(0.0, 1.0);
            *b = ((yy + 1.8556 * uu) / 255.0).clamp(0.0, 1.0);
        }
    }
}

/// Rejects a picture whose planes do not match its size (the decoder's contract, checked once
/// here so the conversion can index without further checks).
fn check_picture(picture: &Picture) -> Result<(), DetectError> {
    let (w, h) = (picture.width as usize, picture.height as usize);
    let ok = w >= 2
        && h >= 2
        && w.is_multiple_of(2)
        && h.is_multiple_of(2)
        && picture.y.len() == w * h
        && picture.u.len() == w * h / 4
        && picture.v.len() == w * h / 4;
    if ok {
        Ok(())
    } else {
        Err(bad_picture(picture))
    }
}

#[cold]
#[inline(never)]
fn bad_picture(picture: &Picture) -> DetectError {
    DetectError::Internal(format!(
        "picture {}x{} needs even sizes >= 2 and planes of {}/{}/{} bytes, has {}/{}/{}",
        picture.width,
        picture.height,
        picture.width as usize * picture.height as usize,
        picture.width as usize * picture.height as usize / 4,
        picture.width as usize * picture.height as usize / 4,
        picture.y.len(),
        picture.u.len(),
        picture.v.len()
    ))
}

// ---------------------------------------------------------------------------------------------
// Post-processing: decode, NMS.

/// Output layouts the decoder understands, told apart by shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// YOLOv8 and later: `[1, 4 + classes, anchors]`, rows cx, cy, w, h, class scores.
    V8 { classes: usize, anchors: usize },
    /// YOLOv5: `[1, anchors, 5 + classes]`, rows of cx, cy, w, h, objectness, class scores.
    V5 { classes: usize, anchors: usize },
}

impl Layout {
    /// `[1, a, b]`: the attribute axis is the shorter one (anchors outnumber 5 + classes in
    /// every YOLO export); a square output is ambiguous and rejected.
    fn from_shape(shape: &[usize]) -> Option<Layout> {
        let &[1, a, b] = shape else { return None };
        let layout = if a < b && a > 4 {
            Layout::V8 { classes: a - 4, anchors: b }
        } else if b < a && b > 5 {
            Layout::V5 { classes: b - 5, anchors: a }
        } else {
            return None;
        };
        (layout.classes() <= usize::from(u16::MAX) + 1).then_some(layout)
    }

    fn classes(&self) -> usize {
        match *self {
            Layout::V8 { classes, .. } | Layout::V5 { classes, .. } => classes,
        }
    }
}

/// Appends to `out` every box of `data` (a tensor of `shape`, row-major) whose confidence is
/// at least `conf_threshold`, in input pixels xyxy, with its best class. YOLOv5 confidence is
/// objectness x class score.
fn decode(
    data: &[f32],
    shape: &[usize],
    conf_threshold: f32,
    out: &mut Vec<Detection>,
) -> Result<(), OnnxError> {
    let layout = Layout::from_shape(shape)
        .filter(|_| data.len() == shape.iter().product::<usize>())
        .ok_or_else(|| OnnxError::UnrecognisedOutput {
            found: format!("{shape:?} with {} values", data.len()),
        })?;
    let push = |out: &mut Vec<Detection>, cx: f32, cy: f32, w: f32, h: f32, conf, class| {
        out.push(Detection {
            x1: cx - w / 2.0,
            y1: cy - h / 2.0,
            x2: cx + w / 2.0,
            y2: cy + h / 2.0,
            conf,
            class,
            track_id: 0,
        });
    };
    match layout {
        Layout::V8 { classes, anchors: n } => {
            for i in 0..n {
                let (class, score) = best((0..classes).map(|c| data[(4 + c) * n + i]));
                if score >= conf_threshold {
                    let at = |row: usize| data[row * n + i];
                    push(out, at(0), at(1), at(2), at(3), score, class);
                }
            }
        }
        Layout::V5 { classes, anchors: _ } => {
            for row in data.chunks_exact(5 + classes) {
                let objectness = row[4];
                if objectness < conf_threshold {
                    continue; // conf = objectness x score <= objectness
                }
                let (class, score) = best(row[5..].iter().copied());
                let conf = objectness * score;
                if conf >= conf_threshold {
                    push(out, row[0], row[1], row[2], row[3], conf, class);
                }
            }
        }
    }
    Ok(())
}

/// Index and value of the largest score (the first on ties); NaN never wins.
fn best(scores: impl Iterator<Item = f32>) -> (u16, f32) {
    let mut top = (0u16, f32::NEG_INFINITY);
    for (class, score) in scores.enumerate() {
        if score > top.1 {
            // Layout::from_shape caps classes at u16::MAX + 1, so the index fits.
            top = (class as u16, score);
        }
    }
    top
}

/// Class-aware greedy NMS in place: best first, a box is dropped when it overlaps a kept box
/// of its class by more than `iou_threshold`; at most `max_boxes` are kept. Sorting is
/// unstable (no allocation) but by a total order over the boxes, so the result is
/// deterministic.
fn nms(boxes: &mut Vec<Detection>, iou_threshold: f32, max_boxes: usize) {
    boxes.sort_unstable_by(|a, b| {
        b.conf
            .total_cmp(&a.conf)
            .then(a.class.cmp(&b.class))
            .then(a.x1.total_cmp(&b.x1))
            .then(a.y1.total_cmp(&b.y1))
            .then(a.x2.total_cmp(&b.x2))
            .then(a.y2.total_cmp(&b.y2))
    });
    let mut kept = 0;
    for i in 0..boxes.len() {
        if kept == max_boxes {
            break;
        }
        let candidate = boxes[i];
        let suppressed = boxes[..kept]
            .iter()
            .any(|k| k.class == candidate.class && iou(k, &candidate) > iou_threshold);
        if !suppressed {
            boxes[kept] = candidate;
            kept += 1;
        }
    }
    boxes.truncate(kept);
}

fn iou(a: &Detection, b: &Detection) -> f32 {
    super::detector::iou(a.xyxy(), b.xyxy())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny_detector.onnx");

    /// Dark 4:2:0 picture (Y = 20, neutral chroma) with an optional bright square
    /// (Y = 250) at `[x, x + side) x [y, y + side)`, all even.
    fn picture(width: u32, height: u32, square: Option<(u32, u32, u32)>) -> Picture {
        let mut p = Picture::default();
        p.reset(width, height);
        p.y.fill(20);
        p.u.fill(128);
        p.v.fill(128);
        if let Some((x, y, side)) = square {
            for row in y..y + side {
                let start = (row * width + x) as usize;
                p.y[start..start + side as usize].fill(250);
            }
        }
        p
    }

    fn det(x1: f32, y1: f32, x2: f32, y2: f32, conf: f32, class: u16) -> Detection {
        Detection { x1, y1, x2, y2, conf, class, track_id: 0 }
    }

    #[test]
    fn tiny_model_loads_with_identity_from_its_metadata() {
        let factory = OnnxFactory::load(Path::new(TINY)).unwrap();
        let id = factory.identity();
        assert_eq!(id.family, "yolo");
        assert_eq!(id.name, "tiny_detector.onnx");
        assert_eq!(id.classes, ["square"]);
        assert_eq!(id.version, "tract; corelane make_tiny_detector.py 1; opset 13");
        // The model's batch dim is symbolic; H and W come from the model.
        assert_eq!(factory.input_size(), (64, 64));
        assert_eq!(factory.shared.layout, Layout::V8 { classes: 1, anchors: 169 });
    }

    /// 128x96 frame into the 64x64 model: scale 0.5, content 64x48, 8 rows of padding above
    /// and below. The 32x32 square at (40, 24) lands on the model's 16x16 window at (20, 20);
    /// that window and its four one-stride neighbours fire, NMS keeps the centre one, whose box
    /// maps back to (40, 24, 72, 56). Tolerance: 1 frame pixel per edge.
    #[test]
    fn tiny_model_finds_the_bright_square_in_frame_pixels() {
        let factory = OnnxFactory::load(Path::new(TINY)).unwrap();
        let mut detector = factory.make();
        assert_eq!(detector.identity(), factory.identity());
        let mut out = Vec::new();
        for _ in 0..2 {
            out.clear();
            detector.detect(&picture(128, 96, Some((40, 24, 32))), &mut out).unwrap();
            assert_eq!(out.len(), 1, "{out:?}");
            let d = out[0];
            assert_eq!(d.class, 0);
            assert_eq!(detector.identity().classes[usize::from(d.class)], "square");
            assert_eq!(d.track_id, 0);
            assert!(d.conf > 0.9, "{d:?}");
            for (got, want) in [(d.x1, 40.0), (d.y1, 24.0), (d.x2, 72.0), (d.y2, 56.0)] {
                assert!((got - want).abs() <= 1.0, "{d:?}");
            }
            // The same detector, next frame dark: buffers reused, nothing found.
            out.clear();
            detector.detect(&picture(128, 96, None), &mut out).unwrap();
            assert!(out.is_empty(), "{out:?}");
        }
    }

    #[test]
    fn tiny_model_finds_nothing_in_a_dark_picture() {
        let factory = OnnxFactory::load(Path::new(TINY)).unwrap();
        let mut detector = factory.detector().unwrap();
        let mut out = Vec::new();
        for (w, h) in [(128, 96), (64, 64), (96, 128)] {
            detector.detect(&picture(w, h, None), &mut out).unwrap();
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn tiny_model_maps_a_portrait_frame_through_side_padding() {
        // 96x128 (portrait): scale 0.5, content 48x64, 8 columns of padding left and right;
        // the square at (24, 40) lands on the window at (20, 20) again.
        let factory = OnnxFactory::load(Path::new(TINY)).unwrap();
        let mut detector = factory.detector().unwrap();
        let mut out = Vec::new();
        detector.detect(&picture(96, 128, Some((24, 40, 32))), &mut out).unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        let d = out[0];
        for (got, want) in [(d.x1, 24.0), (d.y1, 40.0), (d.x2, 56.0), (d.y2, 72.0)] {
            assert!((got - want).abs() <= 1.0, "{d:?}");
        }
    }

    #[test]
    fn malformed_picture_is_an_error_not_a_panic() {
        let factory = OnnxFactory::load(Path::new(TINY)).unwrap();
        let mut detector = factory.detector().unwrap();
        let mut p = picture(128, 96, None);
        p.u.pop();
        let err = detector.detect(&p, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, DetectError::Internal(ref why) if why.contains("128x96")), "{err}");
    }

    #[test]
    fn missing_file_is_not_found() {
        let err = OnnxFactory::load(Path::new("/nonexistent/corelane/model.onnx")).unwrap_err();
        assert!(matches!(err, OnnxError::NotFound { .. }), "{err:?}");
        assert_eq!(err.to_string(), "onnx model file not found: /nonexistent/corelane/model.onnx");
    }

    #[test]
    fn non_onnx_file_is_not_onnx() {
        let dir = std::env::temp_dir();
        let text = dir.join(format!("corelane-not-a-model-{}.onnx", std::process::id()));
        std::fs::write(&text, "this is a text file, not a model\n").unwrap();
        let empty = dir.join(format!("corelane-empty-{}.onnx", std::process::id()));
        std::fs::write(&empty, b"").unwrap();
        for path in [&text, &empty] {
            let err = OnnxFactory::load(path).unwrap_err();
            std::fs::remove_file(path).unwrap();
            assert!(matches!(err, OnnxError::NotOnnx { .. }), "{err:?}");
            assert!(err.to_string().starts_with("not an onnx model: "), "{err}");
        }
    }

    /// A one-node `Identity` model from `input` to `output` of the given ONNX element type
    /// (1 = float32, 7 = int64) and shapes (negative dims become symbolic).
    fn identity_model(elem_type: i32, input: &[i64], output: &[i64]) -> ModelProto {
        use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
        use tract_onnx::pb::{type_proto, GraphProto, NodeProto, OperatorSetIdProto};
        use tract_onnx::pb::{TensorShapeProto, TypeProto, ValueInfoProto};
        let value = |name: &str, dims: &[i64]| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(if d < 0 {
                                    dimension::Value::DimParam(format!("d{}", -d))
                                } else {
                                    dimension::Value::DimValue(d)
                                }),
                                ..Dimension::default()
                            })
                            .collect(),
                    }),
                })),
                ..TypeProto::default()
            }),
            ..ValueInfoProto::default()
        };
        ModelProto {
            ir_version: 7,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    op_type: "Identity".into(),
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    ..NodeProto::default()
                }],
                input: vec![value("x", input)],
                output: vec![value("y", output)],
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
    }

    #[test]
    fn unsupported_input_says_what_it_found() {
        for (elem_type, shape) in [(1, &[1, 3, 64][..]), (1, &[1, 1, 8, 8]), (7, &[1, 3, 8, 8])] {
            let proto = identity_model(elem_type, shape, shape);
            let err = OnnxFactory::from_proto(&proto, "m.onnx".into()).unwrap_err();
            assert!(matches!(err, OnnxError::UnsupportedInput { .. }), "{err:?}");
            assert!(
                err.to_string().starts_with(
                    "unsupported model input: expected one float32 input of shape 1x3xHxW, \
                     found 1 input(s), the first "
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn unrecognised_output_says_what_shape_it_found() {
        // A 1x3xHxW passthrough loads up to the output check, which finds [1, 3, 64, 64].
        let proto = identity_model(1, &[1, 3, 64, 64], &[1, 3, 64, 64]);
        let err = OnnxFactory::from_proto(&proto, "m.onnx".into()).unwrap_err();
        assert!(matches!(err, OnnxError::UnrecognisedOutput { .. }), "{err:?}");
        assert!(err.to_string().contains("found 1 output(s), the first F32 1,3,64,64"), "{err}");
    }

    #[test]
    fn symbolic_input_dims_default_to_640() {
        // Batch, height and width symbolic: pinned to 1x3x640x640; the output then is
        // [1, 3, 640, 640], which no YOLO decoder reads, and the error shows the pinning.
        let proto = identity_model(1, &[-1, 3, -2, -3], &[-1, 3, -2, -3]);
        let err = OnnxFactory::from_proto(&proto, "m.onnx".into()).unwrap_err();
        assert!(err.to_string().contains("1,3,640,640"), "{err}");
    }

    #[test]
    fn decode_yolov8_layout() {
        // [1, 4 + 2, 8]: eight anchors (more than attributes, as in every export), two
        // classes, attribute-major; anchors 3..8 score zero.
        #[rustfmt::skip]
        let data = [
            10.0, 50.0, 90.0, 0.0, 0.0, 0.0, 0.0, 0.0, // cx
            20.0, 60.0, 90.0, 0.0, 0.0, 0.0, 0.0, 0.0, // cy
            4.0, 8.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0,    // w
            6.0, 10.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0,   // h
            0.9, 0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0,    // class 0
            0.3, 0.7, 0.24, 0.0, 0.0, 0.0, 0.0, 0.0,   // class 1
        ];
        let mut out = Vec::new();
        decode(&data, &[1, 6, 8], 0.25, &mut out).unwrap();
        assert_eq!(out, [det(8.0, 17.0, 12.0, 23.0, 0.9, 0), det(46.0, 55.0, 54.0, 65.0, 0.7, 1)]);
    }

    #[test]
    fn decode_yolov5_layout() {
        // [1, 8, 5 + 2]: eight anchors, rows of cx, cy, w, h, objectness, class scores;
        // anchors 3..8 have objectness zero.
        let mut data = vec![0.0; 8 * 7];
        data[..21].copy_from_slice(&[
            10.0, 20.0, 4.0, 6.0, 0.5, 0.2, 0.8, // conf 0.4, class 1
            50.0, 60.0, 8.0, 10.0, 0.2, 1.0, 0.0, // objectness under the threshold
            90.0, 90.0, 2.0, 2.0, 0.9, 0.25, 0.1, // conf 0.225 < 0.25
        ]);
        let mut out = Vec::new();
        decode(&data, &[1, 8, 7], 0.25, &mut out).unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        let d = out[0];
        assert_eq!((d.x1, d.y1, d.x2, d.y2, d.class), (8.0, 17.0, 12.0, 23.0, 1));
        assert!((d.conf - 0.4).abs() < 1e-6);

        // Decoded, suppressed and mapped as the detector does: two overlapping class-1 boxes
        // and one class-0 box in the same place.
        let mut data = vec![0.0; 8 * 7];
        data[..21].copy_from_slice(&[
            100.0, 100.0, 40.0, 40.0, 0.9, 0.1, 0.9, // conf 0.81, class 1
            104.0, 100.0, 40.0, 40.0, 0.8, 0.1, 0.9, // conf 0.72, class 1, IoU 0.82: dropped
            100.0, 100.0, 40.0, 40.0, 0.6, 0.9, 0.1, // conf 0.54, class 0: kept
        ]);
        out.clear();
        decode(&data, &[1, 8, 7], 0.25, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        nms(&mut out, IOU_THRESHOLD, MAX_DETECTIONS);
        let kept: Vec<(u16, f32)> = out.iter().map(|d| (d.class, d.conf)).collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!((kept[0].0, kept[1].0), (1, 0));
    }

    #[test]
    fn decode_tells_the_layouts_apart_by_shape() {
        assert_eq!(
            Layout::from_shape(&[1, 84, 8400]),
            Some(Layout::V8 { classes: 80, anchors: 8400 })
        );
        assert_eq!(
            Layout::from_shape(&[1, 25200, 85]),
            Some(Layout::V5 { classes: 80, anchors: 25200 })
        );
        assert_eq!(Layout::from_shape(&[1, 5, 169]), Some(Layout::V8 { classes: 1, anchors: 169 }));
        assert_eq!(Layout::from_shape(&[1, 169, 6]), Some(Layout::V5 { classes: 1, anchors: 169 }));
        for shape in [&[1, 4, 100][..], &[1, 100, 5], &[2, 84, 8400], &[84, 8400], &[1, 9, 9]] {
            assert_eq!(Layout::from_shape(shape), None, "{shape:?}");
        }
    }

    #[test]
    fn decode_rejects_an_unknown_shape_saying_what_it_found() {
        let err = decode(&[0.0; 8], &[1, 2, 4], 0.25, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "output layout not recognised: expected [1, 4+C, N] (yolov8) or [1, N, 5+C] \
             (yolov5), found [1, 2, 4] with 8 values"
        );
        // Right shape, wrong amount of data.
        assert!(decode(&[0.0; 10], &[1, 5, 3], 0.25, &mut Vec::new()).is_err());
    }

    #[test]
    fn nms_is_class_aware_ordered_and_capped() {
        let mut boxes = vec![
            det(0.0, 0.0, 10.0, 10.0, 0.8, 0),
            det(1.0, 0.0, 11.0, 10.0, 0.9, 0), // IoU 0.82 with the first: wins, suppresses it
            det(1.0, 0.0, 11.0, 10.0, 0.7, 1), // same place, other class: kept
            det(5.0, 0.0, 15.0, 10.0, 0.6, 0), // IoU 0.43 with the winner: kept
            det(50.0, 50.0, 60.0, 60.0, 0.3, 0),
        ];
        nms(&mut boxes, 0.45, 300);
        let confs: Vec<f32> = boxes.iter().map(|d| d.conf).collect();
        assert_eq!(confs, [0.9, 0.7, 0.6, 0.3]);

        let mut many: Vec<Detection> = (0..400)
            .map(|i| det(i as f32 * 20.0, 0.0, i as f32 * 20.0 + 10.0, 10.0, 0.5, 0))
            .collect();
        nms(&mut many, 0.45, MAX_DETECTIONS);
        assert_eq!(many.len(), MAX_DETECTIONS);
        nms(&mut Vec::new(), 0.45, 300);
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = det(0.0, 0.0, 10.0, 10.0, 1.0, 0);
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &det(10.0, 0.0, 20.0, 10.0, 1.0, 0)), 0.0);
        assert!((iou(&a, &det(5.0, 0.0, 15.0, 10.0, 1.0, 0)) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou(&det(0.0, 0.0, 0.0, 0.0, 1.0, 0), &det(0.0, 0.0, 0.0, 0.0, 1.0, 0)), 0.0);
    }

    #[test]
    fn class_names_from_ultralytics_dict_or_list() {
        let names = |s: &str| parse_names(s).unwrap();
        assert_eq!(
            names("{0: 'person', 1: 'bicycle', 2: \"traffic light\"}"),
            ["person", "bicycle", "traffic light"]
        );
        assert_eq!(names("{0: 'a, b', 2: 'it\\'s'}"), ["a, b", "class1", "it's"]);
        assert_eq!(names("person,bicycle, car"), ["person", "bicycle", "car"]);
        assert_eq!(names("['person', 'car']"), ["person", "car"]);
        assert_eq!(names("{0: 'square'}"), ["square"]);
        assert_eq!(parse_names("{0: square}"), None);
        assert_eq!(parse_names("{}"), None);
        assert_eq!(parse_names(""), None);

        let mut proto = ModelProto::default();
        assert_eq!(class_names(&proto, 3), ["class0", "class1", "class2"]);
        proto.metadata_props.push(tract_onnx::pb::StringStringEntryProto {
            key: "names".into(),
            value: "{0: 'cat'}".into(),
        });
        assert_eq!(class_names(&proto, 2), ["cat", "class1"]);
    }

    #[test]
    fn letterbox_centres_and_maps_back_with_clamping() {
        let lb = Letterbox::new(1280, 720, 640, 640);
        assert_eq!((lb.content_w, lb.content_h, lb.left, lb.top), (640, 360, 0, 140));
        let d = lb.frame_box(&det(-10.0, 130.0, 320.0, 320.0, 0.5, 3), 1280, 720);
        assert_eq!(d, det(0.0, 0.0, 640.0, 360.0, 0.5, 3));
        let d = lb.frame_box(&det(600.0, 400.0, 700.0, 600.0, 0.5, 3), 1280, 720);
        assert_eq!(d, det(1200.0, 520.0, 1280.0, 720.0, 0.5, 3));

        let lb = Letterbox::new(96, 128, 64, 64);
        assert_eq!((lb.content_w, lb.content_h, lb.left, lb.top), (48, 64, 8, 0));
    }

    #[test]
    fn conversion_is_bt709_full_range_with_gray_padding() {
        // 4x2 picture into an 8x8 input: scale 2, content 8x4, rows 0..2 and 6..8 padded.
        // Left half: Y 128, Cb 128, Cr 255 (red-ish); right half: Y 255, neutral (white).
        let mut p = Picture::default();
        p.reset(4, 2);
        p.y.copy_from_slice(&[128, 128, 255, 255, 128, 128, 255, 255]);
        p.u.copy_from_slice(&[128, 128]);
        p.v.copy_from_slice(&[255, 128]);
        let lb = Letterbox::new(4, 2, 8, 8);
        assert_eq!((lb.content_w, lb.content_h, lb.left, lb.top), (8, 4, 0, 2));
        let mut columns = Vec::new();
        build_columns(&lb, 4, &mut columns);
        let mut nchw = vec![f32::NAN; 3 * 64];
        picture_to_rgb_f32_letterboxed(&p, &lb, &columns, &mut nchw);
        let at = |c: usize, y: usize, x: usize| nchw[c * 64 + y * 8 + x];
        for c in 0..3 {
            for x in 0..8 {
                for y in [0, 1, 6, 7] {
                    assert_eq!(at(c, y, x), PAD_GRAY);
                }
            }
        }
        let near = |got: f32, want: f32| assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        // Column 0 samples only the left chroma and luma 128: Cr - 128 = 127.
        near(at(0, 3, 0), 1.0); // 128 + 1.5748 * 127 = 328 -> clamped
        near(at(1, 3, 0), (128.0 - 0.468_124 * 127.0) / 255.0);
        near(at(2, 3, 0), 128.0 / 255.0);
        // Column 7 samples luma 255 and the right (neutral) chroma.
        for c in 0..3 {
            near(at(c, 4, 7), 1.0);
        }
        assert!(nchw.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
