//! Uniform integer draws with their range worked out once.
//!
//! `rng.random_range(lo..hi)` checks and converts its range on every call
//! and is not inlined; on the simulator's paths (a CPU per packet, a port
//! per socket) that costs more than the draw. [`UniformU32`] keeps the range
//! and draws the values `random_range` would, from the same generator
//! words, so a run that switches to it prints the same results.

use rand::RngCore;

/// Uniform draws from an integer range of at most 2^32 values: the values
/// rand 0.9's `random_range` gives for the same range of `u16`, `u32` or
/// `usize` (below 2^32), word for word. That is Canon's method as rand
/// writes it: the high half of one 32-bit word times the range, and a second
/// word only when the low half falls in the zone where the first is biased.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniformU32 {
    low: u32,
    /// Values in the range; 0 stands for all 2^32.
    range: u32,
}

impl UniformU32 {
    /// Draws from `low..=high`. Panics if `low > high`.
    pub fn new_inclusive(low: u32, high: u32) -> Self {
        assert!(low <= high, "empty range {low}..={high}");
        Self { low, range: high.wrapping_sub(low).wrapping_add(1) }
    }

    /// Draws from `low..high`. Panics if the range is empty.
    pub fn new(low: u32, high: u32) -> Self {
        assert!(low < high, "empty range {low}..{high}");
        Self::new_inclusive(low, high - 1)
    }

    /// One value; draws one word of `rng`, rarely two.
    #[inline(always)]
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> u32 {
        if self.range == 0 {
            return rng.next_u32();
        }
        let m = u64::from(rng.next_u32()) * u64::from(self.range);
        let (mut result, lo) = ((m >> 32) as u32, m as u32);
        if lo > self.range.wrapping_neg() {
            let hi = ((u64::from(rng.next_u32()) * u64::from(self.range)) >> 32) as u32;
            result += u32::from(lo.checked_add(hi).is_none());
        }
        self.low.wrapping_add(result)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use proptest::prelude::*;
    use rand::{Rng, RngCore, SeedableRng};
    use rand_pcg::Pcg64Mcg;

    use super::UniformU32;

    proptest! {
        /// Same generator, same seed: every value equals `random_range`'s,
        /// and the two generators stay in step (the second word is drawn
        /// exactly when rand draws it).
        #[test]
        fn draws_what_random_range_draws(seed: u64, low: u32, width in prop_oneof![1u32..8, 1u32..70_000, any::<u32>()]) {
            let high = low.saturating_add(width - 1);
            let d = UniformU32::new_inclusive(low, high);
            let (mut a, mut b) = (Pcg64Mcg::seed_from_u64(seed), Pcg64Mcg::seed_from_u64(seed));
            for _ in 0..64 {
                prop_assert_eq!(d.sample(&mut a), b.random_range(low..=high));
            }
            prop_assert_eq!(a.next_u64(), b.next_u64());
            if low < high {
                let d = UniformU32::new(low, high);
                for _ in 0..64 {
                    prop_assert_eq!(d.sample(&mut a) as usize, b.random_range(low as usize..high as usize));
                }
                prop_assert_eq!(a.next_u64(), b.next_u64());
            }
        }

        #[test]
        fn draws_what_random_range_draws_for_u16(seed: u64, low: u16, high: u16) {
            let (low, high) = (low.min(high), low.max(high));
            prop_assume!(high - low < u16::MAX);
            let d = UniformU32::new_inclusive(u32::from(low), u32::from(high));
            let (mut a, mut b) = (Pcg64Mcg::seed_from_u64(seed), Pcg64Mcg::seed_from_u64(seed));
            for _ in 0..64 {
                prop_assert_eq!(d.sample(&mut a), u32::from(b.random_range(low..=high)));
            }
            prop_assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn the_whole_range_is_one_word() {
        let d = UniformU32::new_inclusive(0, u32::MAX);
        let (mut a, mut b) = (Pcg64Mcg::seed_from_u64(9), Pcg64Mcg::seed_from_u64(9));
        for _ in 0..16 {
            assert_eq!(d.sample(&mut a), b.random_range(0..=u32::MAX));
        }
    }

    /// Counts the words drawn.
    struct Counting(Pcg64Mcg, u64);

    impl RngCore for Counting {
        fn next_u32(&mut self) -> u32 {
            self.1 += 1;
            self.0.next_u32()
        }
        fn next_u64(&mut self) -> u64 {
            self.1 += 1;
            self.0.next_u64()
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            self.1 += 1;
            self.0.fill_bytes(dst)
        }
    }

    /// Three quarters of 2^32 values: a first word's low half lands in the
    /// biased zone often, so the second-word path is taken and must match.
    #[test]
    fn the_second_word_is_drawn_when_rand_draws_it() {
        let high = 3u32 << 30;
        let d = UniformU32::new(0, high);
        let mut a = Counting(Pcg64Mcg::seed_from_u64(1), 0);
        let mut b = Pcg64Mcg::seed_from_u64(1);
        for _ in 0..10_000 {
            assert_eq!(d.sample(&mut a), b.random_range(0..high));
        }
        assert!(a.1 > 11_000, "{} words for 10 000 draws", a.1);
        assert_eq!(a.0.next_u64(), b.next_u64());
    }
}
