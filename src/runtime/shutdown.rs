//! Stopping every lane: from a signal (SIGINT, SIGTERM) or from code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared stop flag. Lanes check it once per pass; parked lanes see it within their bounded
/// park time.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag when the process gets SIGINT or SIGTERM (in addition to any handler
    /// already there).
    pub fn on_signals(&self) -> std::io::Result<()> {
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, self.0.clone())?;
        }
        Ok(())
    }

    /// Asks every lane to stop.
    pub fn request(&self) {
        // SYNC: Release pairs with the Acquire in `is_requested`; nothing else is published by
        // it, but a lane that sees the flag also sees what the requester did before.
        self.0.store(true, Ordering::Release);
    }

    /// Whether a stop was asked for.
    #[inline]
    pub fn is_requested(&self) -> bool {
        // SYNC: pairs with the Release in `request` (signal-hook's handler stores SeqCst).
        self.0.load(Ordering::Acquire)
    }
}
