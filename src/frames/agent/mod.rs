//! The edge agent (stub).
pub mod core;
