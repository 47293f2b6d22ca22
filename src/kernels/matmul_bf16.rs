//! bf16 matrix products for the linear layers: bf16 operands, fp32 accumulation, fp32 outputs.
//!
//! bf16 is the top half of an IEEE fp32 (sign, the 8 exponent bits, 7 of the 23 mantissa bits):
//! fp32's range at about 3 significant digits. CPUs with AVX512_BF16 multiply it at twice the fp32
//! rate: `VDPBF16PS` computes, for each of 16 fp32 lanes, `acc += a[2i] b[2i] + a[2i+1] b[2i+1]`,
//! 64 flops per instruction against 32 for an fp32 fused multiply-add. Mixed precision as on GPUs:
//! the parameters, gradients, optimizer state and every other layer stay fp32; only the operands
//! of these products are rounded (to nearest even), and the sums are fp32.
//!
//! The three products of a linear layer `out = inp @ W^T` (inp (N, IC), W (OC, IC)), each
//! `C (M, Nc) (+)= A (M, K) @ B (K, Nc)` with C row-major:
//!
//! | product | M | Nc | K | A | B |
//! |---|---|---|---|---|---|
//! | [`forward`] `out = inp @ W^T` | N | OC | IC | inp, k along rows | W^T, pre-packed |
//! | [`input_grad`] `dinp = dout @ W` | N | IC | OC | dout, k along rows | W, pre-packed |
//! | [`weight_grad`] `dW = dout^T @ inp` | OC | IC | N | dout^T, k down columns | inp, k down columns |
//!
//! `VDPBF16PS` reduces over k in pairs, so both operands are packed with consecutive k-pairs in one
//! `u32` (element 2p in the low half): A into panels of [`MR`] rows, `[pair][row]`, one element
//! broadcast at a time; B into panels of [`NR`] columns, `[pair][column]`, two vectors at a time.
//! Where k runs along a row (the forward and input-gradient A), a pair is two neighbours of one
//! row: 16 rows' 32 floats are converted a row at a time and transposed in registers
//! ([`avx512::pack_rows`]). Where it runs down the columns (the weight gradient's A and B, and W
//! read as B of the input gradient), a pair is the same column of two consecutive rows, so two
//! rows are interleaved ([`avx512::pack_columns`]). The weight is rounded and packed once per
//! optimizer step, for both products that read it ([`PackedWeight`]); activations and gradients
//! are rounded while they are packed.
//!
//! Blocking (per thread): k in blocks of [`KC_PAIRS`] pairs, so that a B micro-panel (KC x NR) stays
//! in L1 while the [`MC`] rows of an A block (in L2) stream past it; the micro-kernel keeps an
//! MR x NR tile of C in 24 vector registers. Odd k, and m and Nc that are not multiples of the
//! blocking, are zero-padded in the packed panels and masked at the store. Large products split
//! their rows of C over the rayon pool; products on a thread that runs its kernels
//! [`super::sequentially`] (a data-parallel shard) stay on it. On 2 Zen 4 cores the micro-kernel
//! alone runs at about 220 GFLOP/s a core (95% of `VDPBF16PS`'s rate) and the lecture's products
//! at 175 to 200 (`cargo run --release --example bf16_products`). A Zen 5 core runs the kernel
//! twice as fast (539 GFLOP/s on one), and there packing, which reads activations written long
//! before (from memory), took nearly a third of the product time until the packers asked for the
//! rows they read next ahead of time (software prefetch, in [`avx512`]).
//!
//! Two engines compute the same thing: the AVX512_BF16 one ([`avx512`]), and a portable twin in
//! plain Rust for CPUs without it (tests, and `CHARGPT_BF16_EMULATE=1`, which lets a machine
//! without the instruction train with bf16 numerics at well below fp32 speed, to check what bf16
//! does to a model). Both round the same way; they differ in summation order only.

#[cfg(target_arch = "x86_64")]
pub mod avx512;

use super::SharedMut;
use rayon::prelude::*;
use std::cell::RefCell;

/// Rows of C per micro-kernel call.
pub const MR: usize = 12;
/// Columns of C per micro-kernel call.
pub const NR: usize = 32;
/// k-pairs per block: a B micro-panel of KC_PAIRS x NR elements is 24 KiB, half of a Zen 5's L1
/// (and three quarters of a Zen 4's). 192 pairs take the 384 channels of the lecture's model in
/// one block: on 2 Zen 5 cores its bf16 step took 4% less than at 128 (its second k-block added
/// to C), and 256 (64 pairs of padding on 384) gained nothing over 192.
pub const KC_PAIRS: usize = 192;
/// Rows of A per block (8 micro-panels, 72 KiB at KC_PAIRS).
pub const MC: usize = 8 * MR;

#[cfg(target_arch = "x86_64")]
const _: () = assert!(avx512::MR == MR && avx512::NR == NR);

/// Which code computes the bf16 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Path {
    /// `VDPBF16PS` micro-kernels (AVX512_BF16 CPUs).
    Avx512,
    /// The same packing and blocking in plain Rust.
    Portable,
}

impl Bf16Path {
    /// The path for this CPU: AVX512_BF16 where it has it, otherwise the portable twin if
    /// `CHARGPT_BF16_EMULATE=1` allowed bf16 without it, otherwise none.
    pub fn detect() -> Option<Bf16Path> {
        if crate::runtime::has_avx512_bf16() {
            Some(Bf16Path::Avx512)
        } else if crate::runtime::bf16_emulation_allowed() {
            Some(Bf16Path::Portable)
        } else {
            None
        }
    }

    fn best() -> Bf16Path {
        Bf16Path::detect().unwrap_or(Bf16Path::Portable)
    }
}

/// fp32 -> bf16, rounding to nearest even, as `VCVTNE2PS2BF16` does: NaNs stay (quiet) NaNs,
/// subnormal inputs become zero of the same sign; values that round past the largest bf16
/// become infinity.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if bits & 0x7F80_0000 == 0 {
        return ((bits >> 16) & 0x8000) as u16;
    }
    // Adding 0x7FFF, plus one when the kept part is odd, carries into the kept half exactly when
    // the dropped half is above one half, or equal to it with an odd kept part.
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// bf16 -> fp32 (exact).
#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to the nearest bf16, as an fp32.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

/// A k-pair: `lo` (element 2p) in the low half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// A linear layer's weight W (OC, IC) rounded to bf16 and packed as the B operand of both
/// products that read it. Refreshed from the fp32 master weight once per optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeight {
    out_channels: usize,
    in_channels: usize,
    /// W^T for [`forward`] (K = IC, Nc = OC): panels of NR output channels, `[panel][pair][NR]`.
    transposed: Vec<u32>,
    /// W for [`input_grad`] (K = OC, Nc = IC): panels of NR input channels, `[panel][pair][NR]`.
    plain: Vec<u32>,
}

impl PackedWeight {
    /// Zeroed buffers for a weight of shape (OC, IC); [`PackedWeight::pack`] fills them.
    pub fn new(out_channels: usize, in_channels: usize) -> Self {
        let (oc, ic) = (out_channels, in_channels);
        PackedWeight {
            out_channels: oc,
            in_channels: ic,
            transposed: vec![0; oc.div_ceil(NR) * ic.div_ceil(2) * NR],
            plain: vec![0; ic.div_ceil(NR) * oc.div_ceil(2) * NR],
        }
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.out_channels, self.in_channels)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.transposed.len() + self.plain.len())
    }

    /// Rounds `w` (OC, IC) to bf16 into both layouts (the padding stays zero).
    pub fn pack(&mut self, w: &[f32]) {
        self.pack_with(w, Bf16Path::best());
    }

    fn pack_with(&mut self, w: &[f32], path: Bf16Path) {
        let (oc, ic) = (self.out_channels, self.in_channels);
        assert_eq!(w.len(), oc * ic);
        let (kp_ic, kp_oc) = (ic.div_ceil(2), oc.div_ceil(2));
        // W^T: row o of W holds output channel o's k (= ic) run, column o % NR of panel o / NR.
        pack_rows(path, &mut self.transposed, NR, kp_ic * NR, w, ic, oc, ic);
        // W: k (= oc) runs down the columns; pair p of panel j interleaves rows 2p and 2p + 1.
        pack_columns(path, &mut self.plain, NR, kp_oc * NR, w, ic, ic, oc);
    }
}

/// Packed panels `[pair][stride]`, each `panel_len` long, of `rows` rows whose reduced dimension
/// runs along the row (`x[r * ld + 0..k]`): row r in lane r % stride of panel r / stride,
/// `pair(x[r][2p], x[r][2p + 1])`, zero past an odd k and past `rows`.
#[allow(clippy::too_many_arguments)]
fn pack_rows(
    path: Bf16Path,
    dst: &mut [u32],
    stride: usize,
    panel_len: usize,
    x: &[f32],
    ld: usize,
    rows: usize,
    k: usize,
) {
    let (pairs, panels) = (k.div_ceil(2), rows.div_ceil(stride));
    assert!(stride <= 32 && pairs * stride <= panel_len);
    assert!(panels == 0 || dst.len() >= (panels - 1) * panel_len + pairs * stride);
    assert!(rows == 0 || x.len() >= (rows - 1) * ld + k);
    for q in 0..panels {
        let panel = &mut dst[q * panel_len..][..pairs * stride];
        let (x, nrows) = (&x[q * stride * ld..], stride.min(rows - q * stride));
        #[cfg(target_arch = "x86_64")]
        if path == Bf16Path::Avx512 {
            // SAFETY: the path is only chosen where the CPU has AVX512_BF16 (Bf16Path::detect);
            // the asserts above bound every read and write.
            unsafe { avx512::pack_rows(panel.as_mut_ptr(), stride, x.as_ptr(), ld, nrows, k) };
            continue;
        }
        let _ = path;
        for (p, out) in panel.chunks_exact_mut(stride).enumerate() {
            for (r, o) in out.iter_mut().enumerate() {
                *o = match r < nrows {
                    true => {
                        let row = &x[r * ld..][..k];
                        pair(row[2 * p], row.get(2 * p + 1).copied().unwrap_or(0.0))
                    }
                    false => 0,
                };
            }
        }
    }
}

/// Packed panels `[pair][stride]`, each `panel_len` long, of `width` columns whose reduced
/// dimension runs down the rows (`x[kk * ld + j]`): column j in lane j % stride of panel
/// j / stride, `pair(x[2p][j], x[2p + 1][j])`, zero past an odd k and past `width`.
#[allow(clippy::too_many_arguments)]
fn pack_columns(
    path: Bf16Path,
    dst: &mut [u32],
    stride: usize,
    panel_len: usize,
    x: &[f32],
    ld: usize,
    width: usize,
    k: usize,
) {
    let (pairs, panels) = (k.div_ceil(2), width.div_ceil(stride));
    assert!(stride <= 32 && pairs * stride <= panel_len);
    assert!(panels == 0 || dst.len() >= (panels - 1) * panel_len + pairs * stride);
    assert!(k == 0 || x.len() >= (k - 1) * ld + width);
    #[cfg(target_arch = "x86_64")]
    if path == Bf16Path::Avx512 {
        // SAFETY: the CPU has AVX512_BF16 (Bf16Path::detect); the asserts bound every access.
        unsafe {
            avx512::pack_columns(
                dst.as_mut_ptr(),
                stride,
                panel_len,
                x.as_ptr(),
                ld,
                width,
                k,
            )
        };
        return;
    }
    let _ = path;
    for q in 0..panels {
        let panel = &mut dst[q * panel_len..][..pairs * stride];
        let cols = stride.min(width - q * stride);
        pack_columns_portable(panel, stride, &x[q * stride..], ld, cols, k);
    }
}

super::simd_fn! {
    fn pack_columns_portable(
        dst: &mut [u32],
        stride: usize,
        x: &[f32],
        ld: usize,
        width: usize,
        k: usize,
    ) {
        for (p, out) in dst.chunks_exact_mut(stride).take(k.div_ceil(2)).enumerate() {
            let r0 = &x[2 * p * ld..][..width];
            let (data, pad) = out.split_at_mut(width);
            match (2 * p + 1 < k).then(|| &x[(2 * p + 1) * ld..][..width]) {
                Some(r1) => {
                    for ((d, &a), &b) in data.iter_mut().zip(r0).zip(r1) {
                        *d = pair(a, b);
                    }
                }
                None => {
                    for (d, &a) in data.iter_mut().zip(r0) {
                        *d = pair(a, 0.0);
                    }
                }
            }
            pad.fill(0);
        }
    }
}

super::simd_fn! {
    /// The portable micro-kernel: what [`avx512::kernel`] computes, in plain Rust. Each bf16
    /// widens exactly to fp32 (a shift), each pair's two products are added, then accumulated.
    fn kernel_portable(
        kp: usize,
        a: &[u32],
        b: &[u32],
        c: SharedMut,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let lo = |u: u32| f32::from_bits(u << 16);
        let hi = |u: u32| f32::from_bits(u & 0xFFFF_0000);
        for r in 0..rows {
            let mut acc = [0.0f32; NR];
            for p in 0..kp {
                let av = a[p * MR + r];
                let (a0, a1) = (lo(av), hi(av));
                let bp = &b[p * NR..(p + 1) * NR];
                for (s, &bv) in acc.iter_mut().zip(bp) {
                    *s += a0 * lo(bv) + a1 * hi(bv);
                }
            }
            // SAFETY: the driver passes a tile of C inside the caller's output (rows x cols at
            // stride ldc) that no other thread writes.
            let out = unsafe { std::slice::from_raw_parts_mut(c.get().add(r * ldc), cols) };
            for (o, &s) in out.iter_mut().zip(&acc) {
                *o = if accumulate { *o + s } else { s };
            }
        }
    }
}

/// Where the A operand (M, K) comes from.
#[derive(Clone, Copy)]
enum ASource<'a> {
    /// `A[i][k] = x[i * ld + k]`: k along a row.
    KAlongRows { x: &'a [f32], ld: usize },
    /// `A[i][k] = x[k * ld + i]`: k down the columns (a transposed operand).
    KDownColumns { x: &'a [f32], ld: usize },
}

/// Where the B operand (K, Nc) comes from.
#[derive(Clone, Copy)]
enum BSource<'a> {
    /// Already packed: panels of NR columns, `[panel][pair][NR]`, every k-pair of the product.
    Packed(&'a [u32]),
    /// `B[k][j] = x[k * ld + j]`: k down the columns, packed per block.
    KDownColumns { x: &'a [f32], ld: usize },
    /// `B[k][j] = x[j * ld + k]`: k along a row (a transposed operand), packed per block.
    KAlongRows { x: &'a [f32], ld: usize },
}

/// One product `C (m, n) (+)= A (m, k) @ B (k, n)`, C row-major with row stride `ldc`.
#[derive(Clone, Copy)]
struct Product<'a> {
    m: usize,
    n: usize,
    k: usize,
    a: ASource<'a>,
    b: BSource<'a>,
    c: SharedMut,
    ldc: usize,
    accumulate: bool,
    causal: Causal,
}

/// Which part of a square product attention needs (its m = n or m = k is the sequence length):
/// whole tiles outside it are skipped, and what the tiles that straddle the diagonal compute
/// beyond it is the caller's to ignore (attention's softmax overwrites it) or is zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Causal {
    /// The whole product.
    Full,
    /// Only `C[i][j]` for `j <= i` (the scores `Q K^T`): a row panel skips the column panels
    /// past its last row, and leaves them as they were.
    Output,
    /// A is lower triangular, `A[i][k] = 0` for `k > i` (the weights in `A V`): a row panel sums
    /// only k up to its last row.
    ALower,
    /// A is upper triangular, `A[i][k] = 0` for `k < i` (the transposed weights in `A^T dY`): a
    /// row panel sums only k from its first row.
    AUpper,
}

thread_local! {
    /// Packing buffers (A block, B block), grown on first use and kept: products allocate
    /// nothing once warm.
    static BUFFERS: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Products smaller than this (in multiply-adds) stay on one thread.
const PARALLEL_PRODUCT: usize = 128 * 128 * 128;

/// Runs `prod`, splitting its rows over the rayon pool when it is large and this thread may fork.
fn run(prod: Product, path: Bf16Path, parallel: bool) {
    if prod.m == 0 || prod.n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let fork = parallel
        && !super::is_sequential()
        && threads > 1
        && prod.m * prod.n * prod.k >= PARALLEL_PRODUCT
        && prod.m > MR;
    if !fork {
        return run_rows(prod, path, 0..prod.m);
    }
    // Row blocks of whole micro-panels, about two per thread for balance.
    let per = prod.m.div_ceil(2 * threads).div_ceil(MR) * MR;
    let blocks = prod.m.div_ceil(per);
    (0..blocks).into_par_iter().for_each(|i| {
        let rows = i * per..((i + 1) * per).min(prod.m);
        run_rows(prod, path, rows)
    });
}

/// The rows `rows` of `prod` on the calling thread: the blocked loops around the micro-kernel.
///
/// The loop order depends on where B comes from. A pre-packed B (a weight) needs no packing, so
/// each block of MC rows runs through all of k before the next: its tile of C (at most 96 rows
/// of the output) stays in L2 from one k-block to the next, where k-blocks outermost would write
/// all of a tall C (the forward's 8192 x 1152 floats) and read it back from memory once per
/// k-block. A B packed here is packed once per k-block for every row block, so there k-blocks go
/// outermost (C is then a weight's gradient, small enough for the caches).
fn run_rows(prod: Product, path: Bf16Path, rows: std::ops::Range<usize>) {
    BUFFERS.with(|buffers| {
        let mut buffers = buffers.borrow_mut();
        let (abuf, bbuf) = &mut *buffers;
        let (k, n) = (prod.k, prod.n);
        let kp_total = k.div_ceil(2);
        // k = 0: the product is zero (written, or nothing added).
        if kp_total == 0 && !prod.accumulate {
            for i in rows.clone() {
                // SAFETY: row i of C (n floats at stride ldc) belongs to this call.
                unsafe { std::slice::from_raw_parts_mut(prod.c.get().add(i * prod.ldc), n) }
                    .fill(0.0);
            }
        }
        let row_blocks = rows.clone().step_by(MC).map(|i| i..(i + MC).min(rows.end));
        let k_blocks = (0..kp_total)
            .step_by(KC_PAIRS)
            .map(|pc| (pc, KC_PAIRS.min(kp_total - pc)));
        match prod.b {
            BSource::Packed(data) => {
                for block in row_blocks {
                    for (pc, kpb) in k_blocks.clone() {
                        let b = PackedB {
                            data,
                            panel_stride: kp_total * NR,
                            offset: pc * NR,
                        };
                        run_block(&prod, path, abuf, b, block.clone(), pc, kpb);
                    }
                }
            }
            BSource::KDownColumns { x, ld } | BSource::KAlongRows { x, ld } => {
                let panels = n.div_ceil(NR);
                for (pc, kpb) in k_blocks {
                    grow(bbuf, panels * kpb * NR);
                    let (k0, k1) = (2 * pc, (2 * (pc + kpb)).min(k));
                    let bblock = &mut bbuf[..panels * kpb * NR];
                    match prod.b {
                        BSource::KAlongRows { .. } => {
                            let x = &x[k0..];
                            pack_rows(path, bblock, NR, kpb * NR, x, ld, n, k1 - k0)
                        }
                        _ => {
                            let x = &x[k0 * ld..];
                            pack_columns(path, bblock, NR, kpb * NR, x, ld, n, k1 - k0)
                        }
                    }
                    let b = PackedB {
                        data: bbuf,
                        panel_stride: kpb * NR,
                        offset: 0,
                    };
                    for block in row_blocks.clone() {
                        run_block(&prod, path, abuf, b, block, pc, kpb);
                    }
                }
            }
        }
    })
}

/// One k-block of B's panels: panel j's pairs of the block at `data[j * panel_stride + offset..]`.
#[derive(Clone, Copy)]
struct PackedB<'a> {
    data: &'a [u32],
    panel_stride: usize,
    offset: usize,
}

/// Rows `block` (at most MC) of C (+)= their A rows' pairs `pc..pc + kpb` times B's block: A's
/// block packed into `abuf`, then every panel of B past every micro-panel of A.
fn run_block(
    prod: &Product,
    path: Bf16Path,
    abuf: &mut Vec<u32>,
    b: PackedB,
    block: std::ops::Range<usize>,
    pc: usize,
    kpb: usize,
) {
    let (n, ldc, c) = (prod.n, prod.ldc, prod.c);
    let acc = prod.accumulate || pc > 0;
    let mc = block.len();
    let row_panels = mc.div_ceil(MR);
    grow(abuf, row_panels * kpb * MR);
    let abuf = &mut abuf[..row_panels * kpb * MR];
    // Row panel ir's rows, and the pairs of this k-block it sums (all but under a causal A).
    let panel = |ir: usize| {
        let r0 = block.start + ir * MR;
        let nrows = MR.min(block.end - r0);
        let pairs = match prod.causal {
            Causal::Full | Causal::Output => (0, kpb),
            Causal::ALower => (0, ((r0 + nrows).div_ceil(2).saturating_sub(pc)).min(kpb)),
            Causal::AUpper => ((r0 / 2).saturating_sub(pc).min(kpb), kpb),
        };
        (r0, nrows, pairs)
    };
    match prod.causal {
        // A triangular A: each row panel packs only the pairs it sums (about half of attention's
        // T x T weights, which are zero past the diagonal).
        Causal::ALower | Causal::AUpper => {
            for ir in 0..row_panels {
                let (r0, nrows, (lo, hi)) = panel(ir);
                if hi > lo {
                    let dst = &mut abuf[ir * kpb * MR..][lo * MR..hi * MR];
                    pack_a(path, prod.a, r0, nrows, prod.k, pc + lo, hi - lo, dst);
                }
            }
        }
        Causal::Full | Causal::Output => {
            pack_a(path, prod.a, block.start, mc, prod.k, pc, kpb, abuf)
        }
    }
    for j in 0..n.div_ceil(NR) {
        let bp = &b.data[j * b.panel_stride + b.offset..][..kpb * NR];
        let cols = NR.min(n - j * NR);
        for ir in 0..row_panels {
            let (r0, nrows, (lo, hi)) = panel(ir);
            if prod.causal == Causal::Output && j * NR >= r0 + nrows {
                continue;
            }
            let ap = &abuf[ir * kpb * MR..][lo * MR..hi * MR];
            let bp = &bp[lo * NR..hi * NR];
            // SAFETY: the tile (r0.., j * NR..) of C, nrows x cols, lies inside the caller's
            // output, and these rows belong to this call alone.
            let tile = SharedMut(unsafe { c.get().add(r0 * ldc + j * NR) });
            // No pairs (hi == lo): the tile is written zero, or left as it is when accumulating.
            micro_kernel(path, hi - lo, ap, bp, tile, ldc, nrows, cols, acc);
        }
    }
}

/// Grows the calling thread's packing buffers to what any product with outputs at most `max_n`
/// wide needs, so that a thread meeting a product for the first time later (which thread runs
/// which part of a step depends on work stealing) does not allocate in a training step. Call it
/// on every thread of the pool (`rayon::broadcast`) when a model switches to bf16.
pub fn reserve_buffers(max_n: usize) {
    BUFFERS.with(|buffers| {
        let mut buffers = buffers.borrow_mut();
        let (abuf, bbuf) = &mut *buffers;
        grow(abuf, MC.div_ceil(MR) * KC_PAIRS * MR);
        grow(bbuf, max_n.div_ceil(NR) * KC_PAIRS * NR);
    });
}

/// Grows a packing buffer to at least `len` (allocates only the first time a size is reached).
fn grow(buf: &mut Vec<u32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn micro_kernel(
    path: Bf16Path,
    kp: usize,
    a: &[u32],
    b: &[u32],
    c: SharedMut,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    debug_assert!(a.len() >= kp * MR && b.len() >= kp * NR && rows <= MR && cols <= NR);
    #[cfg(target_arch = "x86_64")]
    if path == Bf16Path::Avx512 {
        // SAFETY: the CPU has AVX512_BF16 (Bf16Path::detect); the panels hold kp pairs (checked
        // above) and the tile is the caller's (see run_rows).
        unsafe {
            avx512::kernel(
                kp,
                a.as_ptr(),
                b.as_ptr(),
                c.get(),
                ldc,
                rows,
                cols,
                accumulate,
            )
        };
        return;
    }
    let _ = path;
    kernel_portable(kp, a, b, c, ldc, rows, cols, accumulate);
}

/// Packs rows `i0..i0 + mc` and pairs `pc..pc + kpb` of A into `dst`: panels of MR rows,
/// `[panel][pair][MR]`, rows past `mc` and k past the end zero.
#[allow(clippy::too_many_arguments)]
fn pack_a(
    path: Bf16Path,
    a: ASource,
    i0: usize,
    mc: usize,
    k: usize,
    pc: usize,
    kpb: usize,
    dst: &mut [u32],
) {
    let k0 = 2 * pc;
    let k1 = (k0 + 2 * kpb).min(k);
    match a {
        ASource::KAlongRows { x, ld } => {
            pack_rows(path, dst, MR, kpb * MR, &x[i0 * ld + k0..], ld, mc, k1 - k0)
        }
        ASource::KDownColumns { x, ld } => {
            // Rows past mc: the last panel's lanes past mc are zeroed by the packer.
            pack_columns(path, dst, MR, kpb * MR, &x[k0 * ld + i0..], ld, mc, k1 - k0)
        }
    }
}

/// `out (N, OC) = inp (N, IC) @ W^T` in bf16 (the bias is the caller's).
pub fn forward(out: &mut [f32], inp: &[f32], weight: &PackedWeight) {
    forward_with(out, inp, weight, Bf16Path::best())
}

fn forward_with(out: &mut [f32], inp: &[f32], weight: &PackedWeight, path: Bf16Path) {
    let (oc, ic) = weight.shape();
    let n = inp.len() / ic.max(1);
    assert!(inp.len() == n * ic && out.len() >= n * oc);
    let prod = Product {
        m: n,
        n: oc,
        k: ic,
        a: ASource::KAlongRows { x: inp, ld: ic },
        b: BSource::Packed(&weight.transposed),
        c: SharedMut(out.as_mut_ptr()),
        ldc: oc,
        accumulate: false,
        causal: Causal::Full,
    };
    run(prod, path, true);
}

/// `dinp (N, IC) (+)= dout (N, OC) @ W` in bf16.
pub fn input_grad(dinp: &mut [f32], accumulate: bool, dout: &[f32], weight: &PackedWeight) {
    input_grad_with(dinp, accumulate, dout, weight, Bf16Path::best())
}

fn input_grad_with(
    dinp: &mut [f32],
    accumulate: bool,
    dout: &[f32],
    weight: &PackedWeight,
    path: Bf16Path,
) {
    let (oc, ic) = weight.shape();
    let n = dout.len() / oc.max(1);
    assert!(dout.len() == n * oc && dinp.len() == n * ic);
    let prod = Product {
        m: n,
        n: ic,
        k: oc,
        a: ASource::KAlongRows { x: dout, ld: oc },
        b: BSource::Packed(&weight.plain),
        c: SharedMut(dinp.as_mut_ptr()),
        ldc: ic,
        accumulate,
        causal: Causal::Full,
    };
    run(prod, path, true);
}

/// `dweight (OC, IC) (+)= dout (N, OC)^T @ inp (N, IC)` in bf16.
pub fn weight_grad(
    dweight: &mut [f32],
    accumulate: bool,
    dout: &[f32],
    inp: &[f32],
    in_channels: usize,
) {
    let n = inp.len() / in_channels.max(1);
    weight_grad_shaped(dweight, accumulate, dout, inp, n, Bf16Path::best())
}

fn weight_grad_shaped(
    dweight: &mut [f32],
    accumulate: bool,
    dout: &[f32],
    inp: &[f32],
    n: usize,
    path: Bf16Path,
) {
    let (oc, ic) = (dout.len() / n.max(1), inp.len() / n.max(1));
    assert!(dout.len() == n * oc && inp.len() == n * ic && dweight.len() == oc * ic);
    let prod = Product {
        m: oc,
        n: ic,
        k: n,
        a: ASource::KDownColumns { x: dout, ld: oc },
        b: BSource::KDownColumns { x: inp, ld: ic },
        c: SharedMut(dweight.as_mut_ptr()),
        ldc: ic,
        accumulate,
        causal: Causal::Full,
    };
    run(prod, path, true);
}

/// `gram (cols, cols) = x^T x` for `x (rows, cols)` row-major, in bf16 on the calling thread: the
/// Gram matrix of x's columns, as Muon's Newton-Schulz iteration takes it (one matrix per thread).
/// A Gram matrix is symmetric, so only the tiles on and below the diagonal are computed and the
/// rest mirrored, about half the product's work.
pub fn gram_of_columns(gram: &mut [f32], x: &[f32], cols: usize) {
    gram_of_columns_with(gram, x, cols, Bf16Path::best())
}

/// `gram (rows, rows) = x x^T` for `x (rows, cols)` row-major, in bf16 on the calling thread: the
/// Gram matrix of x's rows.
pub fn gram_of_rows(gram: &mut [f32], x: &[f32], cols: usize) {
    gram_of_rows_with(gram, x, cols, Bf16Path::best())
}

fn gram_of_rows_with(gram: &mut [f32], x: &[f32], cols: usize, path: Bf16Path) {
    let rows = x.len() / cols.max(1);
    assert!(x.len() == rows * cols && gram.len() == rows * rows);
    let (a, b) = (
        ASource::KAlongRows { x, ld: cols },
        BSource::KAlongRows { x, ld: cols },
    );
    run_symmetric(gram, rows, cols, a, b, path);
}

fn gram_of_columns_with(gram: &mut [f32], x: &[f32], cols: usize, path: Bf16Path) {
    let rows = x.len() / cols.max(1);
    assert!(x.len() == rows * cols && gram.len() == cols * cols);
    let (a, b) = (
        ASource::KDownColumns { x, ld: cols },
        BSource::KDownColumns { x, ld: cols },
    );
    run_symmetric(gram, cols, rows, a, b, path);
}

/// `out (n, n) = s @ s` for a symmetric `s (n, n)`, in bf16 on the calling thread. The square
/// of a symmetric matrix is symmetric, `(S S)^T = S^T S^T = S S`, so as for a Gram matrix only
/// the lower triangle's tiles are computed. Element (i, j) sums `s[i][p] s[p][j]` and (j, i) sums
/// `s[j][p] s[p][i] = s[p][j] s[i][p]`: the same products in the same order, so the mirrored
/// result equals the whole product's bit for bit when `s` is exactly symmetric.
pub fn square_of_symmetric(out: &mut [f32], s: &[f32], n: usize) {
    square_of_symmetric_with(out, s, n, Bf16Path::best())
}

fn square_of_symmetric_with(out: &mut [f32], s: &[f32], n: usize, path: Bf16Path) {
    assert!(s.len() == n * n && out.len() == n * n);
    let (a, b) = (
        ASource::KAlongRows { x: s, ld: n },
        BSource::KDownColumns { x: s, ld: n },
    );
    run_symmetric(out, n, n, a, b, path);
}

/// `c (n, n) = A (n, k) @ B (k, n)` on the calling thread, for operands whose product is
/// symmetric: only the tiles on and below the diagonal are computed, and the rest mirrored.
fn run_symmetric(c: &mut [f32], n: usize, k: usize, a: ASource, b: BSource, path: Bf16Path) {
    let prod = Product {
        m: n,
        n,
        k,
        a,
        b,
        c: SharedMut(c.as_mut_ptr()),
        ldc: n,
        accumulate: false,
        causal: Causal::Output,
    };
    run(prod, path, false);
    mirror_lower(c, n);
}

/// Copies the lower triangle of the square `m` (n x n, row-major) onto its upper triangle, in
/// 16 x 16 blocks so that the column reads of a block stay in L1.
pub(crate) fn mirror_lower(m: &mut [f32], n: usize) {
    const B: usize = 16;
    for ib in (0..n).step_by(B) {
        for jb in (ib..n).step_by(B) {
            for i in ib..(ib + B).min(n) {
                for j in (jb.max(i + 1))..(jb + B).min(n) {
                    m[i * n + j] = m[j * n + i];
                }
            }
        }
    }
}

/// `c (m, n) (+)= a (m, k) @ b (k, n)`, all row-major, in bf16 on the calling thread.
pub fn matmul_row_major(c: &mut [f32], accumulate: bool, a: &[f32], b: &[f32], k: usize) {
    matmul_row_major_with(c, accumulate, a, b, k, Bf16Path::best())
}

fn matmul_row_major_with(
    c: &mut [f32],
    accumulate: bool,
    a: &[f32],
    b: &[f32],
    k: usize,
    path: Bf16Path,
) {
    let m = a.len() / k.max(1);
    let n = b.len() / k.max(1);
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    let prod = Product {
        m,
        n,
        k,
        a: ASource::KAlongRows { x: a, ld: k },
        b: BSource::KDownColumns { x: b, ld: n },
        c: SharedMut(c.as_mut_ptr()),
        ldc: n,
        accumulate,
        causal: Causal::Full,
    };
    run(prod, path, false);
}

/// One attention head's scores on the calling thread, by `path`: `s[t * lds + u] = x_t . y_u`
/// for u <= t, x and y (t_n, k) with rows at strides `ld_x` and `ld_y` (the queries and keys in
/// place in the q/k/v rows, or the output gradient and the values). Entries above the diagonal
/// are computed where a tile straddles it and left as they were elsewhere.
///
/// # Safety
/// `s` is valid for t_n rows of t_n floats at stride `lds` that no other thread touches.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn causal_scores(
    s: *mut f32,
    lds: usize,
    x: &[f32],
    ld_x: usize,
    y: &[f32],
    ld_y: usize,
    t_n: usize,
    k: usize,
    path: Bf16Path,
) {
    if t_n == 0 {
        return;
    }
    assert!(x.len() >= (t_n - 1) * ld_x + k && y.len() >= (t_n - 1) * ld_y + k);
    let prod = Product {
        m: t_n,
        n: t_n,
        k,
        a: ASource::KAlongRows { x, ld: ld_x },
        b: BSource::KAlongRows { x: y, ld: ld_y },
        c: SharedMut(s),
        ldc: lds,
        accumulate: false,
        causal: Causal::Output,
    };
    run(prod, path, false);
}

/// One attention head's weighted sums on the calling thread, by `path`: `out (t_n, n) = W Y` for
/// a lower triangular W (`w[t * ld_w + u]`, zero for u > t: a query's weights over the keys),
/// or with `transposed` `W^T Y` (row u sums over t >= u: a key's weights from the queries after
/// it), y (t_n, n) with rows at stride `ld_y`, out's rows at stride `ld_out`. The triangle W leaves
/// out must be zero in `w` (attention's softmax writes it so).
///
/// # Safety
/// `out` is valid for t_n rows of n floats at stride `ld_out` that no other thread touches.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn causal_weighted(
    out: *mut f32,
    ld_out: usize,
    w: &[f32],
    ld_w: usize,
    transposed: bool,
    y: &[f32],
    ld_y: usize,
    t_n: usize,
    n: usize,
    path: Bf16Path,
) {
    if t_n == 0 {
        return;
    }
    assert!(w.len() >= (t_n - 1) * ld_w + t_n && y.len() >= (t_n - 1) * ld_y + n);
    let (a, causal) = match transposed {
        false => (ASource::KAlongRows { x: w, ld: ld_w }, Causal::ALower),
        true => (ASource::KDownColumns { x: w, ld: ld_w }, Causal::AUpper),
    };
    let prod = Product {
        m: t_n,
        n,
        k: t_n,
        a,
        b: BSource::KDownColumns { x: y, ld: ld_y },
        c: SharedMut(out),
        ldc: ld_out,
        accumulate: false,
        causal,
    };
    run(prod, path, false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::random_vec;
    use crate::rng::Rng;

    /// The engines this machine can run: the portable twin always, AVX512_BF16 where present.
    fn engines() -> Vec<Bf16Path> {
        let mut e = vec![Bf16Path::Portable];
        if crate::runtime::has_avx512_bf16() {
            e.push(Bf16Path::Avx512);
        }
        e
    }

    fn rounded(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| round(v) as f64).collect()
    }

    /// `C (m, n) = A (m, k) @ B (k, n)` in f64, summed in order of k, and beside it the sum of
    /// the terms' magnitudes (the scale of [`assert_close`]'s tolerance).
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: impl Fn(usize, usize) -> f64,
        b: impl Fn(usize, usize) -> f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut want, mut scale) = (vec![0.0; m * n], vec![0.0; m * n]);
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let t = a(i, p) * b(p, j);
                    want[i * n + j] += t;
                    scale[i * n + j] += t.abs();
                }
            }
        }
        (want, scale)
    }

    /// Only the summation order differs from the f64 sum of the same rounded products: fp32
    /// accumulation over k terms errs by about k * 2^-24 of the sum of |terms|.
    fn assert_close(what: &str, got: &[f32], want: &[f64], scale: &[f64], k: usize) {
        assert_eq!(got.len(), want.len());
        let tol = 4.0 * (k as f64 + 2.0) * f32::EPSILON as f64;
        for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol * (s + 1e-30),
                "{what}[{i}]: {g} vs {w} (scale {s})"
            );
        }
    }

    /// A product accumulated onto its own result: exactly twice it where k is one block (C + C),
    /// within fp32 rounding where k spans blocks (C + B1 + B2 ... adds in another order).
    fn assert_doubled(what: &str, got: &[f32], once: &[f32], k: usize) {
        for (i, (&g, &c)) in got.iter().zip(once).enumerate() {
            match k <= 2 * KC_PAIRS {
                true => assert_eq!(g, 2.0 * c, "{what}[{i}]"),
                false => assert!(
                    (g - 2.0 * c).abs() <= 1e-5 * c.abs().max(1.0),
                    "{what}[{i}]"
                ),
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to the even neighbour, 1.
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // Just above halfway rounds up; 1 + 3 * 2^-8 is halfway with an odd lower neighbour.
        assert_eq!(round(1.0 + 1.0 / 256.0 + 1e-6), 1.0 + 1.0 / 128.0);
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 2.0 / 128.0);
        assert_eq!(round(-1.0 - 3.0 / 256.0), -1.0 - 2.0 / 128.0);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert_eq!(round(f32::MAX), f32::INFINITY);
        assert_eq!(round(1e-40).to_bits(), 0);
        assert_eq!(round(-1e-40).to_bits(), 0x8000_0000);
        // Relative error at most half a unit in the 8th significant bit, 2^-8.
        let mut rng = Rng::new(3);
        for _ in 0..10_000 {
            let x = rng.normal() * 1e3;
            assert!(((round(x) - x) / x).abs() <= 1.0 / 256.0, "{x}");
        }
    }

    /// Shapes with tails everywhere: m, n and k not multiples of MR, NR and 2 * KC_PAIRS, k odd,
    /// k spanning several blocks (515 two, 6 * KC_PAIRS + 3 four), a single row and a single
    /// column.
    const SHAPES: [(usize, usize, usize); 8] = [
        (1, 1, 1),
        (5, 3, 4),
        (13, 33, 7),
        (130, 96, 200),
        (97, 300, 45),
        (40, 515, 70),
        (12, 32, 256),
        (7, 40, 6 * KC_PAIRS + 3),
    ];

    #[test]
    fn the_three_products_match_an_fp32_reference_on_the_same_rounded_inputs() {
        let mut rng = Rng::new(21);
        for path in engines() {
            for (n, ic, oc) in SHAPES {
                let inp = random_vec(n * ic, &mut rng, 1.0);
                let w = random_vec(oc * ic, &mut rng, 1.0);
                let dout = random_vec(n * oc, &mut rng, 1.0);
                let mut packed = PackedWeight::new(oc, ic);
                packed.pack_with(&w, path);
                let (ri, rw, rd) = (rounded(&inp), rounded(&w), rounded(&dout));
                let what = format!("{path:?} n={n} ic={ic} oc={oc}");

                // out = inp @ W^T.
                let mut out = vec![f32::NAN; n * oc];
                forward_with(&mut out, &inp, &packed, path);
                let (want, scale) =
                    reference(n, oc, ic, |r, i| ri[r * ic + i], |i, o| rw[o * ic + i]);
                assert_close(&format!("forward {what}"), &out, &want, &scale, ic);

                // dinp = dout @ W, written and then accumulated onto itself (doubling it).
                let mut dinp = vec![f32::NAN; n * ic];
                input_grad_with(&mut dinp, false, &dout, &packed, path);
                let (want, scale) =
                    reference(n, ic, oc, |r, o| rd[r * oc + o], |o, i| rw[o * ic + i]);
                assert_close(&format!("dinp {what}"), &dinp, &want, &scale, oc);
                let copy = dinp.clone();
                input_grad_with(&mut dinp, true, &dout, &packed, path);
                assert_doubled(&format!("accumulated dinp {what}"), &dinp, &copy, oc);

                // dW = dout^T @ inp.
                let mut dw = vec![f32::NAN; oc * ic];
                weight_grad_shaped(&mut dw, false, &dout, &inp, n, path);
                let (want, scale) =
                    reference(oc, ic, n, |o, r| rd[r * oc + o], |r, i| ri[r * ic + i]);
                assert_close(&format!("dweight {what}"), &dw, &want, &scale, n);
                let copy = dw.clone();
                weight_grad_shaped(&mut dw, true, &dout, &inp, n, path);
                assert_doubled(&format!("accumulated dweight {what}"), &dw, &copy, n);
            }
        }
    }

    /// Newton-Schulz's products (Muon): the Gram matrix of the columns, and of the rows, and a
    /// plain row-major product, written and then accumulated.
    #[test]
    fn the_gram_and_row_major_products_match_an_fp32_reference() {
        let mut rng = Rng::new(8);
        for path in engines() {
            for (m, n, k) in SHAPES {
                let what = format!("{path:?} m={m} n={n} k={k}");
                // gram (n, n) = x^T x, x (k, n).
                let x = random_vec(k * n, &mut rng, 1.0);
                let rx = rounded(&x);
                let mut gram = vec![f32::NAN; n * n];
                gram_of_columns_with(&mut gram, &x, n, path);
                let (want, scale) = reference(n, n, k, |i, r| rx[r * n + i], |r, j| rx[r * n + j]);
                assert_close(&format!("gram {what}"), &gram, &want, &scale, k);
                // The same x read as x^T (n, k): the Gram matrix of its rows.
                let xt: Vec<f32> = (0..n * k).map(|i| x[(i % k) * n + i / k]).collect();
                let mut rows_gram = vec![f32::NAN; n * n];
                gram_of_rows_with(&mut rows_gram, &xt, k, path);
                assert_close(
                    &format!("gram of rows {what}"),
                    &rows_gram,
                    &want,
                    &scale,
                    k,
                );

                // Both Gram matrices are mirrored from their lower triangles: exactly symmetric.
                for g in [&gram, &rows_gram] {
                    for i in 0..n {
                        for j in 0..i {
                            assert_eq!(g[i * n + j], g[j * n + i], "gram symmetric {what}");
                        }
                    }
                }
                // The square of the (symmetric) Gram matrix, against the whole product of the
                // same operands, bit for bit, and against an fp32 reference.
                let mut square = vec![f32::NAN; n * n];
                square_of_symmetric_with(&mut square, &gram, n, path);
                let mut whole = vec![f32::NAN; n * n];
                matmul_row_major_with(&mut whole, false, &gram, &gram, n, path);
                assert_eq!(square, whole, "square of a symmetric matrix {what}");
                let rg = rounded(&gram);
                let (want, scale) = reference(n, n, n, |i, p| rg[i * n + p], |p, j| rg[p * n + j]);
                assert_close(&format!("square {what}"), &square, &want, &scale, n);

                // c (m, n) = a (m, k) @ b (k, n), then once more onto itself.
                let a = random_vec(m * k, &mut rng, 1.0);
                let b = random_vec(k * n, &mut rng, 1.0);
                let (ra, rb) = (rounded(&a), rounded(&b));
                let mut c = vec![f32::NAN; m * n];
                matmul_row_major_with(&mut c, false, &a, &b, k, path);
                let (want, scale) = reference(m, n, k, |i, p| ra[i * k + p], |p, j| rb[p * n + j]);
                assert_close(&format!("matmul {what}"), &c, &want, &scale, k);
                let copy = c.clone();
                matmul_row_major_with(&mut c, true, &a, &b, k, path);
                assert_doubled(&format!("accumulated matmul {what}"), &c, &copy, k);
            }
        }
    }

    /// Attention's causal products: the scores' lower triangle, and the weighted sums with a
    /// lower triangular W and with W^T, on shapes that straddle every tile and block boundary.
    #[test]
    fn the_causal_products_match_an_fp32_reference() {
        let mut rng = Rng::new(12);
        for path in engines() {
            for (t_n, k) in [
                (1, 1),
                (5, 3),
                (13, 7),
                (40, 64),
                (97, 33),
                (300, 16),
                (33, 300),
            ] {
                let what = format!("{path:?} t={t_n} k={k}");
                // Rows at a stride wider than k, as q, k and v sit in their rows.
                let (ld_x, ld_y) = (k + 3, 2 * k + 1);
                let x = random_vec(t_n * ld_x, &mut rng, 1.0);
                let y = random_vec(t_n * ld_y, &mut rng, 1.0);
                let (rx, ry) = (rounded(&x), rounded(&y));
                let mut s = vec![f32::NAN; t_n * t_n];
                // SAFETY: s holds t_n rows of t_n.
                unsafe { causal_scores(s.as_mut_ptr(), t_n, &x, ld_x, &y, ld_y, t_n, k, path) };
                let (want, scale) = reference(
                    t_n,
                    t_n,
                    k,
                    |t, d| rx[t * ld_x + d],
                    |d, u| ry[u * ld_y + d],
                );
                // Only the lower triangle is defined.
                let lower: Vec<usize> = (0..t_n * t_n).filter(|i| i % t_n <= i / t_n).collect();
                let pick = |m: &[f64]| lower.iter().map(|&i| m[i]).collect::<Vec<f64>>();
                let got: Vec<f32> = lower.iter().map(|&i| s[i]).collect();
                let what_s = format!("scores {what}");
                assert_close(&what_s, &got, &pick(&want), &pick(&scale), k);

                // A lower triangular W (t_n, t_n), zero above the diagonal, at a wider stride.
                let ld_w = t_n + 5;
                let mut w = random_vec(t_n * ld_w, &mut rng, 1.0);
                for t in 0..t_n {
                    w[t * ld_w + t + 1..(t + 1) * ld_w].fill(0.0);
                }
                let rw = rounded(&w);
                let (n, ld_out) = (k, k + 2);
                for transposed in [false, true] {
                    let mut out = vec![f32::NAN; t_n * ld_out];
                    // SAFETY: out holds t_n rows of n at stride ld_out.
                    unsafe {
                        causal_weighted(
                            out.as_mut_ptr(),
                            ld_out,
                            &w,
                            ld_w,
                            transposed,
                            &y,
                            ld_y,
                            t_n,
                            n,
                            path,
                        )
                    };
                    let a = |i: usize, j: usize| match transposed {
                        false => rw[i * ld_w + j],
                        true => rw[j * ld_w + i],
                    };
                    let (want, scale) = reference(t_n, n, t_n, a, |j, c| ry[j * ld_y + c]);
                    let got: Vec<f32> = (0..t_n * n).map(|i| out[i / n * ld_out + i % n]).collect();
                    let what = format!("weighted {what} transposed={transposed}");
                    assert_close(&what, &got, &want, &scale, t_n);
                }
            }
        }
    }

    /// Split over threads, a product gives the same result as on one (rows are split, each row's
    /// sums are the same sums), on both engines. The second shape's k spans three k-blocks and is
    /// odd, and its 130 columns end in a partial panel.
    #[test]
    #[cfg_attr(target_arch = "wasm32", ignore = "threads: none in WebAssembly here")]
    fn threads_split_rows_without_changing_results() {
        let mut paths = vec![Bf16Path::Portable];
        if crate::runtime::has_avx512_bf16() {
            paths.push(Bf16Path::Avx512);
        }
        for (n, ic, oc) in [(300, 130, 260), (4 * KC_PAIRS + 7, 130, 100)] {
            let mut rng = Rng::new(5);
            let inp = random_vec(n * ic, &mut rng, 1.0);
            let w = random_vec(oc * ic, &mut rng, 1.0);
            let dout = random_vec(n * oc, &mut rng, 1.0);
            for &path in &paths {
                let mut packed = PackedWeight::new(oc, ic);
                packed.pack_with(&w, path);
                let run_all = || {
                    let mut out = vec![0.0; n * oc];
                    forward_with(&mut out, &inp, &packed, path);
                    let mut dw = vec![1.0; oc * ic];
                    weight_grad_shaped(&mut dw, true, &dout, &inp, n, path);
                    (out, dw)
                };
                let one = crate::kernels::sequentially(run_all);
                for threads in [2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let many = pool.install(run_all);
                    assert!(
                        many == one,
                        "{n} x {ic} x {oc}, {path:?}, {threads} threads"
                    );
                }
            }
        }
    }

    /// Both engines pack the same bits (where the machine has AVX512_BF16).
    #[test]
    fn packing_is_the_same_on_both_engines() {
        if !crate::runtime::has_avx512_bf16() {
            return;
        }
        let mut rng = Rng::new(8);
        for (oc, ic) in [(1, 1), (7, 45), (70, 515), (384, 128)] {
            let w = random_vec(oc * ic, &mut rng, 1.0);
            let mut a = PackedWeight::new(oc, ic);
            let mut b = PackedWeight::new(oc, ic);
            a.pack_with(&w, Bf16Path::Portable);
            b.pack_with(&w, Bf16Path::Avx512);
            assert_eq!(a, b, "{oc}x{ic}");
        }
    }
}
