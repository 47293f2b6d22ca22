//! The probe records of a run (`probes.jsonl`): at every evaluation, what the model does on one
//! fixed text, so that the page can replay how it learnt.

use crate::checkpoint::{write_atomic, CheckpointError};
use crate::config::Architecture;
use crate::inspect::{embeddings, run, softmax, visible};
use crate::model::Model;
use crate::tokenizer::{TokenId, Tokenizer};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file of a run directory holding one [`ProbeRecord`] per evaluation, one JSON per line.
pub const PROBES_FILE: &str = "probes.jsonl";
/// The probe of a model that knows its characters (Tiny Shakespeare's do): the line the README's
/// attention maps look at.
pub const PROBE_TEXT: &str = "ROMEO:\nIt is the east, and Juliet is the sun.";
/// The most characters of a probe: its attention maps grow with the square of it.
pub const PROBE_MAX: usize = 48;

/// The probe text of a run: [`PROBE_TEXT`] for a model of the built-in Tiny Shakespeare (or of
/// a text whose source is unknown, if its vocabulary has the line's characters), else the first
/// line start of the val split and what follows, in the run's own language; at most
/// `block_size` and [`PROBE_MAX`] characters. Also the prompt the page's views start from.
pub fn default_probe(
    tokenizer: &Tokenizer,
    val: &[TokenId],
    block_size: usize,
    text: Option<&crate::checkpoint::DataInfo>,
) -> Vec<TokenId> {
    let n = block_size.min(PROBE_MAX);
    let builtin = text.is_none_or(|t| t.source == crate::checkpoint::EMBEDDED_SOURCE);
    let line = (builtin || val.is_empty())
        .then(|| tokenizer.encode(PROBE_TEXT).ok())
        .flatten();
    if let Some(ids) = line {
        return ids[..n.min(ids.len())].to_vec();
    }
    let newline = tokenizer.id('\n');
    let start = newline
        .and_then(|nl| val.iter().take(1000).position(|&t| t == nl))
        .map_or(0, |p| p + 1);
    let start = if start + n > val.len() { 0 } else { start };
    val[start..(start + n).min(val.len())].to_vec()
}

/// What the model of one evaluation does on the probe text, compactly (a few tens of KB for the
/// `default` model): enough to redraw the next-character bars, the attention maps, the surprise
/// of each character and the embeddings as they were at that step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub step: usize,
    pub val_loss: f32,
    /// The probe text (every record holds it, so that each line stands alone).
    pub probe: String,
    /// The logits after the whole probe (V), to 3 decimals: temperature and top-k reshape them
    /// as sampling does.
    pub logits: Vec<f32>,
    /// `-ln p` of each probe character after the first (P - 1), to 4 decimals...
    pub surprise: Vec<f32>,
    /// ...and the three likeliest characters there, `[id, p]`, most likely first.
    pub top: Vec<[(TokenId, f32); 3]>,
    pub n_layer: usize,
    pub n_head: usize,
    /// The attention weights, base64 of one byte per weight (`round(255 a)`): for each layer,
    /// head and query t, the t + 1 weights of keys 0..=t. Absent for a bigram.
    pub attention: Option<String>,
    /// The token embeddings on their first two principal components (V, 2), to 4 decimals, and
    /// the share of variance along each.
    pub embedding: Vec<[f32; 2]>,
    pub explained: [f32; 2],
    /// The cosine similarity of the position embeddings of the probe's P positions, base64 of
    /// one signed byte each (`round(127 cos)`), (P, P). Absent without position embeddings.
    pub position_cosine: Option<String>,
}

fn rounded(x: f32, digits: i32) -> f32 {
    let f = 10f32.powi(digits);
    // + 0.0 turns -0 into 0.
    (x * f).round() / f + 0.0
}

/// The standard base64 of `bytes` (with padding).
pub fn base64(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(DIGITS[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What the model does on `probe` (at most `block_size` ids; at least one), as recorded at the
/// evaluation of `step`.
pub fn probe_record(
    model: &Model,
    tokenizer: &Tokenizer,
    probe: &[TokenId],
    step: usize,
    val_loss: f32,
) -> ProbeRecord {
    let cfg = &model.config;
    let probe = &probe[visible(model, probe)..];
    let (p_n, v) = (probe.len(), cfg.vocab_size);
    let acts = run(model, probe);
    let logits = acts.logits();
    let mut surprise = Vec::with_capacity(p_n.saturating_sub(1));
    let mut top = Vec::with_capacity(p_n.saturating_sub(1));
    for (row, &next) in logits.chunks_exact(v).zip(&probe[1.min(p_n)..]) {
        let mut p = row.to_vec();
        softmax(&mut p);
        surprise.push(rounded(-p[next as usize].max(1e-30).ln(), 4));
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let mut best = [(0 as TokenId, 0.0f32); 3];
        for (slot, &i) in best.iter_mut().zip(&order) {
            *slot = (i as TokenId, rounded(p[i], 4));
        }
        top.push(best);
    }
    let attention = (cfg.architecture != Architecture::Bigram).then(|| {
        let mut bytes = Vec::with_capacity(cfg.n_layer * cfg.n_head * p_n * (p_n + 1) / 2);
        for l in 0..cfg.n_layer {
            let att = acts.attention_weights(l).expect("a block per layer");
            for map in att.chunks_exact(p_n * p_n) {
                for t in 0..p_n {
                    for &a in &map[t * p_n..t * p_n + t + 1] {
                        bytes.push((a.clamp(0.0, 1.0) * 255.0).round() as u8);
                    }
                }
            }
        }
        base64(&bytes)
    });
    let map = embeddings(model);
    let position_cosine = map.position_cosine.as_ref().map(|cos| {
        let t = cfg.block_size;
        let bytes: Vec<u8> = (0..p_n)
            .flat_map(|i| (0..p_n).map(move |j| (i, j)))
            .map(|(i, j)| (cos[i * t + j].clamp(-1.0, 1.0) * 127.0).round() as i8 as u8)
            .collect();
        base64(&bytes)
    });
    ProbeRecord {
        step,
        val_loss,
        probe: probe
            .iter()
            .filter_map(|&id| tokenizer.decode_one(id).ok())
            .collect(),
        logits: logits[(p_n - 1) * v..]
            .iter()
            .map(|&z| rounded(z, 3))
            .collect(),
        surprise,
        top,
        n_layer: if cfg.architecture == Architecture::Bigram {
            0
        } else {
            cfg.n_layer
        },
        n_head: cfg.n_head,
        attention,
        embedding: map
            .tokens
            .iter()
            .map(|p| [rounded(p[0], 4), rounded(p[1], 4)])
            .collect(),
        explained: [rounded(map.explained[0], 4), rounded(map.explained[1], 4)],
        position_cosine,
    }
}

/// Appends `record` to the probes file `path` as one line.
pub fn append_probe(path: &Path, record: &ProbeRecord) -> std::io::Result<()> {
    use std::io::Write;
    let line = probe_line(record).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(line.as_bytes())
}

/// The records of a probes file, in order (lines that do not parse, e.g. one cut short by a
/// crash, are left out); none if there is no file.
pub fn read_probes(path: &Path) -> Vec<ProbeRecord> {
    parse_probes(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The records of a probes file's text.
pub fn parse_probes(text: &str) -> Vec<ProbeRecord> {
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// `record` as a line of [`PROBES_FILE`] (its newline included).
pub fn probe_line(record: &ProbeRecord) -> Result<String, serde_json::Error> {
    let mut line = serde_json::to_string(record)?;
    line.push('\n');
    Ok(line)
}

/// The probe text of a `probes.jsonl` (its first record's), without reading the rest.
pub fn first_probe(path: &Path) -> Option<String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(file).read_line(&mut line).ok()?;
    serde_json::from_str::<ProbeRecord>(&line)
        .ok()
        .map(|r| r.probe)
}

/// Keeps only the records of steps up to `last` (none if `None`): a resumed run evaluates the
/// steps after its checkpoint again, and a new run starts a new file.
pub fn keep_probes_through(path: &Path, last: Option<usize>) -> Result<(), CheckpointError> {
    #[derive(Deserialize)]
    struct Step {
        step: usize,
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            let step = serde_json::from_str::<Step>(line).map(|s| s.step);
            matches!((step, last), (Ok(s), Some(l)) if s <= l)
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    if kept.len() != text.len() {
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{attention, next_char_logits, next_char_probs};
    use crate::runs::data_info;
    use crate::sampling::SampleSettings;

    use crate::inspect::tests::{ids, model};

    #[test]
    fn base64_of_known_bytes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0, 255, 128]), "AP+A");
    }

    fn unbase64(text: &str) -> Vec<u8> {
        let digit = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(digit).collect();
        let mut out = Vec::new();
        for chunk in digits.chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &d)| n | (d as u32) << (18 - 6 * i));
            out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..chunk.len() - 1]);
        }
        out
    }

    #[test]
    fn a_probe_record_holds_what_the_model_does_on_the_probe() {
        let m = model("nanogpt-cpu", 7);
        let chars: Vec<char> = "abcdefghijk".chars().collect();
        let tokenizer = Tokenizer::from_chars(chars).unwrap();
        let probe = ids(10, 8);
        let r = probe_record(&m, &tokenizer, &probe, 40, 2.5);
        assert_eq!((r.step, r.val_loss), (40, 2.5));
        assert_eq!(r.probe, tokenizer.decode(&probe).unwrap());
        // The attention bytes are round(255 a) of every row's visible part, layer by layer and
        // head by head.
        let att = attention(&m, &probe).unwrap();
        let bytes = unbase64(r.attention.as_ref().unwrap());
        assert_eq!(bytes.len(), 2 * 4 * (10 * 11 / 2));
        let mut at = 0;
        for l in 0..2 {
            for h in 0..4 {
                let map = att.map(l, h);
                for t in 0..10 {
                    for u in 0..=t {
                        assert_eq!(bytes[at], (map[t * 10 + u] * 255.0).round() as u8);
                        at += 1;
                    }
                }
            }
        }
        // The surprise is each character's -ln p, the logits the last row's.
        let probs = next_char_probs(&m, &probe, SampleSettings::default()).unwrap();
        for (t, &loss) in r.surprise.iter().enumerate() {
            let p = probs[t * 11 + probe[t + 1] as usize];
            assert!((loss + p.ln()).abs() < 1e-3, "{loss} vs {}", -p.ln());
            assert!(r.top[t][0].1 >= r.top[t][1].1);
        }
        assert_eq!(r.surprise.len(), 9);
        let logits = next_char_logits(&m, &probe).unwrap();
        for (a, b) in r.logits.iter().zip(&logits[9 * 11..]) {
            assert!((a - b).abs() <= 5e-4);
        }
        // The cosines of the probe's positions, as signed bytes.
        let cos = unbase64(r.position_cosine.as_ref().unwrap());
        assert_eq!(cos.len(), 100);
        assert_eq!(cos[0] as i8, 127, "a position is like itself");
        assert_eq!(r.embedding.len(), 11);
        // A bigram has no attention and no positions; a probe longer than block_size keeps its
        // last block_size.
        let bigram = probe_record(&model("bigram", 1), &tokenizer, &probe, 0, 4.0);
        assert_eq!(
            (bigram.attention, bigram.position_cosine, bigram.n_layer),
            (None, None, 0)
        );
        let long = probe_record(&m, &tokenizer, &ids(20, 3), 0, 4.0);
        assert_eq!(long.probe.chars().count(), 16);
    }

    #[test]
    #[cfg_attr(
        target_arch = "wasm32",
        ignore = "a file on disk: std's temp_dir has none on wasm32 (the tab keeps runs in IndexedDB)"
    )]
    fn probes_files_keep_the_records_of_the_evaluations_kept() {
        let dir = std::env::temp_dir().join(format!("chargpt-probes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(PROBES_FILE);
        let _ = std::fs::remove_file(&path);
        let m = model("nanogpt-cpu", 7);
        let tokenizer = Tokenizer::from_chars("abcdefghijk".chars().collect()).unwrap();
        for step in [0, 10, 20] {
            let r = probe_record(&m, &tokenizer, &ids(6, 1), step, 3.0);
            append_probe(&path, &r).unwrap();
        }
        std::fs::write(
            &path,
            std::fs::read_to_string(&path).unwrap() + "{\"step\": 30, cut",
        )
        .unwrap();
        let steps = |p: &Path| read_probes(p).iter().map(|r| r.step).collect::<Vec<_>>();
        assert_eq!(steps(&path), [0, 10, 20], "a line cut short is left out");
        keep_probes_through(&path, Some(10)).unwrap();
        assert_eq!(steps(&path), [0, 10]);
        keep_probes_through(&path, None).unwrap();
        assert_eq!(steps(&path), Vec::<usize>::new());
        keep_probes_through(&dir.join("absent.jsonl"), None).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_default_probe_is_the_readmes_line_or_the_val_splits_first() {
        let shakespeare = Tokenizer::from_text(crate::data::TINY_SHAKESPEARE).unwrap();
        let probe = default_probe(&shakespeare, &[], 128, None);
        assert_eq!(shakespeare.decode(&probe).unwrap(), PROBE_TEXT);
        assert_eq!(default_probe(&shakespeare, &[], 8, None).len(), 8);
        let small = Tokenizer::from_text("ab\ncab\n").unwrap();
        let val = small.encode("ab\ncab\nca").unwrap();
        assert_eq!(
            small.decode(&default_probe(&small, &val, 4, None)).unwrap(),
            "cab\n"
        );
        // Another text that happens to have the line's characters gets a line of its own.
        let novel =
            "ROMEO: It is the east, and Juliet is the sun.\nA novel begins here.\nAnd it goes on and on, and on and on, and on.\n";
        let tokenizer = Tokenizer::from_text(novel).unwrap();
        let val = tokenizer.encode(&novel[40..]).unwrap();
        let own = data_info("/home/me/novel.txt", novel);
        let builtin = data_info(crate::checkpoint::EMBEDDED_SOURCE, novel);
        let probe = |info| {
            tokenizer
                .decode(&default_probe(&tokenizer, &val, 64, Some(info)))
                .unwrap()
        };
        assert!(
            probe(&own).starts_with("A novel begins here."),
            "{}",
            probe(&own)
        );
        assert_eq!(probe(&builtin), PROBE_TEXT);
    }
}
