//! Causal multi-head self-attention, fused: scores, scale, causal mask, softmax, dropout on the
//! weights, and the weighted sum of values, for every (batch row, head) in parallel.
//!
//! Shapes: `qkv` (B, T, 3C), each row `[q | k | v]` with head h in columns `h*hs .. (h+1)*hs` of
//! each part (hs = C / H); `att` (B, H, T, T), the softmax weights cached for the backward pass
//! (entries above the diagonal are 0); `out` (B, T, C), the heads concatenated.
//!
//! Per head, with `scale` = 1/sqrt(hs) (or 1/sqrt(C) as in the video):
//! `s[t, u] = scale * q_t . k_u` for u <= t (the causal mask: a position sees only its past),
//! `a[t, :] = softmax(s[t, :])`, optionally `a' = a * m / (1 - p)` (dropout),
//! `out_t = sum_u a'[t, u] v_u`.
//!
//! Backward, per head: `dv_u = sum_t a'[t, u] dout_t`, `da'[t, u] = dout_t . v_u`,
//! `da = da' * m / (1 - p)`, softmax backward `ds[t, u] = a[t, u] (da[t, u] - sum_w a[t, w] da[t, w])`,
//! then `dq_t = scale * sum_u ds[t, u] k_u` and `dk_u = scale * sum_t ds[t, u] q_t`.
//!
//! Each (batch row, head) is an independent problem, so threads take whole heads and the work
//! inside a head runs on one thread. Four implementations of a head, chosen by size and precision
//! ([`Path`]):
//! - heads of 64 or more of a model whose products are bf16 (`precision=bf16`, or `auto` on a CPU
//!   with AVX512_BF16): the six products in bf16 with fp32 sums, through `matmul_bf16`'s causal
//!   products, which skip the masked triangle a tile at a time; the scale, softmax and dropout
//!   stay fp32, as do the weights kept for the backward pass;
//! - other large heads whose size and length are multiples of 8, on CPUs with vectors: the
//!   products (`Q K^T`, `A V`, and in the backward `dY V^T`, `A'^T dY`, `dS K`, `dS^T Q`) as the
//!   register-tiled loops of [`tiles`], which skip the masked triangle 8 columns at a time;
//! - other large heads: the same products through `gemm`, in blocks of rows so that the upper
//!   triangle, which the mask zeroes anyway, is mostly not computed;
//! - small heads (the ladder's 8-character blocks): plain loops row by row, where a call into
//!   gemm would cost more than the arithmetic.

use super::matmul::gemm_ptr;
use super::matmul_bf16::{self, Bf16Path};
use super::{axpy, dot, simd_fn, weighted_rows, SharedMut};
pub use crate::layout::AttentionShape;
use crate::rng::{RowMask, SiteMasks};
use rayon::prelude::*;
use std::cell::RefCell;

mod tiles;

/// How each head of `shape` is computed: in bf16 when the model's products are (`bf16`).
fn path(shape: &AttentionShape, bf16: bool) -> Path {
    let (t_n, hs) = (shape.seq_len, shape.head_size());
    // Below this size a head is a handful of short rows, where loops beat any product.
    if t_n < 32 || hs < 16 {
        return Path::Rows;
    }
    // bf16 where a head's products are long enough to pay for packing their operands: on 2 Zen 4
    // cores the lecture's heads (T 256, hs 64) went from 1.20 to 0.83 s of thread time a step,
    // while heads of 32 (`default`, `nanogpt-cpu`, `fast`) ran no faster than the fp32 tiles.
    if hs >= 64 {
        if let Some(engine) = bf16.then(Bf16Path::detect).flatten() {
            return Path::Bf16(engine);
        }
    }
    if super::simd::vectors() && t_n.is_multiple_of(8) && hs.is_multiple_of(8) {
        Path::Tiles
    } else {
        Path::Gemm
    }
}

/// The implementations of one head (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Rows,
    Gemm,
    Tiles,
    /// The four products in bf16 with fp32 sums (`matmul_bf16`'s causal products), the softmax
    /// in fp32: mixed precision, as the linear layers under `precision=bf16`.
    Bf16(Bf16Path),
}

thread_local! {
    /// Per-thread scratch for one head's (T, T) matrix: the weights after dropout in the forward
    /// pass, their gradient in the backward pass. Kept per thread rather than per head so that it
    /// stays in cache from one head to the next; it grows to the largest head a thread has seen,
    /// so after the first step no call allocates.
    static SQUARE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread scratch for one head's keys or values transposed to (hs, T).
    static TRANSPOSED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Grows the calling thread's scratch to what heads of `seq_len` positions and `head_size`
/// channels need, so that a thread running attention for the first time in a later step (which
/// thread runs which head depends on work stealing) does not allocate then. The trainer calls it
/// on every thread of the pool (`rayon::broadcast`) when it is built.
pub fn reserve_scratch(seq_len: usize, head_size: usize) {
    with_scratch(&SQUARE, seq_len * seq_len, |_| ());
    with_scratch(&TRANSPOSED, head_size * seq_len, |_| ());
}

/// Runs `f` with this thread's `scratch` buffer, at least `len` floats long.
fn with_scratch<R>(
    scratch: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    scratch.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

/// Dropout on the attention weights: probability and the masks of this call's batch rows
/// (element `(h * T + t) * T + u` of row b's mask is key u of query t in head h).
#[derive(Debug, Clone, Copy)]
pub struct AttentionDropout {
    pub p: f32,
    pub masks: SiteMasks,
}

/// The dropout mask of one (batch row, head): element (t, u) is element `first + t * T + u` of
/// the batch row's mask.
#[derive(Debug, Clone, Copy)]
struct HeadMask {
    row: RowMask,
    first: usize,
}

/// Rows per block of the blocked products: block i needs keys `0..(i+1)*rows`, so the work is
/// about `1/2 + rows/(2T)` of the full square; smaller blocks skip more of the masked triangle but
/// make more, smaller calls. Measured best: 32 up to T = 128, 64 beyond.
#[inline]
fn block_rows(t_n: usize) -> usize {
    if t_n <= 128 {
        32
    } else {
        64
    }
}

/// Softmax of `row[..=t]` in place (the scores of query t against keys 0..=t); zeroes the
/// masked `row[t+1..]`. Always inlined into a caller compiled for the CPU's vector width.
#[inline(always)]
fn softmax_causal(row: &mut [f32], t: usize) {
    let (live, masked) = row.split_at_mut(t + 1);
    let max = super::max(live);
    let inv = 1.0 / super::exp_shifted_sum(live, max);
    for a in live.iter_mut() {
        *a *= inv;
    }
    masked.fill(0.0);
}

/// Softmax backward of one row, with the dropout mask and the score scale folded in:
/// `ds[u] = scale * a[u] * (da[u] - sum_w a[w] da[w])` where `da = da' * mask * keep`
/// (`mask` absent without dropout); `d` holds `da'` on entry (entries above t may hold anything)
/// and `ds` on return, zero above t.
#[inline(always)]
fn softmax_causal_backward(
    d: &mut [f32],
    a: &[f32],
    mask: Option<&[u8]>,
    keep: f32,
    t: usize,
    scale: f32,
) {
    let (live, masked) = d.split_at_mut(t + 1);
    if let Some(mask) = mask {
        for (d, &m) in live.iter_mut().zip(mask) {
            *d *= m as f32 * keep;
        }
    }
    let weighted = dot(&a[..=t], live);
    for (d, &a) in live.iter_mut().zip(a) {
        *d = scale * a * (*d - weighted);
    }
    masked.fill(0.0);
}

/// The weights a head's forward pass summed the values with: `att` itself, or with dropout
/// `a' = a * m / (1 - p)`, rebuilt into `d` from the mask.
#[inline(always)]
fn forward_weights<'a>(
    att: &'a [f32],
    d: &'a mut [f32],
    mask: Option<&[u8]>,
    keep: f32,
) -> &'a [f32] {
    match mask {
        Some(mask) => {
            for ((d, &a), &m) in d.iter_mut().zip(att).zip(mask) {
                *d = a * m as f32 * keep;
            }
            d
        }
        None => att,
    }
}

/// [`softmax_causal_backward`] of rows `rows` of a head's (T, T) `d`, in place.
#[inline(always)]
fn softmax_backward_rows(
    d: &mut [f32],
    att: &[f32],
    mask: Option<&[u8]>,
    keep: f32,
    scale: f32,
    t_n: usize,
    rows: std::ops::Range<usize>,
) {
    for t in rows {
        let row = t * t_n..(t + 1) * t_n;
        softmax_causal_backward(
            &mut d[row.clone()],
            &att[row.clone()],
            mask.map(|m| &m[row]),
            keep,
            t,
            scale,
        );
    }
}

/// Draws row t of a head's dropout mask (keys 0..=t; the masked keys get 0).
#[inline(always)]
fn draw_mask_row(mask: HeadMask, mask_row: &mut [u8], t: usize, p: f32) {
    let first = mask.first + t * mask_row.len();
    mask.row.fill(&mut mask_row[..=t], first, p);
    mask_row[t + 1..].fill(0);
}

/// Pointers to one head of one batch row.
#[derive(Clone, Copy)]
struct Head {
    /// `q_t` at `q + t * 3C`, `k_t` at `q + C + t * 3C`, `v_t` at `q + 2C + t * 3C`.
    q: *const f32,
    /// `out_t` (or `dout_t`) at `o + t * C`.
    o: *const f32,
    t_n: usize,
    c: usize,
    hs: usize,
}

impl Head {
    #[inline(always)]
    unsafe fn q(&self, t: usize) -> &[f32] {
        std::slice::from_raw_parts(self.q.add(t * 3 * self.c), self.hs)
    }
    #[inline(always)]
    unsafe fn k(&self, t: usize) -> &[f32] {
        std::slice::from_raw_parts(self.q.add(self.c + t * 3 * self.c), self.hs)
    }
    #[inline(always)]
    unsafe fn v(&self, t: usize) -> &[f32] {
        std::slice::from_raw_parts(self.q.add(2 * self.c + t * 3 * self.c), self.hs)
    }
}

/// `out` for one head with matrix products. `att` (T, T) receives the weights; `dropped` (T, T)
/// receives `a'` when there is dropout (`mask` (T, T) is drawn here).
///
/// # Safety
/// `head` points into live `qkv` and `out` buffers of the stated shape, and no other thread
/// writes this head's columns of `out`.
#[inline(always)]
unsafe fn head_forward_gemm(
    head: Head,
    out: *mut f32,
    att: &mut [f32],
    dropped: Option<(&mut [f32], &mut [u8], HeadMask, f32)>,
    scale: f32,
) {
    let Head { q, t_n, c, hs, .. } = head;
    for r0 in (0..t_n).step_by(block_rows(t_n)) {
        let r1 = (r0 + block_rows(t_n)).min(t_n);
        // att[r0..r1, 0..r1] = scale * Q[r0..r1] K[0..r1]^T
        gemm_ptr(
            r1 - r0,
            r1,
            hs,
            att.as_mut_ptr().add(r0 * t_n),
            (t_n, 1),
            false,
            q.add(r0 * 3 * c),
            (3 * c, 1),
            q.add(c),
            (1, 3 * c),
            scale,
            false,
        );
        for t in r0..r1 {
            softmax_causal(&mut att[t * t_n..(t + 1) * t_n], t);
        }
    }
    let weights = dropout_weights(att, dropped, t_n);
    for r0 in (0..t_n).step_by(block_rows(t_n)) {
        let r1 = (r0 + block_rows(t_n)).min(t_n);
        // out[r0..r1] = A'[r0..r1, 0..r1] V[0..r1]
        gemm_ptr(
            r1 - r0,
            hs,
            r1,
            out.add(r0 * c),
            (c, 1),
            false,
            weights.as_ptr().add(r0 * t_n),
            (t_n, 1),
            q.add(2 * c),
            (3 * c, 1),
            1.0,
            false,
        );
    }
}

/// The weights the values are summed with: `att` itself, or with dropout `a' = a * m / (1 - p)`
/// written to `dropped` after drawing the mask row by row from the head's stream.
#[inline(always)]
fn dropout_weights<'a>(
    att: &'a [f32],
    dropped: Option<(&'a mut [f32], &mut [u8], HeadMask, f32)>,
    t_n: usize,
) -> &'a [f32] {
    match dropped {
        Some((dropped, mask, head_mask, p)) => {
            let keep = 1.0 / (1.0 - p);
            for t in 0..t_n {
                let m = &mut mask[t * t_n..(t + 1) * t_n];
                draw_mask_row(head_mask, m, t, p);
                for ((d, &a), &m) in dropped[t * t_n..(t + 1) * t_n]
                    .iter_mut()
                    .zip(&att[t * t_n..])
                    .zip(m.iter())
                {
                    *d = a * m as f32 * keep;
                }
            }
            dropped
        }
        None => att,
    }
}

/// `out` for one head with the tiled kernels. Same contract as [`head_forward_gemm`], and T and
/// hs are multiples of 8.
#[inline(always)]
unsafe fn head_forward_tiles(
    head: Head,
    out: *mut f32,
    att: &mut [f32],
    dropped: Option<(&mut [f32], &mut [u8], HeadMask, f32)>,
    scale: f32,
) {
    use tiles::{Strides, Triangle};
    let Head { q, t_n, c, hs, .. } = head;
    // S = scale * Q K^T, with K^T laid out (hs, T).
    with_scratch(&TRANSPOSED, hs * t_n, |kt| {
        tiles::transpose(kt, q.add(c), 3 * c, t_n, hs);
        tiles::causal_scores(att.as_mut_ptr(), q, 3 * c, kt.as_ptr(), t_n, hs, scale);
    });
    for t in 0..t_n {
        softmax_causal(&mut att[t * t_n..(t + 1) * t_n], t);
    }
    let weights = dropout_weights(att, dropped, t_n);
    // out = A' V
    let by_row = Strides { row: t_n, col: 1 };
    weighted_gathered(
        out,
        c,
        weights,
        by_row,
        q.add(2 * c),
        3 * c,
        t_n,
        hs,
        Triangle::Lower,
    );
}

/// `out = W Y` as [`tiles::weighted_rows`] computes it (written, unscaled), with Y's `t_n`
/// rows of `hs` floats, `ld_y` apart in the q/k/v (or output gradient) rows, first copied side
/// by side into this thread's scratch. The weighted sum reads every row of Y again for each pair
/// of output rows; in place, rows `3C` (or C) floats apart, a multiple of 512 bytes at every
/// preset's width, all fall into a few of L1's sets and evict one another, so each read came
/// from L2.
///
/// # Safety
/// As [`tiles::weighted_rows`]: rows t < t_n of `y` are readable for hs floats at stride `ld_y`,
/// and `out` and `w` hold what `ld_out`, `ws` and `triangle` say.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weighted_gathered(
    out: *mut f32,
    ld_out: usize,
    w: &[f32],
    ws: tiles::Strides,
    y: *const f32,
    ld_y: usize,
    t_n: usize,
    hs: usize,
    triangle: tiles::Triangle,
) {
    with_scratch(&TRANSPOSED, hs * t_n, |rows| {
        for (t, row) in rows.chunks_exact_mut(hs).enumerate() {
            row.copy_from_slice(std::slice::from_raw_parts(y.add(t * ld_y), hs));
        }
        let (w, rows) = (w.as_ptr(), rows.as_ptr());
        tiles::weighted_rows(out, ld_out, w, ws, rows, hs, t_n, hs, triangle, false, 1.0);
    });
}

/// One head's q, k, v (or output gradient) rows from `p`, `ld` apart, as a slice: T rows of hs.
///
/// # Safety
/// `p` points at row 0 of a live buffer holding those rows.
#[inline(always)]
unsafe fn head_rows<'a>(p: *const f32, ld: usize, t_n: usize, hs: usize) -> &'a [f32] {
    std::slice::from_raw_parts(p, (t_n - 1) * ld + hs)
}

/// `out` for one head with bf16 products. Same contract as [`head_forward_gemm`].
#[inline(always)]
unsafe fn head_forward_bf16(
    head: Head,
    out: *mut f32,
    att: &mut [f32],
    dropped: Option<(&mut [f32], &mut [u8], HeadMask, f32)>,
    scale: f32,
    engine: Bf16Path,
) {
    let Head { q, t_n, c, hs, .. } = head;
    let ld = 3 * c;
    let (qs, ks) = (head_rows(q, ld, t_n, hs), head_rows(q.add(c), ld, t_n, hs));
    // S = Q K^T, scaled in the softmax's pass.
    matmul_bf16::causal_scores(att.as_mut_ptr(), t_n, qs, ld, ks, ld, t_n, hs, engine);
    let vs = head_rows(q.add(2 * c), ld, t_n, hs);
    for t in 0..t_n {
        // V's row t, which A'V packs after this pass: asked for now, since it is in memory (the
        // q/k/v rows were written long before) and its rows, 3C floats apart, defeat the
        // hardware's prefetching.
        super::prefetch(&vs[t * ld..][..hs]);
        let row = &mut att[t * t_n..(t + 1) * t_n];
        for s in &mut row[..=t] {
            *s *= scale;
        }
        softmax_causal(row, t);
    }
    let weights = dropout_weights(att, dropped, t_n);
    // out = A' V
    matmul_bf16::causal_weighted(out, c, weights, t_n, false, vs, ld, t_n, hs, engine);
}

/// `out` for one head, row by row (small heads). Same contract as [`head_forward_gemm`].
#[inline(always)]
unsafe fn head_forward_rows(
    head: Head,
    out: *mut f32,
    att: &mut [f32],
    mut dropped: Option<(&mut [f32], &mut [u8], HeadMask, f32)>,
    scale: f32,
) {
    let Head { t_n, c, hs, .. } = head;
    for t in 0..t_n {
        let row = t * t_n..(t + 1) * t_n;
        let a = &mut att[row.clone()];
        for (u, a_u) in a[..=t].iter_mut().enumerate() {
            *a_u = scale * dot(head.q(t), head.k(u));
        }
        softmax_causal(a, t);
        let o = std::slice::from_raw_parts_mut(out.add(t * c), hs);
        let weights: &[f32] = match dropped.as_mut() {
            Some((d, mask, head_mask, p)) => {
                let keep = 1.0 / (1.0 - *p);
                let m = &mut mask[row.clone()];
                draw_mask_row(*head_mask, m, t, *p);
                let d = &mut d[row];
                for ((d, &a), &m) in d.iter_mut().zip(a.iter()).zip(m.iter()) {
                    *d = a * m as f32 * keep;
                }
                d
            }
            None => a,
        };
        weighted_rows(o, &weights[..=t], head.q.add(2 * c), 3 * c, false);
    }
}

simd_fn! {
    /// One (batch row, head) of the forward pass; see [`forward`].
    fn head_forward(
        head: Head,
        out: SharedMut,
        att: &mut [f32],
        mask: Option<&mut [u8]>,
        dropped: Option<&mut [f32]>,
        head_mask: Option<HeadMask>,
        p: f32,
        scale: f32,
        path: Path,
    ) {
        let dropped = match (mask, dropped, head_mask) {
            (Some(mask), Some(dropped), Some(head_mask)) => Some((dropped, mask, head_mask, p)),
            _ => None,
        };
        // SAFETY: `forward` built `head` and `out` for this (batch row, head) alone, and chose
        // `Path::Tiles` and `Path::Bf16` only where their conditions hold.
        unsafe {
            match path {
                Path::Tiles => head_forward_tiles(head, out.get(), att, dropped, scale),
                Path::Bf16(engine) => head_forward_bf16(head, out.get(), att, dropped, scale, engine),
                Path::Gemm => head_forward_gemm(head, out.get(), att, dropped, scale),
                Path::Rows => head_forward_rows(head, out.get(), att, dropped, scale),
            }
        }
    }
}

/// Dropout on the attention weights: its probability and masks, and `mask` (B*H*T*T entries),
/// which the forward pass draws and the backward pass reads.
pub struct DropoutBuffers<'a> {
    pub mask: &'a mut [u8],
    pub dropout: AttentionDropout,
}

pub fn forward(
    out: &mut [f32],
    att: &mut [f32],
    dropout: Option<DropoutBuffers>,
    qkv: &[f32],
    shape: AttentionShape,
    scale: f32,
    bf16: bool,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Attention, false);
    let AttentionShape {
        batch: b_n,
        seq_len: t_n,
        channels: c,
        n_head: h_n,
    } = shape;
    let hs = shape.head_size();
    let square = t_n * t_n;
    let heads = b_n * h_n;
    assert!(qkv.len() >= b_n * t_n * 3 * c && out.len() >= b_n * t_n * c);
    let att = &mut att[..heads * square];
    let out_ptr = SharedMut(out.as_mut_ptr());
    let path = path(&shape, bf16);
    let (mask, p, masks) = match dropout {
        Some(d) => (
            Some(&mut d.mask[..heads * square]),
            d.dropout.p,
            Some(d.dropout.masks),
        ),
        None => (None, 0.0, None),
    };
    // Head h of batch row b: its part of row b's mask starts at element h * T * T.
    let head_mask = |bh: usize| {
        masks.map(|m| HeadMask {
            row: m.row(bh / h_n),
            first: (bh % h_n) * square,
        })
    };
    let head_of = |bh: usize| {
        let (b, h) = (bh / h_n, bh % h_n);
        Head {
            q: qkv[b * t_n * 3 * c + h * hs..].as_ptr(),
            o: std::ptr::null(),
            t_n,
            c,
            hs,
        }
    };
    // SAFETY (for `out_head`): head (b, h) writes only rows b*T..(b+1)*T, columns
    // h*hs..(h+1)*hs of out, inside its length (checked above), and each head runs once.
    let out_head =
        |bh: usize| unsafe { SharedMut(out_ptr.get().add((bh / h_n) * t_n * c + (bh % h_n) * hs)) };
    let min_len = super::min_items(4 * square * hs);
    match mask {
        Some(mask) => att
            .par_chunks_mut(square)
            .zip(mask.par_chunks_mut(square))
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(bh, (a, m))| {
                with_scratch(&SQUARE, square, |d| {
                    head_forward(
                        head_of(bh),
                        out_head(bh),
                        a,
                        Some(m),
                        Some(d),
                        head_mask(bh),
                        p,
                        scale,
                        path,
                    )
                })
            }),
        None => att
            .par_chunks_mut(square)
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(bh, a)| {
                head_forward(
                    head_of(bh),
                    out_head(bh),
                    a,
                    None,
                    None,
                    head_mask(bh),
                    0.0,
                    scale,
                    path,
                )
            }),
    }
}

/// Attention for the single query `q` (C) of one sequence, over the first `count` cached keys
/// and values (those of positions `0..=t` for the query at position t; with RoPE, once the
/// context is full, the whole ring of the last `block_size` positions, in any order: the softmax
/// does not care): how generation extends a sequence by one token without recomputing the
/// others. `keys` and `values` are laid out (H, T_cap, hs), so that one head's
/// keys are contiguous and stream through the cache (in the (T, 3C) q/k/v layout consecutive keys
/// lie 3C floats apart and every one is a cache miss). Writes `out_row` (C); `scores` (at least
/// `count` floats) is scratch. No dropout: generation is evaluation.
#[allow(clippy::too_many_arguments)]
pub fn forward_row(
    out_row: &mut [f32],
    scores: &mut [f32],
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    count: usize,
    n_head: usize,
    scale: f32,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Attention, false);
    let c = q.len();
    let hs = c / n_head;
    let cap = keys.len() / c;
    assert!(count >= 1 && count <= cap && values.len() == keys.len());
    assert!(out_row.len() >= c && scores.len() >= count);
    for h in 0..n_head {
        let head = h * cap * hs..(h * cap + count) * hs;
        head_row(
            &mut out_row[h * hs..(h + 1) * hs],
            &mut scores[..count],
            &q[h * hs..(h + 1) * hs],
            &keys[head.clone()],
            &values[head],
            scale,
        );
    }
}

simd_fn! {
    /// `out = softmax(scale * q . k_u for all u) . v`, one head, one query; `keys` and `values`
    /// hold the head's rows contiguously.
    fn head_row(out: &mut [f32], scores: &mut [f32], q: &[f32], keys: &[f32], values: &[f32], scale: f32) {
        let hs = q.len();
        for (s, k) in scores.iter_mut().zip(keys.chunks_exact(hs)) {
            *s = scale * dot(q, k);
        }
        let t = scores.len() - 1;
        softmax_causal(scores, t);
        out.fill(0.0);
        for (&s, v) in scores.iter().zip(values.chunks_exact(hs)) {
            axpy(out, s, v);
        }
    }
}

/// Copies the keys and values of rows `rows` of `qkv` (T, 3C) into the (H, T_cap, hs) caches
/// that [`forward_row`] reads (`keys` and `values` hold H * T_cap * hs floats each).
pub fn cache_keys_values(
    keys: &mut [f32],
    values: &mut [f32],
    qkv: &[f32],
    rows: std::ops::Range<usize>,
    channels: usize,
    n_head: usize,
) {
    let c = channels;
    let hs = c / n_head;
    let cap = keys.len() / c;
    assert!(rows.end <= cap && values.len() == keys.len() && qkv.len() >= rows.end * 3 * c);
    for t in rows {
        let row = &qkv[t * 3 * c..(t + 1) * 3 * c];
        for h in 0..n_head {
            let dst = (h * cap + t) * hs..(h * cap + t + 1) * hs;
            keys[dst.clone()].copy_from_slice(&row[c + h * hs..c + (h + 1) * hs]);
            values[dst].copy_from_slice(&row[2 * c + h * hs..2 * c + (h + 1) * hs]);
        }
    }
}

/// The backward pass of one head with matrix products. `d` (T, T) is scratch.
///
/// # Safety
/// `head` points into live `qkv` and `dout` buffers; `dhead` is this head's `q` columns in `dqkv`
/// (same layout as `head.q`), which no other thread touches.
#[inline(always)]
unsafe fn head_backward_gemm(
    head: Head,
    dhead: *mut f32,
    att: &[f32],
    d: &mut [f32],
    mask: Option<&[u8]>,
    keep: f32,
    scale: f32,
) {
    let Head {
        q,
        o: dout,
        t_n,
        c,
        hs,
    } = head;
    let weights = forward_weights(att, d, mask, keep);
    // dV[u0..u1] = A'[u0.., u0..u1]^T dY[u0..]: only rows t >= u0 have weight on these keys.
    for u0 in (0..t_n).step_by(block_rows(t_n)) {
        let u1 = (u0 + block_rows(t_n)).min(t_n);
        gemm_ptr(
            u1 - u0,
            hs,
            t_n - u0,
            dhead.add(2 * c + u0 * 3 * c),
            (3 * c, 1),
            false,
            weights.as_ptr().add(u0 * t_n + u0),
            (1, t_n),
            dout.add(u0 * c),
            (c, 1),
            1.0,
            false,
        );
    }
    // dA'[r0..r1, 0..r1] = dY[r0..r1] V[0..r1]^T, then softmax backward row by row.
    for r0 in (0..t_n).step_by(block_rows(t_n)) {
        let r1 = (r0 + block_rows(t_n)).min(t_n);
        gemm_ptr(
            r1 - r0,
            r1,
            hs,
            d.as_mut_ptr().add(r0 * t_n),
            (t_n, 1),
            false,
            dout.add(r0 * c),
            (c, 1),
            q.add(2 * c),
            (1, 3 * c),
            1.0,
            false,
        );
        softmax_backward_rows(d, att, mask, keep, scale, t_n, r0..r1);
    }
    // dQ[r0..r1] = dS[r0..r1, 0..r1] K[0..r1];  dK[u0..u1] = dS[u0.., u0..u1]^T Q[u0..].
    for r0 in (0..t_n).step_by(block_rows(t_n)) {
        let r1 = (r0 + block_rows(t_n)).min(t_n);
        gemm_ptr(
            r1 - r0,
            hs,
            r1,
            dhead.add(r0 * 3 * c),
            (3 * c, 1),
            false,
            d.as_ptr().add(r0 * t_n),
            (t_n, 1),
            q.add(c),
            (3 * c, 1),
            1.0,
            false,
        );
        gemm_ptr(
            r1 - r0,
            hs,
            t_n - r0,
            dhead.add(c + r0 * 3 * c),
            (3 * c, 1),
            false,
            d.as_ptr().add(r0 * t_n + r0),
            (1, t_n),
            q.add(r0 * 3 * c),
            (3 * c, 1),
            1.0,
            false,
        );
    }
}

/// The backward pass of one head with the tiled kernels. Same contract as
/// [`head_backward_gemm`], and T and hs are multiples of 8.
#[inline(always)]
unsafe fn head_backward_tiles(
    head: Head,
    dhead: *mut f32,
    att: &[f32],
    d: &mut [f32],
    mask: Option<&[u8]>,
    keep: f32,
    scale: f32,
) {
    use tiles::{Strides, Triangle};
    let Head {
        q,
        o: dout,
        t_n,
        c,
        hs,
    } = head;
    let (by_row, by_column) = (Strides { row: t_n, col: 1 }, Strides { row: 1, col: t_n });
    let weights = forward_weights(att, d, mask, keep);
    let (dq, dk, dv) = (dhead, dhead.add(c), dhead.add(2 * c));
    let ld = 3 * c;
    // dV_u = sum_{t >= u} A'[t, u] dY_t
    weighted_gathered(
        dv,
        ld,
        weights,
        by_column,
        dout,
        c,
        t_n,
        hs,
        Triangle::Upper,
    );
    // dA' = dY V^T, then softmax backward row by row (d then holds scale * dS).
    with_scratch(&TRANSPOSED, hs * t_n, |vt| {
        tiles::transpose(vt, q.add(2 * c), ld, t_n, hs);
        tiles::causal_scores(d.as_mut_ptr(), dout, c, vt.as_ptr(), t_n, hs, 1.0);
    });
    softmax_backward_rows(d, att, mask, keep, scale, t_n, 0..t_n);
    // dQ_t = sum_{u <= t} dS[t, u] K_u;  dK_u = sum_{t >= u} dS[t, u] Q_t
    weighted_gathered(dq, ld, d, by_row, q.add(c), ld, t_n, hs, Triangle::Lower);
    weighted_gathered(dk, ld, d, by_column, q, ld, t_n, hs, Triangle::Upper);
}

/// The backward pass of one head with bf16 products. Same contract as [`head_backward_gemm`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn head_backward_bf16(
    head: Head,
    dhead: *mut f32,
    att: &[f32],
    d: &mut [f32],
    mask: Option<&[u8]>,
    keep: f32,
    scale: f32,
    engine: Bf16Path,
) {
    let Head {
        q,
        o: dout,
        t_n,
        c,
        hs,
    } = head;
    let ld = 3 * c;
    let (qs, ks, vs) = (
        head_rows(q, ld, t_n, hs),
        head_rows(q.add(c), ld, t_n, hs),
        head_rows(q.add(2 * c), ld, t_n, hs),
    );
    let dys = head_rows(dout, c, t_n, hs);
    let (dq, dk, dv) = (dhead, dhead.add(c), dhead.add(2 * c));
    // dV_u = sum_{t >= u} A'[t, u] dY_t, and dA' = dY V^T, then softmax backward row by row (d
    // then holds scale * dS). Without dropout the weights are `att` itself, and dV goes second:
    // the softmax's pass reads `att` (a quarter of a megabyte, last written in the forward pass
    // and long gone to memory) row after row, which the hardware streams into the cache, where
    // dV's product would first read it down its columns, a row apart, one miss after another.
    let dv_product = |weights: &[f32]| {
        matmul_bf16::causal_weighted(dv, ld, weights, t_n, true, dys, c, t_n, hs, engine)
    };
    let scores = |d: &mut [f32]| {
        matmul_bf16::causal_scores(d.as_mut_ptr(), t_n, dys, c, vs, ld, t_n, hs, engine);
        for t in 0..t_n {
            // K's and Q's row t, which dQ and dK pack after this pass (as V in the forward).
            super::prefetch(&ks[t * ld..][..hs]);
            super::prefetch(&qs[t * ld..][..hs]);
            softmax_backward_rows(d, att, mask, keep, scale, t_n, t..t + 1);
        }
    };
    if mask.is_some() {
        dv_product(forward_weights(att, d, mask, keep));
        scores(d);
    } else {
        scores(d);
        dv_product(att);
    }
    // dQ_t = sum_{u <= t} dS[t, u] K_u;  dK_u = sum_{t >= u} dS[t, u] Q_t
    matmul_bf16::causal_weighted(dq, ld, d, t_n, false, ks, ld, t_n, hs, engine);
    matmul_bf16::causal_weighted(dk, ld, d, t_n, true, qs, ld, t_n, hs, engine);
}

/// The backward pass of one head, row by row (small heads). `d` holds at least T floats.
#[inline(always)]
unsafe fn head_backward_rows(
    head: Head,
    dhead: *mut f32,
    att: &[f32],
    d: &mut [f32],
    mask: Option<&[u8]>,
    keep: f32,
    scale: f32,
) {
    let Head { t_n, c, hs, .. } = head;
    let grad =
        |t: usize, part: usize| std::slice::from_raw_parts_mut(dhead.add(t * 3 * c + part * c), hs);
    let d = &mut d[..t_n];
    // The sums below accumulate over t; the head's gradient starts from zero.
    for t in 0..t_n {
        for part in 0..3 {
            grad(t, part).fill(0.0);
        }
    }
    for t in 0..t_n {
        let a = &att[t * t_n..(t + 1) * t_n];
        let d_o = std::slice::from_raw_parts(head.o.add(t * c), hs);
        let m = mask.map(|m| &m[t * t_n..(t + 1) * t_n]);
        for u in 0..=t {
            let w = match m {
                Some(m) => a[u] * m[u] as f32 * keep,
                None => a[u],
            };
            axpy(grad(u, 2), w, d_o);
        }
        for (u, d_u) in d[..=t].iter_mut().enumerate() {
            *d_u = dot(d_o, head.v(u));
        }
        softmax_causal_backward(d, a, m, keep, t, scale);
        weighted_rows(grad(t, 0), &d[..=t], head.q.add(c), 3 * c, true);
        for (u, &ds) in d[..=t].iter().enumerate() {
            axpy(grad(u, 1), ds, head.q(t));
        }
    }
}

simd_fn! {
    /// One (batch row, head) of the backward pass; see [`backward`].
    fn head_backward(head: Head, dhead: SharedMut, att: &[f32], d: &mut [f32], mask: Option<&[u8]>, keep: f32, scale: f32, path: Path) {
        // SAFETY: `backward` built `head` and `dhead` for this (batch row, head) alone, and
        // chose `Path::Tiles` and `Path::Bf16` only where their conditions hold.
        unsafe {
            match path {
                Path::Tiles => head_backward_tiles(head, dhead.get(), att, d, mask, keep, scale),
                Path::Bf16(engine) => {
                    head_backward_bf16(head, dhead.get(), att, d, mask, keep, scale, engine)
                }
                Path::Gemm => head_backward_gemm(head, dhead.get(), att, d, mask, keep, scale),
                Path::Rows => head_backward_rows(head, dhead.get(), att, d, mask, keep, scale),
            }
        }
    }
}

/// Writes `dqkv` (B, T, 3C) from `dout` (B, T, C). Unlike the other kernels this overwrites its
/// gradient rather than adding to it: attention is the only consumer of `qkv`, so nothing else
/// contributes, and the caller need not zero the buffer nor this pass re-read it.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    dropout: Option<(&[u8], f32)>,
    shape: AttentionShape,
    scale: f32,
    bf16: bool,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Attention, true);
    let AttentionShape {
        batch: b_n,
        seq_len: t_n,
        channels: c,
        n_head: h_n,
    } = shape;
    let hs = shape.head_size();
    let square = t_n * t_n;
    let heads = b_n * h_n;
    assert!(dqkv.len() >= b_n * t_n * 3 * c && dout.len() >= b_n * t_n * c);
    assert!(qkv.len() >= b_n * t_n * 3 * c);
    assert!(att.len() >= heads * square);
    if let Some((m, _)) = dropout {
        assert!(m.len() >= heads * square);
    }
    let dqkv_ptr = SharedMut(dqkv.as_mut_ptr());
    let path = path(&shape, bf16);
    let keep = dropout.map_or(1.0, |(_, p)| 1.0 / (1.0 - p));
    (0..heads)
        .into_par_iter()
        .with_min_len(super::min_items(8 * square * hs))
        .for_each(|bh| {
            let (b, h) = (bh / h_n, bh % h_n);
            let head = Head {
                q: qkv[b * t_n * 3 * c + h * hs..].as_ptr(),
                o: dout[b * t_n * c + h * hs..].as_ptr(),
                t_n,
                c,
                hs,
            };
            // SAFETY: head (b, h) alone touches head h's columns (q, k and v parts) of rows
            // b*T..(b+1)*T of dqkv, inside its length (checked above).
            let dhead = unsafe { SharedMut(dqkv_ptr.get().add(b * t_n * 3 * c + h * hs)) };
            let att_bh = &att[bh * square..(bh + 1) * square];
            let mask = dropout.map(|(m, _)| &m[bh * square..(bh + 1) * square]);
            with_scratch(&SQUARE, square, |d| {
                head_backward(head, dhead, att_bh, d, mask, keep, scale, path)
            });
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::*;
    use crate::rng::{DropoutSeed, DropoutSite, Rng};

    fn dropout(p: f32, seed: u64) -> Option<AttentionDropout> {
        let masks = DropoutSeed::new(seed).site(0, DropoutSite::AttentionWeights);
        Some(AttentionDropout { p, masks })
    }

    fn run_forward(
        qkv: &[f32],
        shape: AttentionShape,
        scale: f32,
        drop: Option<AttentionDropout>,
    ) -> (Vec<f32>, Vec<f32>, Vec<u8>) {
        let AttentionShape {
            batch: b,
            seq_len: t,
            channels: c,
            n_head: h,
        } = shape;
        let mut out = vec![0.0; b * t * c];
        let mut att = vec![0.0; b * h * t * t];
        let mut mask = vec![0u8; b * h * t * t];
        let buffers = drop.map(|d| DropoutBuffers {
            mask: &mut mask,
            dropout: d,
        });
        forward(&mut out, &mut att, buffers, qkv, shape, scale, false);
        (out, att, mask)
    }

    fn run_backward(
        qkv: &[f32],
        w: &[f32],
        shape: AttentionShape,
        scale: f32,
        drop: Option<AttentionDropout>,
    ) -> Vec<f32> {
        let (_, att, mask) = run_forward(qkv, shape, scale, drop);
        // NaN everywhere: `backward` overwrites its gradient, so none may survive.
        let mut dqkv = vec![f32::NAN; qkv.len()];
        backward(
            &mut dqkv,
            w,
            qkv,
            &att,
            drop.map(|d| (&mask[..], d.p)),
            shape,
            scale,
            false,
        );
        dqkv
    }

    /// Every implementation (the tiles where the CPU has them), on shapes that select each of
    /// them, with and without dropout.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(8);
        for shape in [
            AttentionShape {
                batch: 2,
                seq_len: 5,
                channels: 12,
                n_head: 3,
            },
            AttentionShape {
                batch: 1,
                seq_len: 70,
                channels: 32,
                n_head: 2,
            },
            AttentionShape {
                batch: 1,
                seq_len: 40,
                channels: 48,
                n_head: 2,
            },
        ] {
            let n = shape.batch * shape.seq_len * shape.channels;
            let qkv = random_vec(3 * n, &mut rng, 1.0);
            let w = random_vec(n, &mut rng, 1.0);
            for drop in [None, dropout(0.25, 9)] {
                let dqkv = run_backward(&qkv, &w, shape, 0.5, drop);
                check(
                    &format!("dqkv {shape:?} {drop:?}"),
                    &qkv,
                    &dqkv,
                    |x| weighted_sum(&run_forward(x, shape, 0.5, drop).0, &w),
                    3e-3,
                );
            }
        }
    }

    /// Forward and backward of every head of `shape` through `path`, with dropout:
    /// (out, att, mask, dqkv).
    fn run_path(
        path: Path,
        qkv: &[f32],
        w: &[f32],
        shape: AttentionShape,
        p: f32,
        seed: u64,
        scale: f32,
    ) -> (Vec<f32>, Vec<f32>, Vec<u8>, Vec<f32>) {
        let AttentionShape {
            batch: b_n,
            seq_len: t_n,
            channels: c,
            n_head: h_n,
        } = shape;
        let (hs, sq) = (c / h_n, t_n * t_n);
        let mut out = vec![0.0; b_n * t_n * c];
        let mut att = vec![0.0; b_n * h_n * sq];
        let mut mask = vec![0u8; b_n * h_n * sq];
        let mut dqkv = vec![f32::NAN; qkv.len()];
        let mut scratch = vec![0.0; sq];
        for bh in 0..b_n * h_n {
            let (b, h) = (bh / h_n, bh % h_n);
            let head = Head {
                q: qkv[b * t_n * 3 * c + h * hs..].as_ptr(),
                o: w[b * t_n * c + h * hs..].as_ptr(),
                t_n,
                c,
                hs,
            };
            let heads = bh * sq..(bh + 1) * sq;
            let head_mask = HeadMask {
                row: DropoutSeed::new(seed)
                    .site(0, DropoutSite::AttentionWeights)
                    .row(b),
                first: h * sq,
            };
            let o = SharedMut(out[b * t_n * c + h * hs..].as_mut_ptr());
            head_forward(
                head,
                o,
                &mut att[heads.clone()],
                Some(&mut mask[heads.clone()]),
                Some(&mut scratch),
                Some(head_mask),
                p,
                scale,
                path,
            );
            let dh = SharedMut(dqkv[b * t_n * 3 * c + h * hs..].as_mut_ptr());
            let keep = 1.0 / (1.0 - p);
            let (a, m) = (&att[heads.clone()], Some(&mask[heads]));
            head_backward(head, dh, a, &mut scratch, m, keep, scale, path);
        }
        (out, att, mask, dqkv)
    }

    /// The bf16 heads (on each engine this machine runs) compute what the fp32 heads do, to
    /// within bf16's rounding of the products' operands, with the same dropout mask; and a
    /// model in bf16 takes them for heads of 64 where the CPU has AVX512_BF16, not for heads of
    /// 32, nor in fp32.
    #[test]
    fn bf16_heads_agree_with_fp32_to_within_bf16_rounding() {
        let mut rng = Rng::new(12);
        let shape = AttentionShape {
            batch: 2,
            seq_len: 70,
            channels: 128,
            n_head: 2,
        };
        let n = 2 * 70 * 128;
        let qkv = random_vec(3 * n, &mut rng, 1.0);
        let w = random_vec(n, &mut rng, 1.0);
        let (o32, a32, m32, d32) = run_path(Path::Gemm, &qkv, &w, shape, 0.2, 4, 0.3);
        let mut engines = vec![Bf16Path::Portable];
        if crate::runtime::has_avx512_bf16() {
            engines.push(Bf16Path::Avx512);
            assert_eq!(path(&shape, true), Path::Bf16(Bf16Path::Avx512));
        }
        assert_ne!(path(&shape, false), Path::Bf16(Bf16Path::Avx512));
        let small = AttentionShape {
            channels: 64,
            ..shape
        };
        assert!(!matches!(path(&small, true), Path::Bf16(_)));
        for engine in engines {
            let (o, a, m, d) = run_path(Path::Bf16(engine), &qkv, &w, shape, 0.2, 4, 0.3);
            assert_eq!(m, m32, "{engine:?}: dropout mask");
            for (name, x, y) in [("out", &o, &o32), ("att", &a, &a32), ("dqkv", &d, &d32)] {
                // Relative to the tensor's scale: each operand is rounded by up to 2^-9.
                let scale = y.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
                let worst = x
                    .iter()
                    .zip(y.iter())
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst < 2e-2 * scale,
                    "{engine:?} {name}: {worst} (scale {scale})"
                );
                // And they are not the fp32 numbers: the products did round.
                assert!(worst > 0.0, "{engine:?} {name}: identical to fp32");
            }
        }
    }

    /// The tiled, matrix-product and row-by-row heads compute the same thing, and `forward` and
    /// `backward` use the path `path` picks.
    #[test]
    fn all_head_paths_agree() {
        let mut rng = Rng::new(11);
        let shape = AttentionShape {
            batch: 2,
            seq_len: 72,
            channels: 32,
            n_head: 2,
        };
        let n = 2 * 72 * 32;
        let qkv = random_vec(3 * n, &mut rng, 1.0);
        let w = random_vec(n, &mut rng, 1.0);
        let drop = dropout(0.2, 4);
        let (out, att, mask) = run_forward(&qkv, shape, 0.3, drop);
        let dqkv = run_backward(&qkv, &w, shape, 0.3, drop);
        // The tiles run on any lanes (plain arrays too): every path is checked on every CPU,
        // and chosen where the CPU has vectors.
        let paths = vec![Path::Rows, Path::Gemm, Path::Tiles];
        if crate::kernels::simd::vectors() {
            assert_eq!(path(&shape, false), Path::Tiles);
        } else {
            assert_eq!(path(&shape, false), Path::Gemm);
        }
        for path in paths {
            let (o, a, m, d) = run_path(path, &qkv, &w, shape, 0.2, 4, 0.3);
            assert_eq!(m, mask, "{path:?}: dropout mask");
            for (name, x, y) in [("out", &o, &out), ("att", &a, &att), ("dqkv", &d, &dqkv)] {
                for (x, y) in x.iter().zip(y.iter()) {
                    assert!(
                        (x - y).abs() < 1e-4 * (1.0 + y.abs()),
                        "{path:?} {name}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn weights_are_causal_and_normalised() {
        let mut rng = Rng::new(9);
        for shape in [
            AttentionShape {
                batch: 1,
                seq_len: 6,
                channels: 8,
                n_head: 2,
            },
            AttentionShape {
                batch: 1,
                seq_len: 40,
                channels: 32,
                n_head: 2,
            },
        ] {
            let t_n = shape.seq_len;
            let qkv = random_vec(t_n * 3 * shape.channels, &mut rng, 1.0);
            let (out, att, _) = run_forward(&qkv, shape, 0.5, None);
            for row in 0..2 * t_n {
                let t = row % t_n;
                let r = &att[row * t_n..(row + 1) * t_n];
                assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                assert!(r[t + 1..].iter().all(|&x| x == 0.0));
            }
            // The first position attends only to itself: its output is its own value vector.
            let c = shape.channels;
            for (x, y) in out[..c].iter().zip(&qkv[2 * c..3 * c]) {
                assert!((x - y).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn one_row_at_a_time_matches_the_whole_sequence() {
        let mut rng = Rng::new(10);
        let shape = AttentionShape {
            batch: 1,
            seq_len: 7,
            channels: 12,
            n_head: 3,
        };
        let qkv = random_vec(7 * 36, &mut rng, 1.0);
        let (out, _, _) = run_forward(&qkv, shape, 0.4, None);
        let mut row = vec![0.0; 12];
        let mut scores = vec![0.0; 7];
        // Cache capacity 9 > 7: rows beyond the sequence are never read.
        let (mut keys, mut values) = (vec![f32::NAN; 9 * 12], vec![f32::NAN; 9 * 12]);
        for t in 0..7 {
            cache_keys_values(&mut keys, &mut values, &qkv, t..t + 1, 12, 3);
            let q = &qkv[t * 36..t * 36 + 12];
            forward_row(&mut row, &mut scores, q, &keys, &values, t + 1, 3, 0.4);
            for (a, b) in row.iter().zip(&out[t * 12..(t + 1) * 12]) {
                assert!((a - b).abs() < 1e-6, "row {t}: {a} vs {b}");
            }
        }
    }

    /// Against the step-by-step reference (scores, scale, mask, softmax, dropout, weighted sum),
    /// with and without dropout, on shapes that take each path.
    #[test]
    fn matches_the_reference_attention() {
        use crate::reference::layers as reference;
        let mut rng = Rng::new(25);
        for shape in [
            AttentionShape {
                batch: 2,
                seq_len: 5,
                channels: 12,
                n_head: 3,
            },
            AttentionShape {
                batch: 2,
                seq_len: 40,
                channels: 48,
                n_head: 2,
            },
            AttentionShape {
                batch: 2,
                seq_len: 70,
                channels: 32,
                n_head: 2,
            },
        ] {
            let n = shape.batch * shape.seq_len * shape.channels;
            let qkv = random_vec(3 * n, &mut rng, 1.0);
            let dout = random_vec(n, &mut rng, 1.0);
            let s = AttentionShape {
                batch: shape.batch,
                seq_len: shape.seq_len,
                channels: shape.channels,
                n_head: shape.n_head,
            };
            for drop in [None, dropout(0.25, 9)] {
                let name = format!("{:?} {shape:?} {drop:?}", path(&shape, false));
                let (out, att, mask) = run_forward(&qkv, shape, 0.5, drop);
                let dqkv = run_backward(&qkv, &dout, shape, 0.5, drop);
                let mut want = vec![0.0; n];
                let cache = reference::attention_forward(
                    &mut want,
                    &qkv,
                    0.5,
                    drop.map(|d| (d.p, d.masks)),
                    s,
                );
                assert_close(&format!("{name}: out"), &out, &want, 1e-5);
                assert_close(&format!("{name}: att"), &att, &cache.att, 1e-5);
                if let Some(want_mask) = &cache.mask {
                    // Kept where the key is visible; above the diagonal the weight is 0 anyway.
                    let t_n = shape.seq_len;
                    for (i, (&m, &w)) in mask.iter().zip(want_mask).enumerate() {
                        let (t, u) = ((i / t_n) % t_n, i % t_n);
                        if u <= t {
                            assert_eq!(m == 1, w, "{name}: mask element {i}");
                        }
                    }
                }
                let mut want_dqkv = vec![0.0; 3 * n];
                reference::attention_backward(&mut want_dqkv, &dout, &qkv, &cache, 0.5, 0.25, s);
                assert_close(&format!("{name}: dqkv"), &dqkv, &want_dqkv, 1e-5);
            }
        }
    }
}
