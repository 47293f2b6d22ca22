//! A small, seedable, serialisable random number generator.
//!
//! chargpt needs randomness in four places: parameter initialisation, batch sampling, dropout masks
//! and token sampling. All of them must be reproducible from a seed, and the training state must be
//! saved in a checkpoint so that a resumed run continues exactly. SplitMix64 (Steele, Lea and Flood,
//! 2014) fits: its whole state is one `u64`, it passes BigCrush, and `mix` doubles as a hash for
//! deriving independent streams from a seed and a counter, so parallel kernels draw the same
//! numbers whatever the thread count.
//!
//! Dropout masks ([`DropoutSeed`]) are defined here, once, for both engines: every element is a
//! pure function of (step seed, layer, site, batch row, index of the element within that row's
//! tensor), so the fast engine, whatever its threads and data-parallel shards, and the reference
//! engine, which runs the batch whole, zero the same activations.

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

/// Where in block `layer` a dropout mask applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropoutSite {
    /// The attention weights, (H, T, T) per batch row: element `(h * T + t) * T + u`.
    AttentionWeights = 1,
    /// The attention projection's output, (T, C) per batch row: element `t * C + c`.
    AttentionOutput = 2,
    /// The feed-forward branch's output, (T, C) per batch row (the activation, (T, F), for the
    /// one-layer feed-forward): element `t * C + c`.
    FeedForwardOutput = 3,
}

/// The dropout masks of one training step, for a batch or for the consecutive rows of a batch
/// starting at `first_row` (a data-parallel shard).
///
/// The mask of `site` in block `layer` for batch row b is the SplitMix64 stream whose state
/// starts at `Rng::derived(seed, layer, site, b).state()`; element i of that row's tensor is kept
/// when the stream's i-th uniform is at least p. The i-th output of a SplitMix64 stream started at
/// state s is `mix(s + (i + 1) * GOLDEN)`, so any element can be computed on its own: no state is
/// carried from one element to the next, and it does not matter which thread draws it, in what
/// order, or how the batch was split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutSeed {
    pub seed: u64,
    /// The batch row of this part's first sequence.
    pub first_row: usize,
}

impl DropoutSeed {
    /// The masks of a whole batch.
    pub fn new(seed: u64) -> Self {
        DropoutSeed { seed, first_row: 0 }
    }

    /// The masks of the part of the batch that starts `first_row` rows into this one.
    pub fn rows_from(self, first_row: usize) -> Self {
        DropoutSeed {
            first_row: self.first_row + first_row,
            ..self
        }
    }

    /// The masks of one site of one block.
    pub fn site(self, layer: usize, site: DropoutSite) -> SiteMasks {
        SiteMasks {
            seed: self.seed,
            layer: layer as u64,
            site: site as u64,
            first_row: self.first_row,
        }
    }
}

/// The dropout masks of one site of one block, for each batch row of a (part of a) batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteMasks {
    seed: u64,
    layer: u64,
    site: u64,
    first_row: usize,
}

impl SiteMasks {
    /// The mask of row `b` of this part of the batch (row `first_row + b` of the whole batch).
    #[inline]
    pub fn row(self, b: usize) -> RowMask {
        let row = (self.first_row + b) as u64;
        RowMask(Rng::derived(self.seed, self.layer, self.site, row).state)
    }
}

/// The dropout mask of one site for one batch row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMask(u64);

impl RowMask {
    /// Whether element `index` of the row's tensor is kept at dropout probability `p`: the
    /// `index`-th uniform (24 bits, as [`Rng::uniform`]) of the row's stream is at least `p`.
    #[inline(always)]
    pub fn keep(self, index: usize, p: f32) -> bool {
        let state = self
            .0
            .wrapping_add((index as u64).wrapping_add(1).wrapping_mul(GOLDEN_GAMMA));
        let uniform = (mix(state) >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
        uniform >= p
    }

    /// `out[i] = keep(first + i, p)` (1 or 0) for every i: the same bits as [`RowMask::keep`],
    /// eight at a time on CPUs with AVX-512 (DQ's 64-bit products), where drawing a mask element
    /// by element took 3% of `fast`'s step on 2 Zen 4 cores.
    pub fn fill(self, out: &mut [u8], first: usize, p: f32) {
        #[cfg(target_arch = "x86_64")]
        if crate::runtime::has_avx512_dq() {
            // SAFETY: the CPU has AVX512F and AVX512DQ (checked just above).
            let done = unsafe { fill_avx512(self.0, out, first, p) };
            return self.fill_scalar(&mut out[done..], first + done, p);
        }
        self.fill_scalar(out, first, p)
    }

    fn fill_scalar(self, out: &mut [u8], first: usize, p: f32) {
        for (i, m) in out.iter_mut().enumerate() {
            *m = self.keep(first + i, p) as u8;
        }
    }
}

/// Byte j of `SPREAD[bits]` is bit j of `bits`: eight mask bits as eight 0/1 bytes.
#[cfg(target_arch = "x86_64")]
static SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut bits = 0;
    while bits < 256 {
        let mut j = 0;
        while j < 8 {
            t[bits] |= (((bits >> j) & 1) as u64) << (8 * j);
            j += 1;
        }
        bits += 1;
    }
    t
};

/// [`RowMask::fill`] for the whole groups of eight of `out`; returns how many it wrote. The test
/// `uniform >= p`, with `uniform = (mix >> 40) * 2^-24` exact in f32, is the integer test
/// `mix >> 40 >= ceil(p * 2^24)`.
///
/// # Safety
/// The CPU must have AVX512F and AVX512DQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn fill_avx512(row: u64, out: &mut [u8], first: usize, p: f32) -> usize {
    use std::arch::x86_64::*;
    let threshold = (p.max(0.0) * (1u64 << 24) as f32).ceil() as u64;
    let splat = |x: u64| _mm512_set1_epi64(x as i64);
    let (gamma, c1, c2) = (
        splat(GOLDEN_GAMMA),
        splat(0xBF58_476D_1CE4_E5B9),
        splat(0x94D0_49BB_1331_11EB),
    );
    let (base, limit, eight) = (splat(row), splat(threshold), splat(8));
    // Lanes i = 0..8 hold index + 1 of element `first + i` (the stream's counter).
    let mut counter = _mm512_add_epi64(
        splat(first as u64 + 1),
        _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0),
    );
    let groups = out.len() / 8;
    for chunk in out.chunks_exact_mut(8) {
        let mut z = _mm512_add_epi64(base, _mm512_mullo_epi64(counter, gamma));
        z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<30>(z)), c1);
        z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<27>(z)), c2);
        z = _mm512_xor_si512(z, _mm512_srli_epi64::<31>(z));
        let kept = _mm512_cmpge_epu64_mask(_mm512_srli_epi64::<40>(z), limit);
        chunk.copy_from_slice(&SPREAD[kept as usize].to_le_bytes());
        counter = _mm512_add_epi64(counter, eight);
    }
    groups * 8
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

    /// Element i of a row's mask is the i-th draw of an ordinary stream, computed on its own.
    #[test]
    fn mask_elements_are_the_draws_of_the_row_stream() {
        let masks = DropoutSeed::new(5).rows_from(3);
        let row = masks.site(2, DropoutSite::AttentionOutput).row(4);
        let mut stream = Rng::derived(5, 2, DropoutSite::AttentionOutput as u64, 7);
        for i in 0..1000 {
            assert_eq!(row.keep(i, 0.3), stream.uniform() >= 0.3);
        }
        // The same row of the batch, reached from a shard that starts elsewhere.
        let same = DropoutSeed::new(5).rows_from(7);
        assert_eq!(same.site(2, DropoutSite::AttentionOutput).row(0), row);
        let kept = (0..100_000).filter(|&i| row.keep(i, 0.2)).count();
        assert!((kept as f64 / 1e5 - 0.8).abs() < 0.01, "{kept}");
    }

    /// A whole run of mask elements at once (eight at a time where the CPU has AVX-512) is the
    /// elements one by one: from any start, with any tail, at probabilities whose threshold
    /// falls exactly on a 24-bit draw (0.5, 0.25) or between two (0.1, 0.3), and at 0 (all kept).
    #[test]
    fn filling_a_run_of_the_mask_draws_each_element_as_keep_does() {
        let row = DropoutSeed::new(11)
            .site(1, DropoutSite::FeedForwardOutput)
            .row(2);
        for p in [0.0, 0.1, 0.25, 0.3, 0.5, 0.9] {
            for (first, len) in [
                (0, 0),
                (0, 7),
                (0, 64),
                (3, 61),
                (1000, 1003),
                (1 << 20, 300),
            ] {
                let mut got = vec![9u8; len];
                row.fill(&mut got, first, p);
                let want: Vec<u8> = (0..len).map(|i| row.keep(first + i, p) as u8).collect();
                assert_eq!(got, want, "p {p}, first {first}, len {len}");
            }
        }
        // Threshold exactly on a draw: the element whose draw equals p is kept, as with `keep`.
        let draws: Vec<u32> = (0..4096)
            .map(|i| {
                let state = row
                    .0
                    .wrapping_add((i as u64 + 1).wrapping_mul(GOLDEN_GAMMA));
                (mix(state) >> 40) as u32
            })
            .collect();
        let p = draws[100] as f32 / (1u64 << 24) as f32;
        let mut got = vec![0u8; 4096];
        row.fill(&mut got, 0, p);
        assert_eq!(got[100], 1);
        let want: Vec<u8> = (0..4096).map(|i| row.keep(i, p) as u8).collect();
        assert_eq!(got, want);
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
