use core::fmt;
use core::ops::{Deref, DerefMut};

/// Pads and aligns a value to 128 bytes so that two values written by different threads never
/// share a cache line.
///
/// 128 rather than 64 on x86_64 and aarch64: Intel's spatial prefetcher pulls cache lines in
/// adjacent pairs, and big ARM cores have 128-byte lines, so 64-byte padding still lets a
/// producer's store invalidate the consumer's line (crossbeam-utils made the same choice).
#[derive(Default, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(128))]
pub struct CachePadded<T> {
    value: T,
}

impl<T> CachePadded<T> {
    /// Wraps `value` in its own 128-byte line pair.
    pub const fn new(value: T) -> Self {
        Self { value }
    }

    /// Returns the inner value.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for CachePadded<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for CachePadded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CachePadded").field(&self.value).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_values_sit_on_separate_128_byte_lines() {
        assert_eq!(core::mem::size_of::<CachePadded<u64>>(), 128);
        assert_eq!(core::mem::align_of::<CachePadded<u8>>(), 128);
        let pair = [CachePadded::new(1u64), CachePadded::new(2u64)];
        let a = &*pair[0] as *const u64 as usize;
        let b = &*pair[1] as *const u64 as usize;
        assert_eq!(b - a, 128);
        assert_eq!(*pair[1], 2);
    }
}
