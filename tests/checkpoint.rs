//! Checkpoint round trips: a saved and reloaded model computes identical logits, the optimizer
//! state comes back exactly, and the tensor names and shapes are those the README documents.

use chargpt::checkpoint::{self, CheckpointConfig, OptimizerState, RunCounters};
use chargpt::config::{preset, Activation, NormKind, Position};
use chargpt::data::TINY_SHAKESPEARE;
use chargpt::model::{Activations, Model};
use chargpt::optimizer::AdamW;
use chargpt::tokenizer::Tokenizer;

fn logits(model: &Model, tokens: &[u32], b: usize, t: usize) -> Vec<f32> {
    let mut acts = Activations::new(&model.config, b, t, false);
    model.forward(&mut acts, tokens, None, b, t, None);
    acts.logits().to_vec()
}

#[test]
fn save_then_load_gives_identical_logits() {
    let tokenizer = Tokenizer::from_text(TINY_SHAKESPEARE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, gelu) in [
        ("bigram", false),
        ("feed-forward", false),
        ("layernorm", false),
        ("nanogpt-cpu", true),
    ] {
        let p = preset(name).unwrap();
        let mut cfg = p.model;
        cfg.vocab_size = tokenizer.vocab_size();
        if gelu {
            cfg.activation = Activation::Gelu;
        }
        let model = Model::new(cfg.clone(), 42);
        let mut config = CheckpointConfig::new(&cfg, &tokenizer, &p.train);
        config.step = 123;
        config.best_val_loss = Some(1.5);
        let out = dir.path().join(name);
        checkpoint::save_model(&out, &model, &config).unwrap();
        let loaded = checkpoint::load(&out).unwrap();
        assert_eq!(loaded.config, config);
        assert_eq!(loaded.tokenizer, tokenizer);
        assert_eq!(loaded.model.params, model.params);
        let t = cfg.block_size;
        let tokens = tokenizer.encode(&TINY_SHAKESPEARE[..2 * t]).unwrap();
        let before = logits(&model, &tokens, 2, t);
        let after = logits(&loaded.model, &tokens, 2, t);
        assert_eq!(before, after, "{name}");
        assert_eq!(checkpoint::model_file_step(&out).unwrap(), Some(123));
    }
}

#[test]
fn tensor_names_and_shapes_are_the_documented_ones() {
    let p = preset("nanogpt-cpu").unwrap();
    let mut cfg = p.model;
    cfg.vocab_size = 65;
    let dir = tempfile::tempdir().unwrap();
    let model = Model::new(cfg.clone(), 1);
    let tokenizer = Tokenizer::from_text(TINY_SHAKESPEARE).unwrap();
    checkpoint::save_model(
        dir.path(),
        &model,
        &CheckpointConfig::new(&cfg, &tokenizer, &p.train),
    )
    .unwrap();
    let file = checkpoint::read_tensor_file(&dir.path().join("model.safetensors")).unwrap();
    let shape = |name: &str| file.tensors[name].0.clone();
    let (c, v, t) = (128, 65, 64);
    assert_eq!(shape("token_embedding.weight"), [v, c]);
    assert_eq!(shape("position_embedding.weight"), [t, c]);
    for i in 0..4 {
        let b = |s: &str| shape(&format!("blocks.{i}.{s}"));
        assert_eq!(b("ln1.weight"), [c]);
        assert_eq!(b("ln1.bias"), [c]);
        assert_eq!(b("attn.qkv.weight"), [3 * c, c]);
        assert_eq!(b("attn.proj.weight"), [c, c]);
        assert_eq!(b("attn.proj.bias"), [c]);
        assert_eq!(b("ln2.weight"), [c]);
        assert_eq!(b("ln2.bias"), [c]);
        assert_eq!(b("ffn.fc.weight"), [4 * c, c]);
        assert_eq!(b("ffn.fc.bias"), [4 * c]);
        assert_eq!(b("ffn.proj.weight"), [c, 4 * c]);
        assert_eq!(b("ffn.proj.bias"), [c]);
    }
    assert_eq!(shape("ln_f.weight"), [c]);
    assert_eq!(shape("ln_f.bias"), [c]);
    assert_eq!(shape("lm_head.weight"), [v, c]);
    assert_eq!(shape("lm_head.bias"), [v]);
    assert_eq!(file.tensors.len(), 2 + 4 * 11 + 4);
    assert_eq!(file.metadata["format"], "chargpt-1");
}

/// A modern model's checkpoint: no position embedding (RoPE), no `lm_head.weight` (tied: the
/// head reads `token_embedding.weight`, stored once), no biases, RMSNorm gains only, QK-norm
/// gains of head_size; it loads back to the same logits.
#[test]
fn a_tied_rope_model_without_biases_keeps_the_documented_tensors() {
    let p = preset("nanogpt-cpu").unwrap();
    let mut cfg = p.model;
    cfg.vocab_size = 65;
    cfg.n_layer = 2;
    cfg.position = Position::Rope;
    cfg.norm = NormKind::Rms;
    cfg.qk_norm = true;
    cfg.tie_embeddings = true;
    cfg.bias = false;
    let dir = tempfile::tempdir().unwrap();
    let model = Model::new(cfg.clone(), 1);
    let tokenizer = Tokenizer::from_text(TINY_SHAKESPEARE).unwrap();
    let config = CheckpointConfig::new(&cfg, &tokenizer, &p.train);
    checkpoint::save_model(dir.path(), &model, &config).unwrap();
    let file = checkpoint::read_tensor_file(&dir.path().join("model.safetensors")).unwrap();
    let mut names: Vec<&str> = file.tensors.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    let (c, v, hs) = (128, 65, 32);
    assert_eq!(file.tensors["token_embedding.weight"].0, [v, c]);
    assert_eq!(file.tensors["blocks.1.attn.q_norm.weight"].0, [hs]);
    assert_eq!(file.tensors["blocks.1.attn.k_norm.weight"].0, [hs]);
    let mut want = vec!["ln_f.weight", "token_embedding.weight"];
    let per_block = [
        "attn.k_norm.weight",
        "attn.proj.weight",
        "attn.q_norm.weight",
        "attn.qkv.weight",
        "ffn.fc.weight",
        "ffn.proj.weight",
        "ln1.weight",
        "ln2.weight",
    ];
    let blocks: Vec<String> = (0..2)
        .flat_map(|i| per_block.iter().map(move |t| format!("blocks.{i}.{t}")))
        .collect();
    want.extend(blocks.iter().map(String::as_str));
    want.sort_unstable();
    assert_eq!(names, want);
    let loaded = checkpoint::load(dir.path()).unwrap();
    let tokens = tokenizer.encode(&TINY_SHAKESPEARE[..128]).unwrap();
    assert_eq!(
        logits(&loaded.model, &tokens, 2, 64),
        logits(&model, &tokens, 2, 64)
    );
}

#[test]
fn optimizer_state_round_trips_exactly() {
    let p = preset("layernorm").unwrap();
    let mut cfg = p.model;
    cfg.vocab_size = 65;
    let model = Model::new(cfg.clone(), 3);
    let n = model.num_params();
    let adamw = AdamW {
        m: (0..n).map(|i| (i as f32 * 0.37).sin() * 1e-3).collect(),
        v: (0..n)
            .map(|i| (i as f32 * 0.11).cos().abs() * 1e-6)
            .collect(),
        step: 77,
    };
    let counters = RunCounters {
        step: 77,
        data_rng_state: 0xDEAD_BEEF_1234_5678,
        best_val_loss: Some(2.0312),
        best_val_step: Some(70),
        elapsed_s: 12.345678901,
    };
    let tokenizer = Tokenizer::from_text(TINY_SHAKESPEARE).unwrap();
    let mut config = CheckpointConfig::new(&cfg, &tokenizer, &p.train);
    config.step = 77;
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save_checkpoint(dir.path(), &model, &config, &adamw, &counters).unwrap();
    let OptimizerState {
        adamw: back,
        counters: back_counters,
    } = checkpoint::load_optimizer(dir.path(), &model.layout).unwrap();
    assert_eq!(back, adamw);
    assert_eq!(back_counters, counters);
    // A model of another shape cannot take these moments.
    let mut other = cfg;
    other.n_embd = 64;
    let err = checkpoint::load_optimizer(dir.path(), &chargpt::model::ParamLayout::new(&other))
        .unwrap_err();
    assert!(err.to_string().contains("has shape"), "{err}");
}

/// The page in a browser tab has no files: it keeps a run's checkpoint as bytes. Those bytes are
/// exactly the files a native run writes, so a download opens natively and a native run opens in
/// the page, and bad bytes are the same one-line errors as a bad file.
#[test]
fn checkpoint_bytes_are_the_files_bytes() {
    let p = preset("layernorm").unwrap();
    let tokenizer = Tokenizer::from_text(TINY_SHAKESPEARE).unwrap();
    let mut cfg = p.model;
    cfg.vocab_size = tokenizer.vocab_size();
    let model = Model::new(cfg.clone(), 9);
    let n = model.num_params();
    let adamw = AdamW {
        m: (0..n).map(|i| (i as f32 * 0.3).sin() * 1e-3).collect(),
        v: (0..n)
            .map(|i| (i as f32 * 0.7).cos().abs() * 1e-6)
            .collect(),
        step: 5,
    };
    let counters = RunCounters {
        step: 5,
        data_rng_state: 42,
        best_val_loss: Some(3.5),
        best_val_step: Some(5),
        elapsed_s: 1.25,
    };
    let mut config = CheckpointConfig::new(&cfg, &tokenizer, &p.train);
    config.step = 5;
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save_checkpoint(dir.path(), &model, &config, &adamw, &counters).unwrap();
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let (model_file, config_file, optimizer_file) = (
        read("model.safetensors"),
        read("config.json"),
        read("optimizer.safetensors"),
    );
    // The metadata's order in a safetensors header follows a hash map, so the bytes are
    // compared as what they hold: the same tensors and the same counters as the files.
    assert_eq!(checkpoint::config_bytes(&config), config_file);
    let from_memory = checkpoint::from_bytes(
        &checkpoint::config_bytes(&config),
        &checkpoint::model_bytes(&model, 5),
    )
    .unwrap();
    assert!(from_memory.model.params == model.params);
    assert_eq!(
        checkpoint::model_bytes_step(&checkpoint::model_bytes(&model, 5)).unwrap(),
        Some(5)
    );
    let from_memory = checkpoint::optimizer_from_bytes(
        &checkpoint::optimizer_bytes(&model.layout, &adamw, &counters),
        &model.layout,
    )
    .unwrap();
    assert!(from_memory.adamw == adamw);
    assert_eq!(from_memory.counters, counters);

    let loaded = checkpoint::from_bytes(&config_file, &model_file).unwrap();
    assert!(loaded.model.params == model.params);
    assert_eq!(loaded.tokenizer, tokenizer);
    assert_eq!(loaded.config, config);
    assert_eq!(checkpoint::model_bytes_step(&model_file).unwrap(), Some(5));
    let state = checkpoint::optimizer_from_bytes(&optimizer_file, &model.layout).unwrap();
    assert!(state.adamw == adamw);
    assert_eq!(state.counters, counters);

    let err = checkpoint::from_bytes(&config_file, &model_file[..model_file.len() / 2])
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    let err = checkpoint::from_bytes(b"{not json", &model_file)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}
