//! A small, seedable, serialisable random number generator.
//!
//! chargpt needs randomness in four places: parameter initialisation, batch sampling, dropout masks
//! and token sampling. All of them must be reproducible from a seed, and the training state must be
//! saved in a checkpoint so that a resumed run continues exactly. SplitMix64 (Steele, Lea and Flood,
//! 2014) fits: its whole state is one `u64`, it passes BigCrush, and `mix` doubles as a hash for
//! deriving independent streams (one per layer, batch row and head for dropout) from a seed and a
//! counter, so parallel kernels draw the same numbers whatever the thread count.

/// SplitMix64: `state += GOLDEN; output = mix(state)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a bijective avalanche mix of 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: mix(seed) }
    }

    /// A generator for the stream named by `(seed, a, b, c)`: used to give every dropout site and
    /// every (batch row, head) its own stream without sharing mutable state between threads.
    pub fn derived(seed: u64, a: u64, b: u64, c: u64) -> Self {
        let h = mix(seed ^ mix(a ^ mix(b ^ mix(c.wrapping_add(GOLDEN_GAMMA)))));
        Rng { state: h }
    }

    /// The whole state, for checkpoints.
    pub fn state(&self) -> u64 {
        self.state
    }

    pub fn from_state(state: u64) -> Self {
        Rng { state }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }

    /// Uniform in [0, 1) with 24 bits of precision (every value exactly representable in f32).
    #[inline]
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [0, 1) with 53 bits, for sampling from a categorical distribution.
    #[inline]
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for n < 2^32).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 32).wrapping_mul(n as u64) >> 32) as usize
    }

    /// Standard normal sample by the Box-Muller transform.
    pub fn normal(&mut self) -> f32 {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform_f64();
        let u2 = self.uniform_f64();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_state_round_trips() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut c = Rng::from_state(a.state());
        assert_eq!(a.next_u64(), c.next_u64());
        assert_ne!(Rng::new(7).next_u64(), Rng::new(8).next_u64());
    }

    #[test]
    fn moments_are_right() {
        let mut rng = Rng::new(1);
        let n = 200_000;
        let (mut s, mut s2, mut u) = (0.0f64, 0.0f64, 0.0f64);
        for _ in 0..n {
            let x = rng.normal() as f64;
            s += x;
            s2 += x * x;
            u += rng.uniform() as f64;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "normal mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "normal variance {var}");
        assert!((u / n as f64 - 0.5).abs() < 0.01);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[rng.below(5)] += 1;
        }
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 500.0, "{counts:?}");
        }
    }

    #[test]
    fn derived_streams_differ() {
        let a = Rng::derived(1, 0, 0, 0).next_u64();
        let b = Rng::derived(1, 0, 0, 1).next_u64();
        let c = Rng::derived(1, 0, 1, 0).next_u64();
        let d = Rng::derived(2, 0, 0, 0).next_u64();
        assert!(a != b && a != c && b != c && a != d);
    }
}
