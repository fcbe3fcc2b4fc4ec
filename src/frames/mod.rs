//! Frame protocol v1 (`../shared/specs/frames-v1.md`): the inference worker and the edge
//! agent, speaking length-prefixed protobuf envelopes over TCP (`proto/frames.proto`).
//!
//! - [`proto`]: the generated messages (the one definition; other-language peers generate
//!   from the same file);
//! - [`codec`]: framing, the size limit from the length prefix, version and msg_type checks;
//! - [`detector`]: the [`Picture`](detector::Picture) every backend reads, the
//!   [`Detector`](detector::Detector) trait and the model identity;
//! - [`session`]: the worker's sans-IO session (version, msg_type, sequence, capabilities,
//!   credits and window, heartbeats and timeouts, End) and frame validation;
//! - [`vision`]: NV12/I420/JPEG decoding, the built-in motion detector, the IoU tracker, the
//!   synthetic source;
//! - [`agent`]: the edge agent (`corelane agent`): a sans-IO core (Init, credits, LATEST_WINS
//!   and FIFO, out-of-order results, heartbeat, backoff, JPEG degradation) and a one-thread
//!   driver over a non-blocking TCP socket, with synthetic and raw-file sources;
//! - [`service`]: the `frames` service: the TCP agent and the detector agent on its own lane;
//! - [`bridge`]: accepted frames published into a tensor pool stream (`[frames] pool_stream`);
//! - `onnx` (feature `onnx`): YOLO-style ONNX models through tract.

pub mod agent;
pub mod bridge;
pub mod codec;
pub mod detector;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod proto;
pub mod service;
pub mod session;
pub mod vision;
