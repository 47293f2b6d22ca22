//! Text to token ids, the lecture's 90/10 split, and batches.
//!
//! A batch is B rows of T consecutive tokens `x[b, t] = data[i_b + t]` with targets shifted by one,
//! `y[b, t] = data[i_b + t + 1]`, where the offsets `i_b` are uniform in `0..len - T` (the lecture's
//! `get_batch`). Exact evaluation instead walks a split in consecutive non-overlapping windows.

use crate::rng::Rng;
use crate::tokenizer::{TokenId, Tokenizer, TokenizerError};
use std::path::Path;

/// Tiny Shakespeare, embedded so that `chargpt train` works from any directory with no download.
pub const TINY_SHAKESPEARE: &str = include_str!("../data/tinyshakespeare.txt");

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}; check the path")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not UTF-8 text (invalid byte at offset {offset}); save it as UTF-8")]
    NotUtf8 { path: String, offset: usize },
    #[error("{0} is empty; give a text file with some characters in it")]
    Empty(String),
    #[error("the {split} split has {len} tokens but a block of {block_size} needs at least {needed}; use more text or a smaller block_size")]
    TooShort {
        split: &'static str,
        len: usize,
        block_size: usize,
        needed: usize,
    },
    #[error("the {split} split of {source_name} has {len} tokens but this model reads blocks of {block_size} and needs at least {needed}; evaluate on a longer text (--data FILE{other}); a trained model's block_size cannot change")]
    TooShortToEvaluate {
        split: &'static str,
        source_name: String,
        len: usize,
        block_size: usize,
        needed: usize,
        /// A hint at the other split, when it is long enough.
        other: String,
    },
    #[error("{source_name} has {count} character{} that the model's vocabulary lacks: {listed}; {advice}", if *.count == 1 { "" } else { "s" })]
    OutsideVocabulary {
        source_name: String,
        count: usize,
        /// The characters, quoted and escaped (`'\t'`), the first few only if there are many.
        listed: String,
        /// What to do about them, which depends on what the text is for.
        advice: String,
    },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Each character and how often it occurs in `text`, in the order of first use.
pub fn char_counts(text: &str, chars: &[char]) -> Vec<(char, usize)> {
    let mut counts: std::collections::HashMap<char, usize> =
        chars.iter().map(|&c| (c, 0)).collect();
    for c in text.chars() {
        if let Some(n) = counts.get_mut(&c) {
            *n += 1;
        }
    }
    chars.iter().map(|c| (*c, counts[c])).collect()
}

/// What to do about characters a model lacks when fine-tuning on a text.
pub const FINE_TUNE_ADVICE: &str = "add them to the vocabulary with --unknown-chars extend, or remove them from the text with --unknown-chars drop";

/// `'a', 'b', '\t'` for the first `max` characters, then "and N more".
pub fn list_chars(chars: &[char], max: usize) -> String {
    let mut listed: Vec<String> = chars.iter().take(max).map(|c| format!("{c:?}")).collect();
    if chars.len() > max {
        listed.push(format!("and {} more", chars.len() - max));
    }
    listed.join(", ")
}

/// A 64-bit FNV-1a hash of the text, in hex: enough to tell whether a resumed run reads the same
/// text it started on.
pub fn fingerprint(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in text.as_bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Reads a UTF-8 text file, rejecting empty files and invalid UTF-8 with a message that says so.
pub fn read_text(path: &Path) -> Result<String, DataError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: name.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        path: name.clone(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    if text.is_empty() {
        return Err(DataError::Empty(name));
    }
    Ok(text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// Where a text of `len` characters splits, as the lecture splits it: `n = int(0.9 * len)`, the
/// first n train, the rest val.
pub fn train_len(len: usize) -> usize {
    (0.9 * len as f64) as usize
}

/// A tokenized text, split as the lecture does ([`train_len`]).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub train: Vec<TokenId>,
    pub val: Vec<TokenId>,
}

impl Dataset {
    pub fn new(text: &str, tokenizer: &Tokenizer) -> Result<Self, DataError> {
        let tokens = tokenizer.encode(text)?;
        let n = train_len(tokens.len());
        let val = tokens[n..].to_vec();
        let mut train = tokens;
        train.truncate(n);
        Ok(Dataset { train, val })
    }

    /// Like [`Dataset::new`] with a vocabulary fixed beforehand (a trained model's): every
    /// character of `text` outside it is reported at once, named, rather than the first alone,
    /// followed by `advice` (what the user can do, which depends on what the text is for).
    pub fn with_vocabulary(
        text: &str,
        tokenizer: &Tokenizer,
        source_name: &str,
        advice: &str,
    ) -> Result<Self, DataError> {
        let unknown = tokenizer.unknown_chars(text);
        if !unknown.is_empty() {
            return Err(DataError::OutsideVocabulary {
                source_name: source_name.to_string(),
                count: unknown.len(),
                listed: list_chars(&unknown, 20),
                advice: advice.to_string(),
            });
        }
        Self::new(text, tokenizer)
    }

    pub fn split(&self, split: Split) -> &[TokenId] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// `split` must hold at least one window of `block_size` inputs plus its target, to be
    /// evaluated by a trained model (whose block size is fixed).
    pub fn check_evaluable(
        &self,
        split: Split,
        block_size: usize,
        source_name: &str,
    ) -> Result<(), DataError> {
        let len = self.split(split).len();
        if len > block_size {
            return Ok(());
        }
        let other = match split {
            Split::Val if self.train.len() > block_size => ", or --split train",
            _ => "",
        };
        Err(DataError::TooShortToEvaluate {
            split: split.name(),
            source_name: source_name.to_string(),
            len,
            block_size,
            needed: block_size + 1,
            other: other.to_string(),
        })
    }

    /// Both splits must hold at least one window of `block_size` inputs plus its target.
    pub fn check_block_size(&self, block_size: usize) -> Result<(), DataError> {
        for split in [Split::Train, Split::Val] {
            let len = self.split(split).len();
            if len < block_size + 1 {
                return Err(DataError::TooShort {
                    split: split.name(),
                    len,
                    block_size,
                    needed: block_size + 1,
                });
            }
        }
        Ok(())
    }
}

/// Fills `inputs` and `targets` (each B*T, row-major (B, T)) with B random windows of `data`.
/// Needs `data.len() > T`; allocates nothing.
pub fn sample_batch(
    data: &[TokenId],
    block_size: usize,
    rng: &mut Rng,
    inputs: &mut [TokenId],
    targets: &mut [TokenId],
) {
    debug_assert!(data.len() > block_size);
    debug_assert_eq!(inputs.len(), targets.len());
    let starts = data.len() - block_size;
    for (x, y) in inputs
        .chunks_exact_mut(block_size)
        .zip(targets.chunks_exact_mut(block_size))
    {
        let i = rng.below(starts);
        x.copy_from_slice(&data[i..i + block_size]);
        y.copy_from_slice(&data[i + 1..i + block_size + 1]);
    }
}

/// The number of whole evaluation windows in a split: window w has inputs
/// `data[w*T .. w*T + T]` and targets one further on, so it needs `w*T + T + 1 <= len`.
pub fn window_count(len: usize, block_size: usize) -> usize {
    len.saturating_sub(1) / block_size
}

/// Copies windows `first..first + rows` into `inputs`/`targets` (each rows*T).
pub fn fill_windows(
    data: &[TokenId],
    block_size: usize,
    first: usize,
    rows: usize,
    inputs: &mut [TokenId],
    targets: &mut [TokenId],
) {
    for r in 0..rows {
        let start = (first + r) * block_size;
        let dst = r * block_size..(r + 1) * block_size;
        inputs[dst.clone()].copy_from_slice(&data[start..start + block_size]);
        targets[dst].copy_from_slice(&data[start + 1..start + block_size + 1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_shakespeare_splits_as_the_lecture() {
        let tok = Tokenizer::from_text(TINY_SHAKESPEARE).unwrap();
        assert_eq!(tok.vocab_size(), 65);
        let ds = Dataset::new(TINY_SHAKESPEARE, &tok).unwrap();
        assert_eq!(ds.train.len(), 1_003_854);
        assert_eq!(ds.val.len(), 111_540);
    }

    #[test]
    fn batches_are_shifted_windows_of_the_data() {
        let data: Vec<TokenId> = (0..100).collect();
        let mut rng = Rng::new(3);
        let (mut x, mut y) = (vec![0; 4 * 8], vec![0; 4 * 8]);
        sample_batch(&data, 8, &mut rng, &mut x, &mut y);
        for (xr, yr) in x.chunks(8).zip(y.chunks(8)) {
            for t in 0..8 {
                assert_eq!(yr[t], xr[t] + 1);
                if t > 0 {
                    assert_eq!(xr[t], xr[t - 1] + 1);
                }
            }
            assert!(yr[7] < 100);
        }
    }

    #[test]
    fn windows_cover_the_split_and_drop_the_partial_one() {
        // 21 tokens, T = 4: windows start at 0, 4, 8, 12, 16 (the last needs token 20).
        assert_eq!(window_count(21, 4), 5);
        assert_eq!(window_count(20, 4), 4);
        assert_eq!(window_count(4, 4), 0);
        let data: Vec<TokenId> = (0..21).collect();
        let (mut x, mut y) = (vec![0; 8], vec![0; 8]);
        fill_windows(&data, 4, 3, 2, &mut x, &mut y);
        assert_eq!(x, vec![12, 13, 14, 15, 16, 17, 18, 19]);
        assert_eq!(y, vec![13, 14, 15, 16, 17, 18, 19, 20]);
    }

    #[test]
    fn foreign_characters_are_all_listed() {
        let tok = Tokenizer::from_text("abc \n").unwrap();
        let err =
            Dataset::with_vocabulary("abc\té€ cab\té", &tok, "new.txt", "fix it").unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(
                "new.txt has 3 characters that the model's vocabulary lacks: '\\t', 'é', '€';"
            ),
            "{shown}"
        );
        assert!(!shown.contains('\n'));
        assert!(shown.ends_with("; fix it"), "{shown}");
        assert!(Dataset::with_vocabulary("cab\nabc", &tok, "x", "").is_ok());
        let many: Vec<char> = ('A'..='Z').collect();
        assert!(list_chars(&many, 20).ends_with("'T', and 6 more"));
        assert_ne!(fingerprint("abc"), fingerprint("abd"));
    }

    #[test]
    fn short_text_is_rejected_with_the_split_named() {
        let tok = Tokenizer::from_text("abcdefghij").unwrap();
        let ds = Dataset::new("abcdefghij", &tok).unwrap();
        let err = ds.check_block_size(8).unwrap_err();
        assert!(err.to_string().contains("val split"), "{err}");
        assert!(ds.check_block_size(0).is_ok());
    }
}
