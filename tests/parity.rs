//! Both engines against PyTorch: the fixtures in `tests/fixtures` were written by
//! `tools/make_fixtures.py` from the reference model in `tools/chargpt_torch.py`. For each case the
//! logits, the loss and every parameter gradient of one forward/backward pass must agree, and so
//! must the losses of 10 optimizer steps on the same batch, on the fast engine and on the
//! reference engine (`src/reference/`).

use chargpt::config::{ModelConfig, TrainConfig};
use chargpt::engine::Engine;
use chargpt::model::{Activations, Model, ParamLayout};
use chargpt::tokenizer::TokenId;
use chargpt::training::Trainer;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;

struct Fixture {
    model: ModelConfig,
    train: TrainConfig,
    f32s: HashMap<String, Vec<f32>>,
    inputs: Vec<TokenId>,
    targets: Vec<TokenId>,
}

fn load(name: &str) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).expect("fixture present");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let mut f32s = HashMap::new();
    let mut ints = HashMap::new();
    for (name, view) in st.iter() {
        let chunks = view
            .data()
            .chunks_exact(4)
            .map(|b| [b[0], b[1], b[2], b[3]]);
        match view.dtype() {
            Dtype::F32 => {
                f32s.insert(name.to_string(), chunks.map(f32::from_le_bytes).collect());
            }
            Dtype::I32 => {
                ints.insert(
                    name.to_string(),
                    chunks
                        .map(|b| i32::from_le_bytes(b) as TokenId)
                        .collect::<Vec<_>>(),
                );
            }
            other => panic!("unexpected dtype {other:?}"),
        }
    }
    Fixture {
        model: serde_json::from_str(&meta["model"]).unwrap(),
        train: serde_json::from_str(&meta["train"]).unwrap(),
        f32s,
        inputs: ints.remove("inputs").unwrap(),
        targets: ints.remove("targets").unwrap(),
    }
}

/// The parameters named `prefix.<name>` gathered into chargpt's flat layout.
fn flat(fx: &Fixture, layout: &ParamLayout, prefix: &str) -> Vec<f32> {
    let mut out = vec![0.0; layout.len];
    for spec in &layout.specs {
        let key = format!("{prefix}.{}", spec.name);
        let values = fx
            .f32s
            .get(&key)
            .unwrap_or_else(|| panic!("fixture lacks {key}"));
        assert_eq!(values.len(), spec.len(), "{key}");
        out[spec.range()].copy_from_slice(values);
    }
    out
}

/// Largest |a - b| relative to the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .map(|x| x.abs() as f64)
        .fold(0.0, f64::max)
        .max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

fn check_case(name: &str) {
    for engine in Engine::ALL {
        check_case_on(name, engine);
    }
}

/// One forward/backward pass on `engine`: (loss, logits, gradient).
fn one_pass(model: &Model, fx: &Fixture, engine: Engine) -> (f32, Vec<f32>, Vec<f32>) {
    let (b, t) = (fx.train.batch_size, fx.model.block_size);
    // NaN to start with: backward overwrites the whole gradient.
    let mut grads = vec![f32::NAN; model.num_params()];
    match engine {
        Engine::Fast => {
            let mut acts = Activations::new(&model.config, b, t, true);
            let loss = model
                .forward(&mut acts, &fx.inputs, Some(&fx.targets), b, t, None)
                .unwrap();
            model.backward(&mut acts, &mut grads);
            (loss, acts.logits().to_vec(), grads)
        }
        Engine::Reference => {
            let pass = chargpt::reference::forward(
                model.weights(),
                &fx.inputs,
                Some(&fx.targets),
                b,
                t,
                None,
            );
            chargpt::reference::backward(model.weights(), &pass, &mut grads, 1.0);
            (pass.loss.unwrap(), pass.logits, grads)
        }
    }
}

fn check_case_on(name: &str, engine: Engine) {
    let fx = load(name);
    let layout = ParamLayout::new(&fx.model);
    let model = Model::from_params(fx.model.clone(), flat(&fx, &layout, "param")).unwrap();
    let b = fx.train.batch_size;
    let name = &format!("{name} ({engine} engine)");

    let (loss, logits, grads) = one_pass(&model, &fx, engine);
    let want_loss = fx.f32s["loss"][0];
    assert!(
        (loss - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0),
        "{name}: loss {loss} vs PyTorch {want_loss}"
    );
    let e = rel_err(&logits, &fx.f32s["logits"]);
    assert!(e < 1e-5, "{name}: logits differ by {e:.2e} of their scale");

    let want = flat(&fx, &layout, "grad");
    let mut worst_grad = 0.0f64;
    for spec in &layout.specs {
        let e = rel_err(&grads[spec.range()], &want[spec.range()]);
        assert!(
            e < 1e-5,
            "{name}: gradient of {} differs by {e:.2e} of its scale",
            spec.name
        );
        worst_grad = worst_grad.max(e);
    }

    // One thread runs the batch whole; two split it into two data-parallel shards whose
    // gradients are summed. Both must follow PyTorch.
    let want_losses = &fx.f32s["step_losses"];
    let mut worst_step = 0.0f32;
    for threads in [1, 2] {
        let pool = chargpt::runtime::thread_pool(Some(threads)).unwrap();
        pool.install(|| {
            let mut trainer = match engine {
                Engine::Fast => Trainer::with_shards(model.clone(), fx.train.clone(), threads),
                Engine::Reference => {
                    Trainer::with_engine(model.clone(), fx.train.clone(), Engine::Reference)
                }
            };
            if engine == Engine::Fast {
                assert_eq!(trainer.shard_count(), threads.min(b));
            }
            for (i, &want) in want_losses.iter().enumerate() {
                let stats = trainer.step_on_batch(&fx.inputs, &fx.targets).unwrap();
                assert!(
                    (stats.loss - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{name}, {threads} threads: step {i} loss {} vs PyTorch {want}",
                    stats.loss
                );
                worst_step = worst_step.max((stats.loss - want).abs());
            }
        });
    }
    // Shown with --nocapture: how close the agreement actually is.
    eprintln!(
        "{name}: logits {e:.1e}, worst gradient {worst_grad:.1e} (relative), 10-step losses within {worst_step:.1e}, {:.4} -> {:.4}",
        want_losses[0],
        want_losses[want_losses.len() - 1]
    );
}

#[test]
fn bigram_matches_pytorch() {
    check_case("bigram");
}

#[test]
fn feed_forward_rung_without_residuals_matches_pytorch() {
    check_case("rung_feed_forward");
}

#[test]
fn residual_rung_without_layernorm_matches_pytorch() {
    check_case("rung_residual");
}

#[test]
fn prenorm_blocks_with_relu_match_pytorch() {
    check_case("blocks_relu");
}

#[test]
fn prenorm_blocks_with_gelu_and_nanogpt_optimizer_match_pytorch() {
    check_case("blocks_gelu");
}

#[test]
fn wide_heads_use_the_matrix_product_attention_and_match_pytorch() {
    check_case("blocks_wide_heads");
}

#[test]
fn every_modern_option_with_muon_and_wsd_matches_pytorch() {
    check_case("modern_all");
}

#[test]
fn rope_and_qk_norm_on_wide_heads_with_muon_match_pytorch() {
    check_case("modern_wide_heads");
}

#[test]
fn layernorm_without_biases_and_tied_embeddings_match_pytorch() {
    check_case("layernorm_no_bias_tied");
}
