//! Token and position embedding: `out[b, t, :] = wte[tokens[b, t], :] + wpe[first + t, :]`.
//!
//! Shapes: `tokens` (B, T); `wte` (V, C); `wpe` (T_max, C) with `first + T <= T_max`, or absent (the
//! bigram model looks up its logits directly); `out` (B, T, C). `first` is the position of the
//! first token (0, except when generation extends a sequence by a few tokens).
//!
//! Backward: a lookup routes each output gradient back to the row it came from,
//! `dwte[tokens[b, t], :] += dout[b, t, :]` and `dwpe[t, :] += sum_b dout[b, t, :]`. Rows of `wte`
//! receive gradient from every position holding that token, so threads split the work by columns
//! (each column block is independent) rather than by positions.

use crate::tokenizer::TokenId;
use rayon::prelude::*;

/// Columns per parallel task in the backward pass.
const COLUMN_BLOCK: usize = 64;

pub fn forward(
    out: &mut [f32],
    tokens: &[TokenId],
    wte: &[f32],
    wpe: Option<&[f32]>,
    seq_len: usize,
    first: usize,
    channels: usize,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Embedding, false);
    let c = channels;
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .with_min_len(super::min_items(c))
        .for_each(|(row, (o, &tok))| {
            let e = &wte[tok as usize * c..(tok as usize + 1) * c];
            match wpe {
                Some(wpe) => {
                    let t = first + row % seq_len;
                    let p = &wpe[t * c..(t + 1) * c];
                    for ((o, &e), &p) in o.iter_mut().zip(e).zip(p) {
                        *o = e + p;
                    }
                }
                None => o.copy_from_slice(e),
            }
        });
}

pub fn backward(
    dwte: &mut [f32],
    dwpe: Option<&mut [f32]>,
    dout: &[f32],
    tokens: &[TokenId],
    seq_len: usize,
    channels: usize,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Embedding, true);
    let c = channels;
    let dwte = super::SharedMut(dwte.as_mut_ptr());
    let dwpe = dwpe.map(|d| super::SharedMut(d.as_mut_ptr()));
    let blocks = c.div_ceil(COLUMN_BLOCK);
    (0..blocks)
        .into_par_iter()
        .with_min_len(super::min_items(tokens.len() * COLUMN_BLOCK))
        .for_each(|blk| {
            let (c0, c1) = (blk * COLUMN_BLOCK, ((blk + 1) * COLUMN_BLOCK).min(c));
            for (row, &tok) in tokens.iter().enumerate() {
                let g = &dout[row * c + c0..row * c + c1];
                // SAFETY: this task alone touches columns c0..c1 of dwte and dwpe, and the
                // slices are in bounds: tok < V and t < T_max were checked by the caller
                // (forward indexed the same rows).
                unsafe {
                    let dst = std::slice::from_raw_parts_mut(
                        dwte.get().add(tok as usize * c + c0),
                        c1 - c0,
                    );
                    super::axpy(dst, 1.0, g);
                    if let Some(dwpe) = dwpe {
                        let t = row % seq_len;
                        let dst =
                            std::slice::from_raw_parts_mut(dwpe.get().add(t * c + c0), c1 - c0);
                        super::axpy(dst, 1.0, g);
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::*;
    use crate::reference::layers as reference;
    use crate::rng::Rng;

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(4);
        let (b, t, v, c) = (3, 5, 7, 70); // C > COLUMN_BLOCK exercises two column blocks
        let tokens: Vec<TokenId> = (0..b * t).map(|_| rng.below(v) as TokenId).collect();
        let wte = random_vec(v * c, &mut rng, 1.0);
        let wpe = random_vec(t * c, &mut rng, 1.0);
        let w = random_vec(b * t * c, &mut rng, 1.0);
        let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
        backward(&mut dwte, Some(&mut dwpe), &w, &tokens, t, c);
        let f = |wte: &[f32], wpe: &[f32]| {
            let mut out = vec![0.0; b * t * c];
            forward(&mut out, &tokens, wte, Some(wpe), t, 0, c);
            weighted_sum(&out, &w)
        };
        check("dwte", &wte, &dwte, |x| f(x, &wpe), 1e-3);
        check("dwpe", &wpe, &dwpe, |x| f(&wte, x), 1e-3);
    }

    #[test]
    fn lookup_without_positions_copies_rows() {
        let wte = vec![1.0, 2.0, 3.0, 4.0];
        let mut out = vec![0.0; 4];
        forward(&mut out, &[1, 0], &wte, None, 2, 0, 2);
        assert_eq!(out, vec![3.0, 4.0, 1.0, 2.0]);
    }

    #[test]
    fn matches_the_reference_embedding() {
        let mut rng = Rng::new(14);
        let (b, t, v, c) = (2, 6, 9, 70);
        let tokens: Vec<TokenId> = (0..b * t).map(|_| rng.below(v) as TokenId).collect();
        let wte = random_vec(v * c, &mut rng, 1.0);
        let wpe = random_vec(t * c, &mut rng, 1.0);
        let dout = random_vec(b * t * c, &mut rng, 1.0);
        let (mut out, mut want) = (vec![0.0; b * t * c], vec![0.0; b * t * c]);
        forward(&mut out, &tokens, &wte, Some(&wpe), t, 0, c);
        reference::embedding_forward(&mut want, &tokens, &wte, Some(&wpe), b, t, c);
        assert_close("embedding", &out, &want, 1e-6);
        let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
        backward(&mut dwte, Some(&mut dwpe), &dout, &tokens, t, c);
        let (mut want_wte, mut want_wpe) = (vec![0.0; v * c], vec![0.0; t * c]);
        reference::embedding_backward(&mut want_wte, Some(&mut want_wpe), &dout, &tokens, b, t, c);
        assert_close("dwte", &dwte, &want_wte, 1e-6);
        assert_close("dwpe", &dwpe, &want_wpe, 1e-6);
    }
}
