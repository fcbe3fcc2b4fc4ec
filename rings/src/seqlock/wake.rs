//! The corelane-only sidecar of a stream: `corelane.wake`, two words that let consumers sleep
//! until the next commit instead of spinning, and let the producer pay a wake-up only when a
//! consumer sleeps.
//!
//! It is not part of the tensor-pool spec (a C implementation neither writes nor reads it; a
//! C producer's frames simply never ring it, so a corelane consumer parked on one wakes at its
//! timeout). The driver creates it zeroed beside `header.ring` in every epoch directory;
//! producer and consumers map it read-write.
//!
//! | off | size | field | written by |
//! |---|---|---|---|
//! | 0 | 8 | waiters (u64 LE) | consumers: parked or about to park |
//! | 8 | 8 | bell (u64 LE; the futex is its low half) | the producer, when it sees waiters |
//! | 16 | 48 | reserved, zero | |

use super::StreamError;
use crate::region::{region_words, Region};
use crate::wait::Doorbell;

/// Size of `corelane.wake`.
pub const WAKE_FILE_BYTES: usize = 64;
/// Offset of the waiter count.
pub const WAKE_WAITERS_OFFSET: usize = 0;
/// Offset of the bell.
pub const WAKE_BELL_OFFSET: usize = 8;

/// A mapped `corelane.wake`.
#[derive(Debug)]
pub struct WakeRegion<R: Region> {
    region: R,
}

impl<R: Region> WakeRegion<R> {
    /// Checks the region holds the two words, writable (both sides write them).
    pub fn open(region: R) -> Result<Self, StreamError> {
        if region.read_only() {
            return Err(StreamError::ReadOnly { region: super::RegionName::Wake });
        }
        if region_words(&region, WAKE_WAITERS_OFFSET, 16).is_none() {
            return Err(StreamError::Layout(super::LayoutError::TooShort {
                needed: WAKE_FILE_BYTES as u64,
                len: region.len() as u64,
            }));
        }
        Ok(Self { region })
    }

    /// The doorbell over the two words.
    pub fn doorbell(&self) -> Doorbell<'_> {
        let words = region_words(&self.region, WAKE_WAITERS_OFFSET, 16)
            .expect("open checked that the two words fit");
        Doorbell::new(&words[0], &words[1])
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::region::HeapRegion;

    #[test]
    fn offsets_and_a_short_region() {
        assert_eq!((WAKE_WAITERS_OFFSET, WAKE_BELL_OFFSET, WAKE_FILE_BYTES), (0, 8, 64));
        assert!(WakeRegion::open(HeapRegion::new(8)).is_err());
        let wake = WakeRegion::open(HeapRegion::new(WAKE_FILE_BYTES)).unwrap();
        assert!(!wake.doorbell().ring(), "nobody waits");
    }
}
