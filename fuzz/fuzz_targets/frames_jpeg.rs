//! Arbitrary bytes as the data of a JPEG Frame, into `vision::jpeg::decode` as the worker's
//! detector lane calls it: it must never panic; on success the picture is non-empty, even,
//! within `MAX_DIMENSION` a side, and its planes are exactly its size (luma `w * h`, each
//! chroma plane `w/2 * h/2`). The decode goes into a picture that held another size (the lane
//! reuses one), and a small decoded picture must survive `jpeg::encode` and decode again at the
//! same size.
#![no_main]

use corelane::frames::detector::Picture;
use corelane::frames::vision::jpeg::{self, MAX_DIMENSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut picture = Picture::default();
    picture.reset(6, 4);
    if jpeg::decode(data, &mut picture).is_err() {
        return;
    }
    check(&picture);
    let (w, h) = (picture.width, picture.height);
    if w as usize * h as usize <= 256 * 256 {
        let mut again = Vec::new();
        jpeg::encode(&picture, 85, &mut again).expect("a decoded picture encodes");
        let mut back = Picture::default();
        jpeg::decode(&again, &mut back).expect("an encoded picture decodes");
        assert_eq!((back.width, back.height), (w, h));
        check(&back);
    }
});

fn check(p: &Picture) {
    let (w, h) = (p.width as usize, p.height as usize);
    assert!(w > 0 && h > 0, "decoded an empty {w}x{h} picture");
    assert!(w % 2 == 0 && h % 2 == 0, "decoded an odd {w}x{h} picture");
    assert!(w <= MAX_DIMENSION && h <= MAX_DIMENSION, "{w}x{h} is over the limit");
    assert_eq!(p.y.len(), w * h, "luma of {w}x{h}");
    assert_eq!(p.u.len(), w * h / 4, "Cb of {w}x{h}");
    assert_eq!(p.v.len(), w * h / 4, "Cr of {w}x{h}");
}
