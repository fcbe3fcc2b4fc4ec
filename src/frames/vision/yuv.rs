//! Raw 4:2:0 layouts (NV12, I420) to and from the planar [`Picture`], and YCbCr <-> RGB.
//!
//! [`unpack`] honours each plane's stride and offset as the wire describes them; [`pack`]
//! writes the tight layout of [`plane_layout`]. Colour conversion uses 16-bit fixed point
//! and is within one or two codes of the float formula (see the tests).

use crate::frames::detector::Picture;

/// A raw 4:2:0 pixel layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFormat {
    /// Y plane, then one plane of interleaved U, V (Cb, Cr) pairs at half height.
    Nv12,
    /// Y plane, then U (Cb), then V (Cr), each chroma plane half width and half height.
    I420,
}

/// Where one plane sits in a frame's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlaneRef {
    /// Bytes from one row's start to the next.
    pub stride: usize,
    /// Byte offset of the plane's first row in the data.
    pub offset: usize,
    /// Bytes the plane occupies (at least `stride * rows`).
    pub size: usize,
}

/// The tight layout (stride = row bytes, planes back to back) of a `width` x `height` frame:
/// the planes, how many of them are used (NV12 2, I420 3; unused ones are zero), and the
/// total bytes.
pub fn plane_layout(format: RawFormat, width: u32, height: u32) -> ([PlaneRef; 3], usize, usize) {
    let (w, h) = (width as usize, height as usize);
    let luma = PlaneRef { stride: w, offset: 0, size: w * h };
    match format {
        RawFormat::Nv12 => {
            let uv = PlaneRef { stride: w, offset: luma.size, size: w * (h / 2) };
            ([luma, uv, PlaneRef::default()], 2, luma.size + uv.size)
        }
        RawFormat::I420 => {
            let (cw, ch) = (w / 2, h / 2);
            let u = PlaneRef { stride: cw, offset: luma.size, size: cw * ch };
            let v = PlaneRef { stride: cw, offset: u.offset + u.size, size: cw * ch };
            ([luma, u, v], 3, v.offset + v.size)
        }
    }
}

/// Copies a raw frame into `out` (resized to `width` x `height`), row by row honouring each
/// plane's stride and offset; NV12's interleaved chroma is split into U and V.
///
/// The caller has validated `planes` against `data`; should a row still fall outside `data`
/// it is left zero rather than panicking.
pub fn unpack(
    format: RawFormat,
    data: &[u8],
    width: u32,
    height: u32,
    planes: &[PlaneRef],
    out: &mut Picture,
) {
    out.reset(width, height);
    let (w, h) = (width as usize, height as usize);
    let (cw, ch) = (w / 2, h / 2);
    let needed = match format {
        RawFormat::Nv12 => 2,
        RawFormat::I420 => 3,
    };
    debug_assert!(planes.len() >= needed, "{format:?} needs {needed} planes");
    if planes.len() < needed {
        out.y.fill(0);
        out.u.fill(0);
        out.v.fill(0);
        return;
    }
    copy_plane(data, planes[0], w, h, &mut out.y);
    match format {
        RawFormat::Nv12 => {
            let plane = planes[1];
            for r in 0..ch {
                let dst_u = &mut out.u[r * cw..(r + 1) * cw];
                let dst_v = &mut out.v[r * cw..(r + 1) * cw];
                match row(data, plane, r, cw * 2) {
                    Some(src) => {
                        for ((pair, u), v) in src.chunks_exact(2).zip(dst_u).zip(dst_v) {
                            *u = pair[0];
                            *v = pair[1];
                        }
                    }
                    None => {
                        dst_u.fill(0);
                        dst_v.fill(0);
                    }
                }
            }
        }
        RawFormat::I420 => {
            copy_plane(data, planes[1], cw, ch, &mut out.u);
            copy_plane(data, planes[2], cw, ch, &mut out.v);
        }
    }
}

/// Writes `picture` into `out` (cleared first) in `format`'s tight layout; returns the planes
/// and how many are used, as [`plane_layout`] gives them.
pub fn pack(picture: &Picture, format: RawFormat, out: &mut Vec<u8>) -> ([PlaneRef; 3], usize) {
    let (planes, used, total) = plane_layout(format, picture.width, picture.height);
    out.clear();
    out.reserve(total);
    out.extend_from_slice(&picture.y);
    match format {
        RawFormat::Nv12 => {
            for (u, v) in picture.u.iter().zip(&picture.v) {
                out.push(*u);
                out.push(*v);
            }
        }
        RawFormat::I420 => {
            out.extend_from_slice(&picture.u);
            out.extend_from_slice(&picture.v);
        }
    }
    debug_assert_eq!(out.len(), total, "picture planes do not match its dimensions");
    (planes, used)
}

/// The YCbCr matrix and range a stream uses.
///
/// [`Default`] is BT.709 full range, the seed's default; [`ColorSpec::from_names`] falls back
/// to it field by field for names it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColorSpec {
    /// BT.709 matrix when true, BT.601 when false.
    pub bt709: bool,
    /// Full range (0..=255 for all three) when true; limited (Y 16..=235, C 16..=240) when false.
    pub full_range: bool,
}

impl Default for ColorSpec {
    fn default() -> Self {
        Self { bt709: true, full_range: true }
    }
}

impl ColorSpec {
    /// JFIF's convention (BT.601 matrix, full range), which JPEG files use.
    pub const JFIF: Self = Self { bt709: false, full_range: true };

    /// From the InitOk names: `color_space` "BT.709" or "BT.601" (also "bt709", "709", ...),
    /// `color_range` "full" or "limited" ("tv" and "pc" too). Case-insensitive; unknown or
    /// empty names take the default (BT.709, full).
    pub fn from_names(color_space: &str, color_range: &str) -> Self {
        let space: String = color_space
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let bt709 = !matches!(space.as_str(), "bt601" | "601" | "smpte170m" | "bt470bg");
        let full_range = !matches!(
            color_range.trim().to_ascii_lowercase().as_str(),
            "limited" | "tv" | "mpeg" | "studio"
        );
        Self { bt709, full_range }
    }
}

/// Converts `picture` to interleaved RGB24 in `out` (resized to `width * height * 3`),
/// upsampling chroma by nearest neighbour.
pub fn to_rgb(picture: &Picture, color: ColorSpec, out: &mut Vec<u8>) {
    let (w, h) = (picture.width as usize, picture.height as usize);
    let cw = w / 2;
    out.clear();
    out.resize(w * h * 3, 0);
    if picture.y.len() < w * h || picture.u.len() < cw * (h / 2) || picture.v.len() < cw * (h / 2) {
        debug_assert!(false, "picture planes do not match its dimensions");
        return;
    }
    let k = Inverse::new(color);
    for (r, rgb_row) in out.chunks_exact_mut(w * 3).enumerate() {
        let y_row = &picture.y[r * w..(r + 1) * w];
        let u_row = &picture.u[(r / 2) * cw..(r / 2 + 1) * cw];
        let v_row = &picture.v[(r / 2) * cw..(r / 2 + 1) * cw];
        for (c, (px, &y)) in rgb_row.chunks_exact_mut(3).zip(y_row).enumerate() {
            let [red, green, blue] = k.apply(y, u_row[c / 2], v_row[c / 2]);
            px[0] = red;
            px[1] = green;
            px[2] = blue;
        }
    }
}

/// Converts interleaved RGB24 (`width * height * 3` bytes) to a 4:2:0 picture in `out`, each
/// chroma sample the mean of its 2x2 block. Odd dimensions are cropped to even; a short
/// `rgb` leaves `out` zeroed.
pub fn rgb_to_picture(rgb: &[u8], width: u32, height: u32, color: ColorSpec, out: &mut Picture) {
    let (ew, eh) = (width & !1, height & !1);
    out.reset(ew, eh);
    let (src_w, w, h) = (width as usize, ew as usize, eh as usize);
    if rgb.len() < src_w * height as usize * 3 {
        debug_assert!(false, "rgb buffer shorter than width * height * 3");
        out.y.fill(0);
        out.u.fill(0);
        out.v.fill(0);
        return;
    }
    let k = Forward::new(color);
    let cw = w / 2;
    for r in 0..h {
        for c in 0..w {
            let i = (r * src_w + c) * 3;
            out.y[r * w + c] = k.luma([rgb[i], rgb[i + 1], rgb[i + 2]]);
        }
    }
    for r in 0..h / 2 {
        for c in 0..cw {
            let mut sum = [0i32; 3];
            for (dr, dc) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let i = ((2 * r + dr) * src_w + 2 * c + dc) * 3;
                for (s, &p) in sum.iter_mut().zip(&rgb[i..i + 3]) {
                    *s += i32::from(p);
                }
            }
            let (u, v) = k.chroma(sum);
            out.u[r * cw + c] = u;
            out.v[r * cw + c] = v;
        }
    }
}

/// Fixed-point fraction bits of the colour coefficients.
const SHIFT: u32 = 16;
const ONE: f64 = (1 << SHIFT) as f64;
const HALF: i32 = 1 << (SHIFT - 1);

/// The matrix constants (Kr, Kb) of a [`ColorSpec`].
fn kr_kb(color: ColorSpec) -> (f64, f64) {
    if color.bt709 {
        (0.2126, 0.0722)
    } else {
        (0.299, 0.114)
    }
}

fn fixed(x: f64) -> i32 {
    (x * ONE).round() as i32
}

fn clamp_u8(x: i32) -> u8 {
    x.clamp(0, 255) as u8
}

/// YCbCr -> RGB coefficients, range scaling folded in.
struct Inverse {
    y_offset: i32,
    y_mul: i32,
    r_cr: i32,
    g_cb: i32,
    g_cr: i32,
    b_cb: i32,
}

impl Inverse {
    fn new(color: ColorSpec) -> Self {
        let (kr, kb) = kr_kb(color);
        let kg = 1.0 - kr - kb;
        let (y_offset, y_scale, c_scale) =
            if color.full_range { (0, 1.0, 1.0) } else { (16, 255.0 / 219.0, 255.0 / 224.0) };
        Self {
            y_offset,
            y_mul: fixed(y_scale),
            r_cr: fixed(2.0 * (1.0 - kr) * c_scale),
            g_cb: fixed(2.0 * kb * (1.0 - kb) / kg * c_scale),
            g_cr: fixed(2.0 * kr * (1.0 - kr) / kg * c_scale),
            b_cb: fixed(2.0 * (1.0 - kb) * c_scale),
        }
    }

    #[inline]
    fn apply(&self, y: u8, u: u8, v: u8) -> [u8; 3] {
        let luma = (i32::from(y) - self.y_offset) * self.y_mul + HALF;
        let cb = i32::from(u) - 128;
        let cr = i32::from(v) - 128;
        [
            clamp_u8((luma + self.r_cr * cr) >> SHIFT),
            clamp_u8((luma - self.g_cb * cb - self.g_cr * cr) >> SHIFT),
            clamp_u8((luma + self.b_cb * cb) >> SHIFT),
        ]
    }
}

/// RGB -> YCbCr coefficients, range scaling folded in.
struct Forward {
    y_rgb: [i32; 3],
    y_offset: i32,
    cb_rgb: [i32; 3],
    cr_rgb: [i32; 3],
}

impl Forward {
    fn new(color: ColorSpec) -> Self {
        let (kr, kb) = kr_kb(color);
        let kg = 1.0 - kr - kb;
        let (y_offset, y_scale, c_scale) =
            if color.full_range { (0, 1.0, 1.0) } else { (16, 219.0 / 255.0, 224.0 / 255.0) };
        let cb = c_scale / (2.0 * (1.0 - kb));
        let cr = c_scale / (2.0 * (1.0 - kr));
        Self {
            y_rgb: [fixed(kr * y_scale), fixed(kg * y_scale), fixed(kb * y_scale)],
            y_offset,
            cb_rgb: [fixed(-kr * cb), fixed(-kg * cb), fixed((1.0 - kb) * cb)],
            cr_rgb: [fixed((1.0 - kr) * cr), fixed(-kg * cr), fixed(-kb * cr)],
        }
    }

    fn luma(&self, rgb: [u8; 3]) -> u8 {
        let sum: i32 = self.y_rgb.iter().zip(rgb).map(|(k, p)| k * i32::from(p)).sum();
        clamp_u8(((sum + HALF) >> SHIFT) + self.y_offset)
    }

    /// Cb, Cr of the mean of four pixels whose channel sums are `sum4`.
    fn chroma(&self, sum4: [i32; 3]) -> (u8, u8) {
        let dot = |k: &[i32; 3]| -> i32 { k.iter().zip(sum4).map(|(k, s)| k * s).sum() };
        // Divides the four-pixel sum by 4 while rounding: shift by SHIFT + 2.
        let round = 1 << (SHIFT + 1);
        let cb = (dot(&self.cb_rgb) + round) >> (SHIFT + 2);
        let cr = (dot(&self.cr_rgb) + round) >> (SHIFT + 2);
        (clamp_u8(cb + 128), clamp_u8(cr + 128))
    }
}

/// Copies `rows` rows of `row_bytes` from `plane` into the tight `dst`.
fn copy_plane(data: &[u8], plane: PlaneRef, row_bytes: usize, rows: usize, dst: &mut [u8]) {
    for (r, dst_row) in dst.chunks_exact_mut(row_bytes.max(1)).take(rows).enumerate() {
        match row(data, plane, r, row_bytes) {
            Some(src) => dst_row.copy_from_slice(src),
            None => dst_row.fill(0),
        }
    }
}

/// Row `r` of `plane` (`len` bytes), if it lies inside both the plane and `data`.
fn row(data: &[u8], plane: PlaneRef, r: usize, len: usize) -> Option<&[u8]> {
    let start = r.checked_mul(plane.stride)?;
    let end = start.checked_add(len)?;
    if end > plane.size {
        return None;
    }
    let start = plane.offset.checked_add(start)?;
    data.get(start..plane.offset.checked_add(end)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_picture(w: u32, h: u32) -> Picture {
        let mut p = Picture::default();
        p.reset(w, h);
        for (i, y) in p.y.iter_mut().enumerate() {
            *y = (i * 7 % 251) as u8;
        }
        for (i, u) in p.u.iter_mut().enumerate() {
            *u = (i * 11 % 253) as u8;
        }
        for (i, v) in p.v.iter_mut().enumerate() {
            *v = (i * 13 % 241) as u8;
        }
        p
    }

    /// Re-lays a tight frame with `pad` extra bytes per row and `gap` bytes before each plane.
    fn padded(
        format: RawFormat,
        tight: &[u8],
        w: usize,
        h: usize,
        pad: usize,
        gap: usize,
    ) -> (Vec<u8>, Vec<PlaneRef>) {
        let (layout, used, _) = plane_layout(format, w as u32, h as u32);
        let mut data = Vec::new();
        let mut planes = Vec::new();
        for (i, p) in layout[..used].iter().enumerate() {
            let rows = if i == 0 { h } else { h / 2 };
            data.extend(std::iter::repeat_n(0xEE, gap));
            let offset = data.len();
            let stride = p.stride + pad;
            for r in 0..rows {
                data.extend_from_slice(&tight[p.offset + r * p.stride..][..p.stride]);
                data.extend(std::iter::repeat_n(0xAB, pad));
            }
            planes.push(PlaneRef { stride, offset, size: stride * rows });
        }
        (data, planes)
    }

    #[test]
    fn layout_is_tight() {
        let (p, used, total) = plane_layout(RawFormat::Nv12, 640, 480);
        assert_eq!((used, total), (2, 460_800));
        assert_eq!(p[1], PlaneRef { stride: 640, offset: 307_200, size: 153_600 });
        let (p, used, total) = plane_layout(RawFormat::I420, 640, 480);
        assert_eq!((used, total), (3, 460_800));
        assert_eq!(p[2], PlaneRef { stride: 320, offset: 384_000, size: 76_800 });
    }

    #[test]
    fn pack_unpack_round_trip_tight() {
        let pic = sample_picture(16, 10);
        for format in [RawFormat::Nv12, RawFormat::I420] {
            let mut data = Vec::new();
            let (planes, used) = pack(&pic, format, &mut data);
            assert_eq!(data.len(), 16 * 10 * 3 / 2);
            let mut back = Picture::default();
            unpack(format, &data, 16, 10, &planes[..used], &mut back);
            assert_eq!((back.y, back.u, back.v), (pic.y.clone(), pic.u.clone(), pic.v.clone()));
        }
    }

    #[test]
    fn unpack_honours_padded_stride_and_offsets() {
        let pic = sample_picture(20, 8);
        for format in [RawFormat::Nv12, RawFormat::I420] {
            let mut tight = Vec::new();
            pack(&pic, format, &mut tight);
            let (data, planes) = padded(format, &tight, 20, 8, 12, 5);
            assert!(planes[0].offset > 0 && planes[0].stride == 32);
            let mut back = Picture::default();
            unpack(format, &data, 20, 8, &planes, &mut back);
            assert_eq!(back.y, pic.y, "{format:?} luma");
            assert_eq!(back.u, pic.u, "{format:?} cb");
            assert_eq!(back.v, pic.v, "{format:?} cr");
        }
    }

    #[test]
    fn unpack_short_data_leaves_zeros_without_panicking() {
        let pic = sample_picture(8, 4);
        let mut data = Vec::new();
        let (planes, used) = pack(&pic, RawFormat::I420, &mut data);
        data.truncate(8 * 4 + 3);
        let mut back = Picture::default();
        unpack(RawFormat::I420, &data, 8, 4, &planes[..used], &mut back);
        assert_eq!(back.y, pic.y);
        assert!(back.u.iter().chain(&back.v).all(|&b| b == 0));
    }

    /// The float reference: (Y, Cb, Cr) codes -> RGB, unclamped.
    fn reference_rgb(color: ColorSpec, y: u8, u: u8, v: u8) -> [f64; 3] {
        let (kr, kb) = kr_kb(color);
        let kg = 1.0 - kr - kb;
        let (yf, cb, cr) = if color.full_range {
            (f64::from(y), f64::from(u) - 128.0, f64::from(v) - 128.0)
        } else {
            (
                (f64::from(y) - 16.0) * 255.0 / 219.0,
                (f64::from(u) - 128.0) * 255.0 / 224.0,
                (f64::from(v) - 128.0) * 255.0 / 224.0,
            )
        };
        let r = yf + 2.0 * (1.0 - kr) * cr;
        let b = yf + 2.0 * (1.0 - kb) * cb;
        let g = (yf - kr * r - kb * b) / kg;
        [r, g, b]
    }

    /// The float reference: RGB -> (Y, Cb, Cr) codes, rounded.
    fn reference_ycbcr(color: ColorSpec, rgb: [u8; 3]) -> [u8; 3] {
        let (kr, kb) = kr_kb(color);
        let [r, g, b] = rgb.map(f64::from);
        let y = kr * r + (1.0 - kr - kb) * g + kb * b;
        let cb = (b - y) / (2.0 * (1.0 - kb));
        let cr = (r - y) / (2.0 * (1.0 - kr));
        let (y, cb, cr) = if color.full_range {
            (y, cb + 128.0, cr + 128.0)
        } else {
            (16.0 + y * 219.0 / 255.0, 128.0 + cb * 224.0 / 255.0, 128.0 + cr * 224.0 / 255.0)
        };
        [y, cb, cr].map(|x| x.round().clamp(0.0, 255.0) as u8)
    }

    const SPECS: [ColorSpec; 4] = [
        ColorSpec { bt709: false, full_range: false },
        ColorSpec { bt709: false, full_range: true },
        ColorSpec { bt709: true, full_range: false },
        ColorSpec { bt709: true, full_range: true },
    ];

    #[test]
    fn to_rgb_matches_float_formula_within_one() {
        for color in SPECS {
            let k = Inverse::new(color);
            for y in (0..=255u8).step_by(5) {
                for u in (0..=255u8).step_by(15) {
                    for v in (0..=255u8).step_by(15) {
                        let got = k.apply(y, u, v);
                        let want = reference_rgb(color, y, u, v);
                        for (g, w) in got.iter().zip(want) {
                            let w = w.clamp(0.0, 255.0);
                            assert!(
                                (f64::from(*g) - w).abs() <= 1.0,
                                "{color:?} yuv {y},{u},{v}: got {got:?} want {want:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn known_colours_decode_the_same_from_nv12_and_i420() {
        let colours: [[u8; 3]; 6] =
            [[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [255, 255, 255], [0, 0, 0]];
        for color in SPECS {
            for rgb in colours {
                let [y, u, v] = reference_ycbcr(color, rgb);
                let mut pic = Picture::default();
                pic.reset(4, 2);
                pic.y.fill(y);
                pic.u.fill(u);
                pic.v.fill(v);
                let mut seen = Vec::new();
                for format in [RawFormat::Nv12, RawFormat::I420] {
                    let mut data = Vec::new();
                    let (planes, used) = pack(&pic, format, &mut data);
                    let mut back = Picture::default();
                    unpack(format, &data, 4, 2, &planes[..used], &mut back);
                    let mut out = Vec::new();
                    to_rgb(&back, color, &mut out);
                    for px in out.chunks_exact(3) {
                        for (g, w) in px.iter().zip(rgb) {
                            assert!(
                                g.abs_diff(w) <= 2,
                                "{color:?} {format:?} {rgb:?} -> yuv {y},{u},{v} -> {px:?}"
                            );
                        }
                    }
                    seen.push(out);
                }
                assert_eq!(seen[0], seen[1], "nv12 and i420 give different rgb");
            }
        }
    }

    #[test]
    fn rgb_to_picture_matches_float_formula_and_round_trips() {
        for color in SPECS {
            for rgb in [[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 100, 50], [17, 99, 230]] {
                let buf: Vec<u8> = rgb.iter().copied().cycle().take(4 * 4 * 3).collect();
                let mut pic = Picture::default();
                rgb_to_picture(&buf, 4, 4, color, &mut pic);
                let want = reference_ycbcr(color, rgb);
                for (got, want) in [pic.y[0], pic.u[0], pic.v[0]].iter().zip(want) {
                    assert!(got.abs_diff(want) <= 1, "{color:?} {rgb:?}: {got} vs {want}");
                }
                let mut out = Vec::new();
                to_rgb(&pic, color, &mut out);
                for (g, w) in out[..3].iter().zip(rgb) {
                    assert!(g.abs_diff(w) <= 3, "{color:?} {rgb:?} round trip gave {out:?}");
                }
            }
        }
    }

    #[test]
    fn color_names() {
        assert_eq!(ColorSpec::from_names("BT.601", "limited"), SPECS[0]);
        assert_eq!(ColorSpec::from_names("bt601", "full"), SPECS[1]);
        assert_eq!(ColorSpec::from_names("BT.709", "limited"), SPECS[2]);
        assert_eq!(ColorSpec::from_names("BT.709", "full"), SPECS[3]);
        assert_eq!(ColorSpec::from_names("", ""), ColorSpec::default());
        assert_eq!(ColorSpec::default(), SPECS[3]);
    }
}
