//! Track ids that follow an object across frames: greedy IoU matching.
//!
//! Each update pairs detections with live tracks best-IoU first (ties to the lower index,
//! so the result is deterministic), accepting pairs at or above the IoU threshold. A matched
//! track takes the detection's box; an unmatched detection starts a new track with the next
//! id (1, 2, ...); a track missed for more than `max_missed` updates in a row is dropped.
//! The track list is bounded by [`MAX_TRACKS`] and allocated once, so updates allocate
//! nothing.

use crate::frames::detector::Detection;

/// Most tracks alive at once; detections beyond that stay untracked (`track_id` 0).
pub const MAX_TRACKS: usize = 256;
/// Default IoU a detection needs with a track's last box to continue it.
pub const IOU_THRESHOLD: f32 = 0.3;
/// Default updates a track survives without a match.
pub const MAX_MISSED: u32 = 10;

/// Greedy IoU tracker for one stream.
#[derive(Debug, Clone)]
pub struct Tracker {
    tracks: Vec<Track>,
    next_id: u32,
    iou_threshold: f32,
    max_missed: u32,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    id: u32,
    bbox: [f32; 4],
    missed: u32,
    matched: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// A tracker with [`IOU_THRESHOLD`] and [`MAX_MISSED`].
    pub fn new() -> Self {
        Self::with_params(IOU_THRESHOLD, MAX_MISSED)
    }

    /// A tracker matching at `iou_threshold` and keeping tracks for `max_missed` missed updates.
    pub fn with_params(iou_threshold: f32, max_missed: u32) -> Self {
        Self { tracks: Vec::with_capacity(MAX_TRACKS), next_id: 1, iou_threshold, max_missed }
    }

    /// Live tracks.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    /// Whether no track is alive.
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Sets `track_id` on every detection of this frame (0 only when [`MAX_TRACKS`] are
    /// alive and none matches), then ages and drops unmatched tracks.
    pub fn update(&mut self, detections: &mut [Detection]) {
        for d in detections.iter_mut() {
            d.track_id = 0;
        }
        for t in &mut self.tracks {
            t.matched = false;
        }
        // Greedy: repeatedly take the best remaining pair. O(min(D, T) * D * T), fine for the
        // tens of boxes a frame carries, and needs no scratch.
        loop {
            let mut best: Option<(usize, usize, f32)> = None;
            for (di, d) in detections.iter().enumerate().filter(|(_, d)| d.track_id == 0) {
                let dbox = [d.x1, d.y1, d.x2, d.y2];
                for (ti, t) in self.tracks.iter().enumerate().filter(|(_, t)| !t.matched) {
                    let score = iou(&dbox, &t.bbox);
                    if score >= self.iou_threshold && best.is_none_or(|(_, _, s)| score > s) {
                        best = Some((di, ti, score));
                    }
                }
            }
            let Some((di, ti, _)) = best else { break };
            let d = &mut detections[di];
            let t = &mut self.tracks[ti];
            d.track_id = t.id;
            t.bbox = [d.x1, d.y1, d.x2, d.y2];
            t.missed = 0;
            t.matched = true;
        }
        let max_missed = self.max_missed;
        self.tracks.retain_mut(|t| {
            if !t.matched {
                t.missed += 1;
            }
            t.missed <= max_missed
        });
        for d in detections.iter_mut().filter(|d| d.track_id == 0) {
            if self.tracks.len() >= MAX_TRACKS {
                break;
            }
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            d.track_id = id;
            self.tracks.push(Track {
                id,
                bbox: [d.x1, d.y1, d.x2, d.y2],
                missed: 0,
                matched: true,
            });
        }
    }
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    crate::frames::detector::iou(*a, *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, y: f32, w: f32, h: f32) -> Detection {
        Detection { x1: x, y1: y, x2: x + w, y2: y + h, conf: 0.9, class: 0, track_id: 0 }
    }

    #[test]
    fn ids_stay_with_moving_objects() {
        let mut t = Tracker::new();
        for f in 0..50 {
            let f = f as f32;
            // Listed in changing order: ids follow the boxes, not the positions in the slice.
            let mut ds =
                [det(10.0 + 3.0 * f, 10.0, 40.0, 40.0), det(400.0 - 4.0 * f, 200.0, 30.0, 30.0)];
            if f as u32 % 2 == 1 {
                ds.swap(0, 1);
            }
            t.update(&mut ds);
            let (a, b) = if f as u32 % 2 == 1 { (ds[1], ds[0]) } else { (ds[0], ds[1]) };
            assert_eq!((a.track_id, b.track_id), (1, 2), "frame {f}");
        }
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_new_object_gets_a_new_id() {
        let mut t = Tracker::new();
        let mut ds = [det(0.0, 0.0, 20.0, 20.0)];
        t.update(&mut ds);
        assert_eq!(ds[0].track_id, 1);
        let mut ds = [det(1.0, 0.0, 20.0, 20.0), det(100.0, 100.0, 20.0, 20.0)];
        t.update(&mut ds);
        assert_eq!((ds[0].track_id, ds[1].track_id), (1, 2));
        // Far from both: not a continuation.
        let mut ds = [det(300.0, 300.0, 20.0, 20.0)];
        t.update(&mut ds);
        assert_eq!(ds[0].track_id, 3);
    }

    #[test]
    fn tracks_expire_after_max_missed() {
        let mut t = Tracker::new();
        let mut ds = [det(0.0, 0.0, 20.0, 20.0)];
        t.update(&mut ds);
        for _ in 0..MAX_MISSED {
            t.update(&mut []);
        }
        assert_eq!(t.len(), 1, "still alive after {MAX_MISSED} misses");
        let mut ds = [det(0.0, 0.0, 20.0, 20.0)];
        t.update(&mut ds);
        assert_eq!(ds[0].track_id, 1, "a track comes back within the window");
        for _ in 0..=MAX_MISSED {
            t.update(&mut []);
        }
        assert!(t.is_empty());
        let mut ds = [det(0.0, 0.0, 20.0, 20.0)];
        t.update(&mut ds);
        assert_eq!(ds[0].track_id, 2, "an expired track is not revived");
    }

    #[test]
    fn overlapping_candidates_go_to_the_best_match_deterministically() {
        let mut t = Tracker::new();
        let mut ds = [det(0.0, 0.0, 20.0, 20.0), det(30.0, 0.0, 20.0, 20.0)];
        t.update(&mut ds);
        let mut ds = [det(26.0, 0.0, 20.0, 20.0), det(4.0, 0.0, 20.0, 20.0)];
        t.update(&mut ds);
        assert_eq!((ds[0].track_id, ds[1].track_id), (2, 1));
        assert!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 0.0, 0.0]) == 0.0);
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
    }
}
