//! The frame worker's vision code: raw and JPEG decoding into a [`Picture`], the built-in
//! classical detector, the tracker, and the synthetic source.
//!
//! Data flow on the worker: wire bytes -> [`yuv::unpack`] (NV12, I420) or [`jpeg::decode`]
//! -> [`Picture`] -> a [`Detector`](super::detector::Detector) such as
//! [`motion::MotionDetector`] -> [`track::Tracker::update`] -> Result. The agent runs the
//! same pieces the other way: [`synthetic::Synthetic`] -> [`yuv::pack`] or [`jpeg::encode`].
//!
//! Everything here is safe code, deterministic, and reuses its buffers from frame to frame.
//!
//! [`Picture`]: super::detector::Picture

pub mod jpeg;
pub mod motion;
pub mod synthetic;
pub mod track;
pub mod yuv;
