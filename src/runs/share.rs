//! A run trained across ranks (`mpirun`) is prepared on rank 0 alone and sent to the others
//! ([`share_run`]), which need neither its directory nor its text.

use super::prepare::PrepareError;
use super::run::Run;
use crate::checkpoint;
use crate::config::{ModelConfig, TrainConfig};
use crate::data::Dataset;
use crate::distributed::{DistributedError, Group};
use crate::model::{Model, ParamLayout};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::training::Trainer;

/// What rank 0 sends the other ranks of a run besides its tensors.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedRun {
    model: ModelConfig,
    train: TrainConfig,
    vocabulary: Vec<char>,
    data: checkpoint::DataInfo,
    step: usize,
    optimizer_step: u64,
    data_rng_state: u64,
    best: Option<(f32, usize)>,
    elapsed_before_s: f64,
    train_tokens: usize,
    val_tokens: usize,
}

/// Rank 0's run on every rank of `group` (a collective; with one rank it returns `None` at once).
///
/// Rank 0 passes the run it prepared, or `None` when preparing it failed (the others then get
/// `None` too, and rank 0 reports the error); the others pass `None` and get a copy: model,
/// parameters, AdamW moments and step, the batch generator's state, the step, the vocabulary and
/// the tokenized text. So they need neither the run directory nor the text, and other machines
/// need not share a disk with rank 0. Rank 0 keeps its own run and gets `None` back.
pub fn share_run(group: Group, run: Option<&mut Run>) -> Result<Option<Run>, PrepareError> {
    if group.size() == 1 {
        return Ok(None);
    }
    let garbled = |what: String| {
        PrepareError::Distributed(DistributedError::Garbled {
            rank: group.rank(),
            what,
        })
    };
    let mut header = Vec::new();
    if let Some(run) = &run {
        let t = &run.trainer;
        let shared = SharedRun {
            model: t.model.config.clone(),
            train: t.config.clone(),
            vocabulary: run.tokenizer.chars().to_vec(),
            data: run.data.clone(),
            step: t.step,
            optimizer_step: t.optimizer.step,
            data_rng_state: t.data_rng.state(),
            best: run.best,
            elapsed_before_s: run.elapsed_before_s,
            train_tokens: run.dataset.train.len(),
            val_tokens: run.dataset.val.len(),
        };
        header = serde_json::to_vec(&shared).map_err(|e| garbled(e.to_string()))?;
    }
    // An empty header: rank 0 has no run to share.
    group.broadcast_bytes(&mut header);
    if header.is_empty() {
        return Ok(None);
    }
    if let Some(run) = run {
        let t = &mut run.trainer;
        group.broadcast_f32(&mut t.model.params);
        group.broadcast_f32(&mut t.optimizer.m);
        group.broadcast_f32(&mut t.optimizer.v);
        group.broadcast_u32(&mut run.dataset.train);
        group.broadcast_u32(&mut run.dataset.val);
        return Ok(None);
    }
    let shared: SharedRun = serde_json::from_slice(&header).map_err(|e| garbled(e.to_string()))?;
    let n = ParamLayout::new(&shared.model).len;
    let mut params = vec![0.0; n];
    let mut optimizer = crate::optimizer::AdamW::new(n);
    let mut dataset = Dataset {
        train: vec![0; shared.train_tokens],
        val: vec![0; shared.val_tokens],
    };
    group.broadcast_f32(&mut params);
    group.broadcast_f32(&mut optimizer.m);
    group.broadcast_f32(&mut optimizer.v);
    group.broadcast_u32(&mut dataset.train);
    group.broadcast_u32(&mut dataset.val);
    optimizer.step = shared.optimizer_step;
    let tokenizer = Tokenizer::from_chars(shared.vocabulary).map_err(|e| garbled(e.to_string()))?;
    let model = Model::from_params(shared.model, params)
        .ok_or_else(|| garbled("parameters that do not fit the model".into()))?;
    let mut trainer = Trainer::new(model, shared.train);
    trainer.optimizer = optimizer;
    trainer.data_rng = Rng::from_state(shared.data_rng_state);
    trainer.step = shared.step;
    Ok(Some(Run {
        trainer,
        tokenizer,
        dataset,
        data: shared.data,
        preset: None,
        init_from: None,
        best: shared.best,
        elapsed_before_s: shared.elapsed_before_s,
        metrics: Vec::new(),
        step_rows: Vec::new(),
        saved_step: None,
        budget_guess: None,
    }))
}

/// Rank 0's text (as [`load_text`] gave it) on every rank of `group` (a collective): `None` on
/// every rank when rank 0 has none to give. With one rank, `text` comes back as it is.
pub fn share_text(
    group: Group,
    text: Option<(String, checkpoint::DataInfo)>,
) -> Result<Option<(String, checkpoint::DataInfo)>, PrepareError> {
    if group.size() == 1 {
        return Ok(text);
    }
    let mut bytes = match &text {
        Some(pair) if group.is_root() => serde_json::to_vec(pair).map_err(|e| {
            PrepareError::Distributed(DistributedError::Garbled {
                rank: 0,
                what: e.to_string(),
            })
        })?,
        _ => Vec::new(),
    };
    group.broadcast_bytes(&mut bytes);
    if bytes.is_empty() {
        return Ok(None);
    }
    if group.is_root() {
        return Ok(text);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        PrepareError::Distributed(DistributedError::Garbled {
            rank: group.rank(),
            what: e.to_string(),
        })
    })
}
