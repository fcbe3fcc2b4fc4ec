//! JPEG to and from the planar 4:2:0 [`Picture`] (zune-jpeg decodes, jpeg-encoder encodes).
//!
//! The picture's planes are JFIF YCbCr (BT.601 matrix, full range,
//! [`ColorSpec::JFIF`](super::yuv::ColorSpec::JFIF)) on both paths: decoding asks zune-jpeg
//! for YCbCr and averages chroma 2x2; encoding hands the planes to the encoder as YCbCr with
//! 2x2 sampling. Grayscale files decode with neutral chroma; CMYK and other files go through
//! RGB. Decoding allocates its scratch per call (the decoder allocates internally anyway).

use jpeg_encoder::{Encoder, ImageBuffer, JpegColorType, SamplingFactor};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::yuv::{rgb_to_picture, ColorSpec};
use crate::frames::detector::Picture;

/// Largest width or height [`decode`] accepts.
pub const MAX_DIMENSION: usize = 8192;

/// Why a JPEG could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    /// The input was empty.
    #[error("jpeg data is empty")]
    Empty,
    /// The image (after cropping to even dimensions) has no pixels.
    #[error("jpeg has zero size: {width}x{height} (expected at least 2x2)")]
    ZeroSize {
        /// Width in the file.
        width: usize,
        /// Height in the file.
        height: usize,
    },
    /// The image is larger than the limit ([`MAX_DIMENSION`], or the caller's) on a side.
    #[error("jpeg is {width}x{height}, over the {max_width}x{max_height} limit")]
    TooLarge {
        /// Width in the file.
        width: usize,
        /// Height in the file.
        height: usize,
        /// The widest allowed.
        max_width: usize,
        /// The tallest allowed.
        max_height: usize,
    },
    /// The bytes are not a JPEG zune-jpeg can decode.
    #[error("invalid jpeg: {0}")]
    Decode(String),
    /// The picture cannot be encoded (bad dimensions or planes).
    #[error("cannot encode jpeg: {0}")]
    Encode(String),
}

/// Decodes a JPEG into `out` as planar 4:2:0, cropping odd dimensions to even.
///
/// Zero sizes, sides over [`MAX_DIMENSION`] and malformed or truncated data are errors;
/// nothing here panics on outside bytes. The data must end with the end-of-image marker
/// (every encoder writes it), which is how a file cut after its last scan is caught.
pub fn decode(data: &[u8], out: &mut Picture) -> Result<(), JpegError> {
    decode_within(data, MAX_DIMENSION, MAX_DIMENSION, out)
}

/// [`decode`] of a JPEG at most `max_width` x `max_height` (each capped at
/// [`MAX_DIMENSION`]), checked from the frame header before any pixel memory is allocated:
/// a few hundred bytes claiming 8192x8192 cost nothing but the header parse.
pub fn decode_within(
    data: &[u8],
    max_width: usize,
    max_height: usize,
    out: &mut Picture,
) -> Result<(), JpegError> {
    let (max_width, max_height) = (max_width.min(MAX_DIMENSION), max_height.min(MAX_DIMENSION));
    if data.is_empty() {
        return Err(JpegError::Empty);
    }
    if !data.ends_with(&[0xFF, 0xD9]) {
        return Err(JpegError::Decode("missing end-of-image marker (truncated?)".into()));
    }
    let options = DecoderOptions::default()
        .set_max_width(MAX_DIMENSION)
        .set_max_height(MAX_DIMENSION)
        .set_strict_mode(true);
    // The decoder's own limits give a terse error; the sizes are checked here after the
    // header, with one that names them.
    let mut probe = JpegDecoder::new_with_options(ZCursor::new(data), options);
    probe.decode_headers().map_err(|e| decode_error(&e))?;
    let (width, height) =
        probe.dimensions().ok_or_else(|| JpegError::Decode("no frame header".into()))?;
    if width > max_width || height > max_height {
        return Err(JpegError::TooLarge { width, height, max_width, max_height });
    }
    let (ew, eh) = (width & !1, height & !1);
    if ew == 0 || eh == 0 {
        return Err(JpegError::ZeroSize { width, height });
    }
    let wanted = match probe.input_colorspace() {
        Some(ColorSpace::YCbCr) => ColorSpace::YCbCr,
        Some(ColorSpace::Luma) => ColorSpace::Luma,
        _ => ColorSpace::RGB,
    };
    let mut decoder =
        JpegDecoder::new_with_options(ZCursor::new(data), options.jpeg_set_out_colorspace(wanted));
    decoder.decode_headers().map_err(|e| decode_error(&e))?;
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| JpegError::Decode("output size overflows".into()))?;
    let mut pixels = vec![0u8; size];
    decoder.decode_into(&mut pixels).map_err(|e| decode_error(&e))?;
    let channels = wanted.num_components();
    if pixels.len() < width * height * channels {
        return Err(JpegError::Decode("decoder returned a short image".into()));
    }

    match wanted {
        ColorSpace::RGB => {
            rgb_to_picture(&pixels, width as u32, height as u32, ColorSpec::JFIF, out);
        }
        _ => {
            out.reset(ew as u32, eh as u32);
            for r in 0..eh {
                let src = &pixels[r * width * channels..];
                for (c, y) in out.y[r * ew..(r + 1) * ew].iter_mut().enumerate() {
                    *y = src[c * channels];
                }
            }
            let cw = ew / 2;
            if channels == 1 {
                out.u.fill(128);
                out.v.fill(128);
            } else {
                for r in 0..eh / 2 {
                    for c in 0..cw {
                        let mut sum = [0u32; 2];
                        for (dr, dc) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            let i = ((2 * r + dr) * width + 2 * c + dc) * 3;
                            sum[0] += u32::from(pixels[i + 1]);
                            sum[1] += u32::from(pixels[i + 2]);
                        }
                        out.u[r * cw + c] = ((sum[0] + 2) / 4) as u8;
                        out.v[r * cw + c] = ((sum[1] + 2) / 4) as u8;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Encodes `picture` (JFIF YCbCr planes) as a baseline 4:2:0 JPEG into `out` (cleared
/// first). The agent uses quality 85.
pub fn encode(picture: &Picture, quality: u8, out: &mut Vec<u8>) -> Result<(), JpegError> {
    out.clear();
    let (w, h) = (picture.width as usize, picture.height as usize);
    if w == 0 || h == 0 || w > usize::from(u16::MAX) || h > usize::from(u16::MAX) {
        return Err(JpegError::Encode(format!("picture is {w}x{h}, expected 1..=65535 a side")));
    }
    if picture.y.len() < w * h
        || picture.u.len() < (w / 2) * (h / 2)
        || picture.v.len() < (w / 2) * (h / 2)
    {
        return Err(JpegError::Encode("picture planes are shorter than its dimensions".into()));
    }
    let mut encoder = Encoder::new(&mut *out, quality.clamp(1, 100));
    encoder.set_sampling_factor(SamplingFactor::F_2_2);
    // Encoder::encode takes interleaved input only; the ImageBuffer feeds planes directly.
    encoder.encode_image(Planes(picture)).map_err(|e| JpegError::Encode(e.to_string()))
}

fn decode_error(e: &zune_jpeg::errors::DecodeErrors) -> JpegError {
    JpegError::Decode(e.to_string())
}

/// A [`Picture`] as the encoder's row source: luma as is, chroma repeated to full width (the
/// encoder's 2x2 averaging gives the original samples back).
struct Planes<'a>(&'a Picture);

impl ImageBuffer for Planes<'_> {
    fn get_jpeg_color_type(&self) -> JpegColorType {
        JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        // encode checked width <= u16::MAX.
        self.0.width as u16
    }

    fn height(&self) -> u16 {
        // encode checked height <= u16::MAX.
        self.0.height as u16
    }

    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let p = self.0;
        let (w, r) = (p.width as usize, usize::from(y));
        let cw = w / 2;
        buffers[0].extend_from_slice(&p.y[r * w..(r + 1) * w]);
        let cr = r / 2;
        for c in 0..w {
            // An odd last column repeats the last chroma sample.
            let i = cr * cw + (c / 2).min(cw.saturating_sub(1));
            buffers[1].push(p.u.get(i).copied().unwrap_or(128));
            buffers[2].push(p.v.get(i).copied().unwrap_or(128));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::synthetic::Synthetic;
    use super::*;
    use jpeg_encoder::ColorType;

    #[test]
    fn encode_then_decode_keeps_size_and_luma() {
        let mut source = Synthetic::new(320, 240, 3, 7);
        let picture = source.next_picture().clone();
        let mut jpeg = Vec::new();
        encode(&picture, 85, &mut jpeg).expect("encode");
        assert!(jpeg.len() < picture.y.len(), "jpeg should compress: {} bytes", jpeg.len());
        let mut back = Picture::default();
        decode(&jpeg, &mut back).expect("decode");
        assert_eq!((back.width, back.height), (320, 240));
        let mae = |a: &[u8], b: &[u8]| -> f64 {
            a.iter().zip(b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len() as f64
        };
        let luma = mae(&picture.y, &back.y);
        assert!(luma < 4.0, "mean abs luma error {luma}");
        let chroma = mae(&picture.u, &back.u).max(mae(&picture.v, &back.v));
        assert!(chroma < 4.0, "mean abs chroma error {chroma}");
    }

    #[test]
    fn odd_dimensions_are_cropped_to_even() {
        let (w, h) = (33u16, 17u16);
        let rgb: Vec<u8> =
            (0..usize::from(w) * usize::from(h) * 3).map(|i| (i % 200) as u8).collect();
        let mut jpeg = Vec::new();
        Encoder::new(&mut jpeg, 90).encode(&rgb, w, h, ColorType::Rgb).expect("encode");
        let mut back = Picture::default();
        decode(&jpeg, &mut back).expect("decode");
        assert_eq!((back.width, back.height), (32, 16));
        assert_eq!(back.y.len(), 32 * 16);
    }

    #[test]
    fn grayscale_decodes_with_neutral_chroma() {
        let luma = vec![90u8; 16 * 16];
        let mut jpeg = Vec::new();
        Encoder::new(&mut jpeg, 90).encode(&luma, 16, 16, ColorType::Luma).expect("encode");
        let mut back = Picture::default();
        decode(&jpeg, &mut back).expect("decode");
        assert!(back.y.iter().all(|&y| y.abs_diff(90) <= 2));
        assert!(back.u.iter().chain(&back.v).all(|&c| c == 128));
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut out = Picture::default();
        assert_eq!(decode(&[], &mut out), Err(JpegError::Empty));
        let garbage: Vec<u8> =
            (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert!(matches!(decode(&garbage, &mut out), Err(JpegError::Decode(_))));
        let mut jpeg = Vec::new();
        let picture = Synthetic::new(64, 48, 1, 3).next_picture().clone();
        encode(&picture, 85, &mut jpeg).expect("encode");
        for cut in [2, 20, jpeg.len() / 2, jpeg.len() - 2] {
            assert!(
                decode(&jpeg[..cut], &mut out).is_err(),
                "truncated at {cut} of {}",
                jpeg.len()
            );
        }
        // A valid SOI followed by junk, and a header claiming a zero-sized image.
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0x00, 0x12], &mut out).is_err());
    }

    #[test]
    fn oversized_and_zero_sized_headers_are_rejected() {
        let picture = Synthetic::new(16, 16, 0, 1).next_picture().clone();
        let mut jpeg = Vec::new();
        encode(&picture, 85, &mut jpeg).expect("encode");
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline SOF0");
        // SOF0: marker(2) length(2) precision(1) height(2) width(2).
        let patch = |height: u16, width: u16| {
            let mut j = jpeg.clone();
            j[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
            j[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
            j
        };
        let mut out = Picture::default();
        assert!(decode(&patch(16, 9000), &mut out).is_err());
        assert!(decode(&patch(9000, 16), &mut out).is_err());
        assert!(decode(&patch(16, 1), &mut out).is_err());
        assert!(decode(&patch(0, 16), &mut out).is_err());
        // A small file claiming 8192x8192 against a session's 640x480: refused from the
        // header, with the sizes named, before 200 MB of pixels are allocated.
        let err = decode_within(&patch(8192, 8192), 640, 480, &mut out).unwrap_err();
        assert_eq!(err.to_string(), "jpeg is 8192x8192, over the 640x480 limit");
        assert!(decode_within(&jpeg, 16, 16, &mut out).is_ok(), "at the limit");
        assert!(decode_within(&jpeg, 15, 16, &mut out).is_err());
    }
}
