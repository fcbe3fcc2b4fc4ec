//! A deterministic synthetic camera: moving rectangles over a static textured background.
//!
//! For demos, tests and benchmarks on both ends. Each of the `objects` rectangles lives in its
//! own horizontal lane (the frame height split evenly), moves with a constant velocity and
//! bounces off the frame's left and right edges and its lane's top and bottom, so objects
//! never overlap and every run from the same seed gives the same frames.

use super::yuv::{pack, PlaneRef, RawFormat};
use crate::frames::detector::Picture;

/// Room kept between an object's start and the side walls: 12 frames at the top speed.
const START_MARGIN: i32 = 12 * 8;
/// Object lumas: each at least 60 codes from the background (about 90..106).
const LUMAS: [u8; 8] = [200, 30, 175, 230, 20, 165, 215, 40];
/// Object chromas (Cb, Cr), all distinct.
const CHROMAS: [(u8, u8); 8] =
    [(90, 200), (200, 90), (60, 60), (180, 170), (140, 40), (40, 150), (220, 220), (100, 120)];

/// The synthetic source. See the module docs.
#[derive(Debug, Clone)]
pub struct Synthetic {
    background: Picture,
    picture: Picture,
    objects: Vec<Object>,
    truth: Vec<[f32; 4]>,
    started: bool,
}

#[derive(Debug, Clone, Copy)]
struct Object {
    x: i32,
    y: i32,
    w: i32,
    h: i32,
    vx: i32,
    vy: i32,
    lane_top: i32,
    lane_bottom: i32,
    luma: u8,
    cb: u8,
    cr: u8,
}

impl Synthetic {
    /// A `width` x `height` source (cropped to even) with `objects` rectangles placed and
    /// moving as `seed` decides. Rectangles are 24..=47 px wide, up to 48 px tall (less in
    /// thin lanes), and move 5..=8 px per frame across and 1..=3 px up or down. They start at
    /// least 96 px from the side walls (on frames wide enough), so each has moved clear of
    /// its first-frame position within 10 frames, before its first bounce.
    pub fn new(width: u32, height: u32, objects: usize, seed: u64) -> Self {
        let (width, height) = (width & !1, height & !1);
        let mut rng = XorShift::new(seed);
        let mut background = Picture::default();
        background.reset(width, height);
        let (w, h) = (width as usize, height as usize);
        for r in 0..h {
            for c in 0..w {
                // Mild texture: a fixed hash, 16 codes of spread around 98.
                let t = (c * 7 + r * 13) ^ ((c >> 3) * 5 + (r >> 3) * 3);
                background.y[r * w + c] = 90 + (t % 17) as u8;
            }
        }
        let cw = w / 2;
        for r in 0..h / 2 {
            for c in 0..cw {
                background.u[r * cw + c] = 120 + ((c * 16) / cw.max(1)) as u8;
                background.v[r * cw + c] = 120 + ((r * 32) / (h / 2).max(1)) as u8;
            }
        }

        let lane = if objects == 0 { 0 } else { height as i32 / objects as i32 };
        let mut list = Vec::with_capacity(objects);
        for i in 0..objects {
            let lane_top = lane * i as i32;
            let lane_bottom = lane_top + lane;
            let w_obj = (24 + rng.below(24) as i32).min(width as i32 / 2).max(2);
            let h_obj = (24 + rng.below(25) as i32).min(lane - 2).max(2);
            // Start at least START_MARGIN from the side walls (when the frame is wide enough),
            // so an object moves clear of where it started before its first bounce.
            let margin = START_MARGIN.min((width as i32 - w_obj) / 4).max(0);
            let span = (width as i32 - w_obj - 2 * margin).max(1);
            let x = margin + rng.below(span as u32) as i32;
            let y = lane_top + rng.below((lane - h_obj).max(1) as u32) as i32;
            let sign = |r: &mut XorShift| if r.below(2) == 0 { 1 } else { -1 };
            let vx = (5 + rng.below(4) as i32) * sign(&mut rng);
            let vy = (1 + rng.below(3) as i32) * sign(&mut rng);
            let (cb, cr) = CHROMAS[i % CHROMAS.len()];
            list.push(Object {
                x,
                y,
                w: w_obj,
                h: h_obj,
                vx,
                vy,
                lane_top,
                lane_bottom,
                luma: LUMAS[i % LUMAS.len()],
                cb,
                cr,
            });
        }
        let mut source = Self {
            picture: background.clone(),
            background,
            objects: list,
            truth: Vec::with_capacity(objects),
            started: false,
        };
        source.render();
        source
    }

    /// Advances one frame and returns it. The first call returns the initial positions.
    pub fn next_picture(&mut self) -> &Picture {
        if self.started {
            let (width, _) = (self.picture.width as i32, self.picture.height);
            for o in &mut self.objects {
                o.step(width);
            }
            self.render();
        }
        self.started = true;
        &self.picture
    }

    /// The xyxy boxes (right and bottom exclusive) of the rectangles in the current picture,
    /// one per object in creation order.
    pub fn truth(&self) -> &[[f32; 4]] {
        &self.truth
    }

    /// Advances one frame and packs it into `out` in `format`'s tight layout.
    pub fn frame(&mut self, format: RawFormat, out: &mut Vec<u8>) -> ([PlaneRef; 3], usize) {
        self.next_picture();
        pack(&self.picture, format, out)
    }

    fn render(&mut self) {
        let p = &mut self.picture;
        p.y.copy_from_slice(&self.background.y);
        p.u.copy_from_slice(&self.background.u);
        p.v.copy_from_slice(&self.background.v);
        let (w, cw) = (p.width as usize, p.width as usize / 2);
        self.truth.clear();
        for o in &self.objects {
            let (x1, y1) = (o.x.max(0) as usize, o.y.max(0) as usize);
            let x2 = ((o.x + o.w) as usize).min(w);
            let y2 = ((o.y + o.h) as usize).min(p.height as usize);
            for r in y1..y2 {
                p.y[r * w + x1..r * w + x2].fill(o.luma);
            }
            for r in y1 / 2..y2.div_ceil(2) {
                let row = r * cw;
                p.u[row + x1 / 2..row + x2.div_ceil(2)].fill(o.cb);
                p.v[row + x1 / 2..row + x2.div_ceil(2)].fill(o.cr);
            }
            self.truth.push([x1 as f32, y1 as f32, x2 as f32, y2 as f32]);
        }
    }
}

impl Object {
    fn step(&mut self, width: i32) {
        if self.x + self.vx < 0 || self.x + self.vx + self.w > width {
            self.vx = -self.vx;
        }
        if self.y + self.vy < self.lane_top || self.y + self.vy + self.h > self.lane_bottom {
            self.vy = -self.vy;
        }
        self.x = (self.x + self.vx).clamp(0, (width - self.w).max(0));
        self.y =
            (self.y + self.vy).clamp(self.lane_top, (self.lane_bottom - self.h).max(self.lane_top));
    }
}

/// xorshift64*, seeded through splitmix64 so that any seed (0 too) works.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u32) -> u32 {
        (self.next() >> 32) as u32 % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::yuv::unpack;
    use super::*;

    #[test]
    fn deterministic_from_seed() {
        let mut a = Synthetic::new(320, 240, 3, 42);
        let mut b = Synthetic::new(320, 240, 3, 42);
        let mut c = Synthetic::new(320, 240, 3, 43);
        let mut differs = false;
        for _ in 0..10 {
            let (pa, pb, pc) =
                (a.next_picture().clone(), b.next_picture().clone(), c.next_picture());
            assert_eq!(pa.y, pb.y);
            differs |= pa.y != pc.y;
        }
        assert_eq!(a.truth(), b.truth());
        assert!(differs, "different seeds should give different scenes");
    }

    #[test]
    fn rectangles_move_stay_inside_and_do_not_overlap() {
        let mut s = Synthetic::new(640, 480, 3, 1);
        s.next_picture();
        let first = s.truth().to_vec();
        for _ in 0..200 {
            let p = s.next_picture();
            let (w, h) = (p.width as f32, p.height as f32);
            let boxes = s.truth();
            assert_eq!(boxes.len(), 3);
            for (i, b) in boxes.iter().enumerate() {
                assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= w && b[3] <= h, "{b:?}");
                for other in &boxes[i + 1..] {
                    let apart = b[2] <= other[0]
                        || other[2] <= b[0]
                        || b[3] <= other[1]
                        || other[3] <= b[1];
                    assert!(apart, "{b:?} overlaps {other:?}");
                }
            }
        }
        assert_ne!(first, s.truth());
    }

    #[test]
    fn pictures_show_the_rectangles() {
        let mut s = Synthetic::new(128, 96, 2, 5);
        let p = s.next_picture().clone();
        for (b, luma) in s.truth().iter().zip(LUMAS) {
            let (x, y) = (b[0] as usize + 1, b[1] as usize + 1);
            assert_eq!(p.y[y * 128 + x], luma);
        }
        let mut data = Vec::new();
        let (planes, used) = s.frame(RawFormat::Nv12, &mut data);
        let mut back = Picture::default();
        unpack(RawFormat::Nv12, &data, 128, 96, &planes[..used], &mut back);
        assert_ne!(back.y, p.y, "frame() advances");
    }
}
