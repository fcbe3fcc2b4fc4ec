//! The built-in classical detector: background subtraction on luma with connected components.
//!
//! Per frame, on luma downscaled by [`MotionConfig::scale`] (box average):
//! 1. difference against a fixed-point (8.8) background; a pixel is foreground when the
//!    difference exceeds [`MotionConfig::threshold`];
//! 2. the background learns only where the pixel is background (running average, rate
//!    `1 / 2^learn_shift`), so moving objects leave no trail; a foreground pixel that has not
//!    changed for [`MotionConfig::absorb_frames`] frames is absorbed (a stopped object fades
//!    into the background);
//! 3. a 3x3 morphological opening removes specks (axis-aligned boxes survive it exactly);
//! 4. two-pass connected components (8-connected, union-find, no recursion) give one box per
//!    blob, mapped back to full-resolution xyxy pixels; blobs under
//!    [`MotionConfig::min_area`] are dropped;
//! 5. ghost test: a blob whose outline is an edge in the background but not in the current
//!    frame is revealed background, not an object; it is healed into the background at once
//!    and not reported.
//!
//! The first frame initialises the background and yields no detections. Objects already in
//! that frame are part of the background: they appear once they move, and until they have
//! moved clear of where they started, their box also covers the start position (the ghost);
//! the ghost is healed the frame it separates. Confidence is half the blob's fill of its box
//! and half its mean contrast (relative to four times the threshold), in `0..=1`.
//!
//! Deterministic. The buffers are sized on the first frame and reused; they are re-sized
//! (and the background restarted) when the picture's dimensions change.

use crate::frames::detector::Picture;
use crate::frames::detector::{DetectError, Detection, Detector, DetectorFactory, ModelIdentity};

/// Tuning of the [`MotionDetector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MotionConfig {
    /// Downscale factor before processing: 1, 2 or 4 (other values are clamped into that
    /// range). Boxes are accurate to about `scale - 1` pixels.
    pub scale: u32,
    /// Luma difference from the background above which a pixel is foreground.
    pub threshold: u8,
    /// Smallest blob reported, in full-resolution pixels.
    pub min_area: u32,
    /// Background learning rate is `1 / 2^learn_shift` per frame.
    pub learn_shift: u32,
    /// Frames a foreground pixel must stay unchanged before it joins the background.
    pub absorb_frames: u16,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self { scale: 2, threshold: 24, min_area: 64, learn_shift: 4, absorb_frames: 60 }
    }
}

/// Makes [`MotionDetector`]s: family "classical", name "motion", version "1", one class
/// "object".
#[derive(Debug, Clone)]
pub struct MotionFactory {
    identity: ModelIdentity,
    config: MotionConfig,
}

impl MotionFactory {
    /// A factory with the default [`MotionConfig`].
    pub fn new() -> Self {
        Self::with_config(MotionConfig::default())
    }

    /// A factory whose detectors use `config`.
    pub fn with_config(config: MotionConfig) -> Self {
        Self { identity: identity(), config }
    }
}

impl Default for MotionFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl DetectorFactory for MotionFactory {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn make(&self) -> Box<dyn Detector> {
        Box::new(MotionDetector::new(self.config))
    }
}

/// The motion detector for one stream. See the module docs.
#[derive(Debug, Clone)]
pub struct MotionDetector {
    identity: ModelIdentity,
    config: MotionConfig,
    /// Full-resolution dimensions the buffers are sized for; 0 before the first frame.
    width: u32,
    height: u32,
    /// Downscaled dimensions.
    sw: usize,
    sh: usize,
    cur: Vec<u8>,
    prev: Vec<u8>,
    /// Background, 8.8 fixed point.
    background: Vec<u16>,
    /// Frames each pixel has stayed unchanged (saturating).
    still: Vec<u16>,
    diff: Vec<u8>,
    mask: Vec<u8>,
    tmp: Vec<u8>,
    labels: Vec<u32>,
    parent: Vec<u32>,
    blobs: Vec<Blob>,
}

impl MotionDetector {
    /// A detector with `config`; its buffers are sized by the first picture.
    pub fn new(config: MotionConfig) -> Self {
        let config = MotionConfig { scale: config.scale.clamp(1, 4), ..config };
        Self {
            identity: identity(),
            config,
            width: 0,
            height: 0,
            sw: 0,
            sh: 0,
            cur: Vec::new(),
            prev: Vec::new(),
            background: Vec::new(),
            still: Vec::new(),
            diff: Vec::new(),
            mask: Vec::new(),
            tmp: Vec::new(),
            labels: Vec::new(),
            parent: Vec::new(),
            blobs: Vec::new(),
        }
    }
}

impl Detector for MotionDetector {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn detect(&mut self, picture: &Picture, out: &mut Vec<Detection>) -> Result<(), DetectError> {
        let (w, h) = (picture.width as usize, picture.height as usize);
        if picture.y.len() < w * h {
            return Err(DetectError::Internal(format!(
                "luma plane has {} bytes, expected {}",
                picture.y.len(),
                w * h
            )));
        }
        if picture.width != self.width || picture.height != self.height {
            self.resize(picture);
            return Ok(());
        }
        if self.sw == 0 || self.sh == 0 {
            return Ok(());
        }
        downscale(picture, self.config.scale as usize, self.sw, self.sh, &mut self.cur);
        self.update_background();
        self.open();
        let labels = self.label();
        self.emit(labels, out);
        Ok(())
    }
}

/// Per-blob statistics gathered by the second labelling pass.
#[derive(Debug, Clone, Copy, Default)]
struct Blob {
    min_x: u32,
    min_y: u32,
    max_x: u32,
    max_y: u32,
    count: u32,
    diff_sum: u32,
    /// Contrast across the blob's outline in the current frame and in the background.
    cur_edge: u32,
    bg_edge: u32,
}

const EMPTY_BLOB: Blob = Blob {
    min_x: u32::MAX,
    min_y: u32::MAX,
    max_x: 0,
    max_y: 0,
    count: 0,
    diff_sum: 0,
    cur_edge: 0,
    bg_edge: 0,
};

fn identity() -> ModelIdentity {
    ModelIdentity {
        family: "classical".into(),
        name: "motion".into(),
        version: "1".into(),
        classes: vec!["object".into()],
    }
}

impl MotionDetector {
    /// Sizes every buffer for `picture` and starts the background from it.
    #[cold]
    #[inline(never)]
    fn resize(&mut self, picture: &Picture) {
        let s = self.config.scale as usize;
        self.width = picture.width;
        self.height = picture.height;
        self.sw = picture.width as usize / s;
        self.sh = picture.height as usize / s;
        let n = self.sw * self.sh;
        downscale(picture, s, self.sw, self.sh, &mut self.cur);
        self.prev.clone_from(&self.cur);
        self.background.clear();
        self.background.extend(self.cur.iter().map(|&y| u16::from(y) << 8));
        for buf in [&mut self.diff, &mut self.mask, &mut self.tmp] {
            buf.clear();
            buf.resize(n, 0);
        }
        self.still.clear();
        self.still.resize(n, 0);
        self.labels.clear();
        self.labels.resize(n, 0);
        self.parent.clear();
        self.parent.resize(n + 1, 0);
        self.blobs.clear();
        self.blobs.resize(n + 1, EMPTY_BLOB);
    }

    /// Steps 1 and 2: foreground mask, selective background update, absorption.
    fn update_background(&mut self) {
        let threshold = self.config.threshold;
        let change = (threshold / 2).max(1);
        let (shift, absorb) = (self.config.learn_shift, self.config.absorb_frames);
        let pixels = self
            .cur
            .iter()
            .zip(&mut self.prev)
            .zip(&mut self.background)
            .zip(&mut self.still)
            .zip(&mut self.diff)
            .zip(&mut self.mask);
        for (((((&cur, prev), bg), still), diff), mask) in pixels {
            let d = cur.abs_diff((*bg >> 8) as u8);
            *still = if cur.abs_diff(*prev) > change { 0 } else { still.saturating_add(1) };
            *prev = cur;
            let mut fg = d > threshold;
            if fg && *still >= absorb {
                *bg = u16::from(cur) << 8;
                fg = false;
            } else if !fg {
                let target = i32::from(cur) << 8;
                let b = i32::from(*bg);
                *bg = (b + ((target - b) >> shift)) as u16;
            }
            *diff = d;
            *mask = u8::from(fg);
        }
    }

    /// Step 3: 3x3 opening (erode then dilate), separable, outside the frame counts as 0.
    fn open(&mut self) {
        let (sw, sh) = (self.sw, self.sh);
        for erode in [true, false] {
            let op = |a: u8, b: u8| if erode { a.min(b) } else { a.max(b) };
            for (src, dst) in self.mask.chunks_exact(sw).zip(self.tmp.chunks_exact_mut(sw)) {
                for c in 0..sw {
                    let left = if c > 0 { src[c - 1] } else { 0 };
                    let right = if c + 1 < sw { src[c + 1] } else { 0 };
                    dst[c] = op(op(left, src[c]), right);
                }
            }
            for r in 0..sh {
                for c in 0..sw {
                    let up = if r > 0 { self.tmp[(r - 1) * sw + c] } else { 0 };
                    let down = if r + 1 < sh { self.tmp[(r + 1) * sw + c] } else { 0 };
                    self.mask[r * sw + c] = op(op(up, self.tmp[r * sw + c]), down);
                }
            }
        }
    }

    /// Step 4: two-pass labelling; returns the number of provisional labels + 1. After it,
    /// `labels` holds root labels and `blobs[root]` the statistics.
    fn label(&mut self) -> usize {
        let (sw, sh) = (self.sw, self.sh);
        let mut next = 1usize;
        for r in 0..sh {
            for c in 0..sw {
                let p = r * sw + c;
                if self.mask[p] == 0 {
                    self.labels[p] = 0;
                    continue;
                }
                let mut label = 0u32;
                let neighbours = [
                    (c > 0).then(|| p - 1),
                    (c > 0 && r > 0).then(|| p - sw - 1),
                    (r > 0).then(|| p - sw),
                    (r > 0 && c + 1 < sw).then(|| p - sw + 1),
                ];
                for q in neighbours.into_iter().flatten() {
                    let other = self.labels[q];
                    if other == 0 {
                        continue;
                    }
                    if label == 0 {
                        label = other;
                    } else if other != label {
                        union(&mut self.parent, label, other);
                    }
                }
                if label == 0 {
                    // next <= pixels, and parent has pixels + 1 entries.
                    label = next as u32;
                    self.parent[next] = label;
                    next += 1;
                }
                self.labels[p] = label;
            }
        }

        self.blobs[..next].fill(EMPTY_BLOB);
        for r in 0..sh {
            for c in 0..sw {
                let p = r * sw + c;
                if self.labels[p] == 0 {
                    continue;
                }
                let root = find(&mut self.parent, self.labels[p]);
                self.labels[p] = root;
                let (mut cur_edge, mut bg_edge) = (0u32, 0u32);
                let outside = [
                    (c > 0).then(|| p - 1),
                    (c + 1 < sw).then(|| p + 1),
                    (r > 0).then(|| p - sw),
                    (r + 1 < sh).then(|| p + sw),
                ];
                for q in outside.into_iter().flatten().filter(|&q| self.mask[q] == 0) {
                    cur_edge += u32::from(self.cur[p].abs_diff(self.cur[q]));
                    let (bp, bq) =
                        ((self.background[p] >> 8) as u8, (self.background[q] >> 8) as u8);
                    bg_edge += u32::from(bp.abs_diff(bq));
                }
                let b = &mut self.blobs[root as usize];
                b.min_x = b.min_x.min(c as u32);
                b.min_y = b.min_y.min(r as u32);
                b.max_x = b.max_x.max(c as u32);
                b.max_y = b.max_y.max(r as u32);
                b.count += 1;
                b.diff_sum += u32::from(self.diff[p]);
                b.cur_edge += cur_edge;
                b.bg_edge += bg_edge;
            }
        }
        next
    }

    /// Step 5 and output: ghost healing, area filter, boxes in full-resolution pixels.
    fn emit(&mut self, labels: usize, out: &mut Vec<Detection>) {
        let s = self.config.scale;
        let sw = self.sw;
        for label in 1..labels {
            if self.parent[label] as usize != label {
                continue;
            }
            let b = self.blobs[label];
            if b.count * s * s < self.config.min_area {
                continue;
            }
            if b.bg_edge > 2 * b.cur_edge {
                for r in b.min_y as usize..=b.max_y as usize {
                    for c in b.min_x as usize..=b.max_x as usize {
                        let p = r * sw + c;
                        if self.labels[p] as usize == label {
                            self.background[p] = u16::from(self.cur[p]) << 8;
                            self.still[p] = 0;
                        }
                    }
                }
                continue;
            }
            let (bw, bh) = (b.max_x - b.min_x + 1, b.max_y - b.min_y + 1);
            let fill = b.count as f32 / (bw * bh) as f32;
            let contrast =
                b.diff_sum as f32 / b.count as f32 / (4.0 * f32::from(self.config.threshold));
            out.push(Detection {
                x1: (b.min_x * s) as f32,
                y1: (b.min_y * s) as f32,
                x2: ((b.max_x + 1) * s) as f32,
                y2: ((b.max_y + 1) * s) as f32,
                conf: (0.5 * fill + 0.5 * contrast.min(1.0)).clamp(0.0, 1.0),
                class: 0,
                track_id: 0,
            });
        }
    }
}

/// Box-averages the luma plane by `s` into `out` (`sw` x `sh`).
fn downscale(picture: &Picture, s: usize, sw: usize, sh: usize, out: &mut Vec<u8>) {
    out.resize(sw * sh, 0);
    let w = picture.width as usize;
    if s == 1 {
        out.copy_from_slice(&picture.y[..sw * sh]);
        return;
    }
    let (area, round) = ((s * s) as u32, (s * s / 2) as u32);
    for (r, row) in out.chunks_exact_mut(sw).enumerate() {
        for (c, px) in row.iter_mut().enumerate() {
            let mut sum = 0u32;
            for dy in 0..s {
                let src = &picture.y[(r * s + dy) * w + c * s..][..s];
                sum += src.iter().map(|&y| u32::from(y)).sum::<u32>();
            }
            *px = ((sum + round) / area) as u8;
        }
    }
}

/// The root of `x`, halving the path on the way.
fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let grand = parent[parent[x as usize] as usize];
        parent[x as usize] = grand;
        x = grand;
    }
    x
}

/// Joins the sets of `a` and `b`; the smaller root wins, so roots are in raster order.
fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra < rb {
        parent[rb as usize] = ra;
    } else if rb < ra {
        parent[ra as usize] = rb;
    }
}

#[cfg(test)]
mod tests {
    use super::super::synthetic::Synthetic;
    use super::super::track::Tracker;
    use super::*;

    /// Frames before the assertions start: long enough for every object present in frame 1
    /// to move clear of its start position (widths <= 47 px, speeds >= 5 px per frame, no
    /// bounce before that; see `Synthetic::new`).
    const WARM_UP: usize = 10;
    /// Corner tolerance asserted, pixels.
    const TOLERANCE: f32 = 4.0;

    fn corner_error(d: &Detection, t: &[f32; 4]) -> f32 {
        [d.x1 - t[0], d.y1 - t[1], d.x2 - t[2], d.y2 - t[3]]
            .iter()
            .fold(0.0f32, |m, e| m.max(e.abs()))
    }

    #[test]
    fn identity_is_classical_motion() {
        let f = MotionFactory::new();
        let id = f.identity();
        assert_eq!(
            (id.family.as_str(), id.name.as_str(), id.version.as_str()),
            ("classical", "motion", "1")
        );
        assert_eq!(id.classes, ["object"]);
        assert_eq!(f.make().identity(), id);
    }

    #[test]
    fn finds_every_rectangle_and_tracks_it_stably() {
        for seed in 1u64..=10 {
            let mut source = Synthetic::new(640, 480, 3, seed);
            let mut detector = MotionFactory::new().make();
            let mut tracker = Tracker::new();
            let mut out = Vec::new();
            let mut ids: Vec<Option<u32>> = vec![None; 3];
            let mut worst = 0.0f32;
            for frame in 0..30 {
                let picture = source.next_picture().clone();
                out.clear();
                detector.detect(&picture, &mut out).expect("detect");
                tracker.update(&mut out);
                if frame < WARM_UP {
                    continue;
                }
                assert_eq!(
                    out.len(),
                    3,
                    "seed {seed} frame {frame}: {out:?} vs {:?}",
                    source.truth()
                );
                for (i, t) in source.truth().iter().enumerate() {
                    let best = out
                        .iter()
                        .min_by(|a, b| corner_error(a, t).total_cmp(&corner_error(b, t)))
                        .expect("a detection");
                    let err = corner_error(best, t);
                    worst = worst.max(err);
                    assert!(err <= TOLERANCE, "seed {seed} frame {frame}: {t:?} best {best:?}");
                    assert!(best.conf > 0.5 && best.conf <= 1.0, "{best:?}");
                    assert_ne!(best.track_id, 0);
                    let id = ids[i].get_or_insert(best.track_id);
                    assert_eq!(
                        *id, best.track_id,
                        "seed {seed} frame {frame}: object {i} changed id"
                    );
                }
            }
            println!("seed {seed}: max corner error {worst} px");
        }
    }

    #[test]
    fn static_scene_gives_no_boxes_even_with_noise() {
        let mut source = Synthetic::new(640, 480, 0, 9);
        let mut detector = MotionDetector::new(MotionConfig::default());
        let mut out = Vec::new();
        let mut noise = 0x1234_5678u32;
        for frame in 0..30 {
            let mut picture = source.next_picture().clone();
            for y in &mut picture.y {
                noise ^= noise << 13;
                noise ^= noise >> 17;
                noise ^= noise << 5;
                *y = y.saturating_add((noise % 7) as u8).saturating_sub(3);
            }
            out.clear();
            detector.detect(&picture, &mut out).expect("detect");
            assert!(out.is_empty(), "frame {frame}: {out:?}");
        }
    }

    #[test]
    fn stopped_object_is_absorbed_and_ghosts_heal() {
        // Frame 1 empty, then a square appears and stays: detected, then absorbed.
        let config = MotionConfig { absorb_frames: 5, ..MotionConfig::default() };
        let mut detector = MotionDetector::new(config);
        let mut empty = Picture::default();
        empty.reset(64, 64);
        empty.y.fill(100);
        let mut with = empty.clone();
        for r in 20..40 {
            with.y[r * 64 + 10..r * 64 + 30].fill(200);
        }
        let mut out = Vec::new();
        detector.detect(&empty, &mut out).expect("detect");
        assert!(out.is_empty());
        detector.detect(&with, &mut out).expect("detect");
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].x1, out[0].y1, out[0].x2, out[0].y2), (10.0, 20.0, 30.0, 40.0));
        for _ in 0..6 {
            out.clear();
            detector.detect(&with, &mut out).expect("detect");
        }
        assert!(out.is_empty(), "stopped object should be absorbed: {out:?}");
        // It leaves: the revealed background is a ghost, healed at once and not reported.
        out.clear();
        detector.detect(&empty, &mut out).expect("detect");
        assert!(out.is_empty(), "ghost reported: {out:?}");
        out.clear();
        detector.detect(&empty, &mut out).expect("detect");
        assert!(out.is_empty());
    }

    #[test]
    fn resizes_on_new_dimensions() {
        let mut detector = MotionDetector::new(MotionConfig::default());
        let mut out = Vec::new();
        let mut a = Synthetic::new(320, 240, 2, 4);
        let mut b = Synthetic::new(160, 120, 2, 4);
        for _ in 0..3 {
            detector.detect(a.next_picture(), &mut out).expect("detect");
        }
        out.clear();
        detector.detect(b.next_picture(), &mut out).expect("detect");
        assert!(out.is_empty(), "a new size restarts the background");
        let bad = Picture { width: 8, height: 8, ..Picture::default() };
        assert!(detector.detect(&bad, &mut out).is_err());
    }
}
