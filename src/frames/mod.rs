//! Frame protocol v1 (`../shared/specs/frames-v1.md`): the inference worker and the edge
//! agent, speaking length-prefixed protobuf envelopes over TCP (`proto/frames.proto`).
//!
//! - [`proto`]: the generated messages (the one definition; other-language peers generate
//!   from the same file);
//! - [`codec`]: framing, the size limit from the length prefix, version and msg_type checks;
//! - [`detector`]: the [`Picture`](detector::Picture) every backend reads, the
//!   [`Detector`](detector::Detector) trait and the model identity.

pub mod agent;
pub mod codec;
pub mod detector;
pub mod proto;
