//! The fast engine against the reference engine: logits, loss and every gradient tensor of one
//! forward/backward pass, on every preset's shape (batch 2; the 10.8M-parameter preset with one
//! block instead of six) and on every option of the model config, with dropout on and off; and a
//! few training steps through [`Trainer`] on both engines, with dropout and two data-parallel
//! shards on the fast one. Run with `--nocapture` to see how close they are.

use chargpt::config::{
    preset, presets, Activation, Architecture, AttentionScale, FeedForward, LrSchedule,
    ModelConfig, NormKind, OptimizerKind, Position,
};
use chargpt::engine::Engine;
use chargpt::model::{Activations, Model};
use chargpt::reference;
use chargpt::rng::{DropoutSeed, Rng};
use chargpt::tokenizer::TokenId;
use chargpt::training::{evaluate_exact, Trainer};

/// Largest |a - b| relative to the largest |b| (as in `tests/parity.rs`).
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

/// The agreement the engines must reach: both are f32 and differ only in the order of their
/// sums (and in `exp`/`tanh`, within 2 ulp).
const TOLERANCE: f64 = 1e-5;

/// How far apart the engines are on one forward/backward pass of `cfg` over a random (B, T)
/// batch: (logits, loss, the worst gradient tensor and its name).
struct Agreement {
    logits: f64,
    loss: f64,
    grad: f64,
    worst_tensor: String,
}

fn compare(cfg: &ModelConfig, batch: usize, dropout: bool, seed: u64) -> Agreement {
    let model = Model::new(cfg.clone(), seed);
    let t = cfg.block_size;
    let mut rng = Rng::new(seed + 1);
    let mut tokens = || -> Vec<TokenId> {
        (0..batch * t)
            .map(|_| rng.below(cfg.vocab_size) as TokenId)
            .collect()
    };
    let (x, y) = (tokens(), tokens());
    let masks = dropout.then(|| DropoutSeed::new(seed ^ 0xD0));

    let mut acts = Activations::new(cfg, batch, t, true);
    let loss = model
        .forward(&mut acts, &x, Some(&y), batch, t, masks)
        .unwrap();
    let mut grads = vec![f32::NAN; model.num_params()];
    model.backward(&mut acts, &mut grads);

    let pass = reference::forward(model.weights(), &x, Some(&y), batch, t, masks);
    let mut want = vec![f32::NAN; model.num_params()];
    reference::backward(model.weights(), &pass, &mut want, 1.0);
    let want_loss = pass.loss.unwrap();

    let mut agreement = Agreement {
        logits: rel_err(acts.logits(), &pass.logits),
        loss: ((loss - want_loss) / want_loss).abs() as f64,
        grad: 0.0,
        worst_tensor: String::new(),
    };
    for spec in &model.layout.specs {
        let e = rel_err(&grads[spec.range()], &want[spec.range()]);
        assert!(
            e.is_finite(),
            "{}: gradient of {} is not finite",
            cfg_name(cfg),
            spec.name
        );
        if e >= agreement.grad {
            agreement.grad = e;
            agreement.worst_tensor = spec.name.clone();
        }
    }
    agreement
}

fn cfg_name(cfg: &ModelConfig) -> String {
    format!("{cfg:?}")
}

fn check(name: &str, a: &Agreement) {
    eprintln!(
        "{name:44} logits {:8.1e}  loss {:8.1e}  gradients {:8.1e} (worst: {})",
        a.logits, a.loss, a.grad, a.worst_tensor
    );
    assert!(
        a.logits < TOLERANCE,
        "{name}: logits differ by {:.2e}",
        a.logits
    );
    assert!(a.loss < TOLERANCE, "{name}: loss differs by {:.2e}", a.loss);
    assert!(
        a.grad < TOLERANCE,
        "{name}: gradient of {} differs by {:.2e}",
        a.worst_tensor,
        a.grad
    );
}

/// Every preset at its own shape, batch 2 (the 6-layer ones, `fast`, `best-1h` and `lecture`,
/// with 1 block instead of 6, to keep the test fast: a block is the same computation whatever
/// the depth), with the preset's own dropout, and with dropout forced on where the preset has
/// none.
#[test]
fn fast_engine_matches_the_reference_on_every_preset() {
    for p in presets() {
        let mut cfg = p.model.clone();
        cfg.vocab_size = 65;
        if cfg.n_layer >= 6 {
            cfg.n_layer = 1;
        }
        check(p.name, &compare(&cfg, 2, true, 7));
        if cfg.dropout == 0.0 && cfg.architecture == Architecture::Transformer {
            let dropped = ModelConfig {
                dropout: 0.2,
                ..cfg.clone()
            };
            check(
                &format!("{} + dropout 0.2", p.name),
                &compare(&dropped, 2, true, 8),
            );
        }
    }
}

/// Each option of the model config, one change at a time from a small pre-norm model, and with
/// several switched off together (the ladder's early rungs).
#[test]
fn fast_engine_matches_the_reference_on_every_option() {
    let base = ModelConfig {
        vocab_size: 13,
        block_size: 9,
        n_embd: 24,
        n_head: 3,
        n_layer: 2,
        dropout: 0.0,
        ..preset("layernorm").unwrap().model
    };
    let variants: Vec<(&str, ModelConfig)> = vec![
        ("base: pre-norm, ReLU, mlp, head-size scale", base.clone()),
        (
            "activation gelu",
            ModelConfig {
                activation: Activation::Gelu,
                ..base.clone()
            },
        ),
        (
            "feed_forward none",
            ModelConfig {
                feed_forward: FeedForward::None,
                ..base.clone()
            },
        ),
        (
            "feed_forward linear",
            ModelConfig {
                feed_forward: FeedForward::Linear,
                ..base.clone()
            },
        ),
        (
            "residual off",
            ModelConfig {
                residual: false,
                ..base.clone()
            },
        ),
        (
            "layer_norm off",
            ModelConfig {
                layer_norm: false,
                ..base.clone()
            },
        ),
        (
            "attention_scale n-embd",
            ModelConfig {
                attention_scale: AttentionScale::NEmbd,
                ..base.clone()
            },
        ),
        (
            "attention_projection off",
            ModelConfig {
                attention_projection: false,
                ..base.clone()
            },
        ),
        (
            "dropout 0.3",
            ModelConfig {
                dropout: 0.3,
                ..base.clone()
            },
        ),
        (
            "dropout, linear feed-forward, no residual",
            ModelConfig {
                dropout: 0.3,
                feed_forward: FeedForward::Linear,
                residual: false,
                ..base.clone()
            },
        ),
        (
            "activation relu2",
            ModelConfig {
                activation: Activation::Relu2,
                ..base.clone()
            },
        ),
        (
            "position rope",
            ModelConfig {
                position: Position::Rope,
                ..base.clone()
            },
        ),
        (
            "norm rms",
            ModelConfig {
                norm: NormKind::Rms,
                ..base.clone()
            },
        ),
        (
            "qk_norm",
            ModelConfig {
                qk_norm: true,
                ..base.clone()
            },
        ),
        (
            "tie_embeddings",
            ModelConfig {
                tie_embeddings: true,
                ..base.clone()
            },
        ),
        (
            "bias off",
            ModelConfig {
                bias: false,
                ..base.clone()
            },
        ),
        (
            "every modern option, dropout 0.3",
            ModelConfig {
                position: Position::Rope,
                norm: NormKind::Rms,
                activation: Activation::Relu2,
                qk_norm: true,
                tie_embeddings: true,
                bias: false,
                dropout: 0.3,
                ..base.clone()
            },
        ),
        (
            "rope + qk_norm, heads on the tiled path (T 64, hs 32)",
            ModelConfig {
                position: Position::Rope,
                qk_norm: true,
                block_size: 64,
                n_embd: 64,
                n_head: 2,
                n_layer: 1,
                ..base.clone()
            },
        ),
        (
            "no projection/residual/LayerNorm, gelu",
            ModelConfig {
                attention_projection: false,
                residual: false,
                layer_norm: false,
                activation: Activation::Gelu,
                ..base.clone()
            },
        ),
    ];
    for (name, cfg) in variants {
        cfg.validate().unwrap();
        check(name, &compare(&cfg, 2, true, 3));
    }
    // Evaluation mode (no dropout masks) with dropout configured.
    let dropped = ModelConfig {
        dropout: 0.3,
        ..base.clone()
    };
    check("dropout 0.3, evaluation", &compare(&dropped, 2, false, 4));
}

/// A few training steps on the same batches give the same losses and parameters on both engines,
/// with dropout on and the fast engine's batch in two shards (the masks do not depend on it):
/// the lecture's model with AdamW, and every modern option with Muon and the wsd schedule.
#[test]
fn a_short_run_trains_the_same_on_both_engines() {
    short_run_on_both_engines(false);
    short_run_on_both_engines(true);
}

fn short_run_on_both_engines(modern: bool) {
    let mut p = preset("layernorm").unwrap();
    p.model.vocab_size = 20;
    p.model.dropout = 0.2;
    p.train.batch_size = 6;
    if modern {
        p.model.position = Position::Rope;
        p.model.norm = NormKind::Rms;
        p.model.activation = Activation::Relu2;
        p.model.qk_norm = true;
        p.model.tie_embeddings = true;
        p.model.bias = false;
        p.train.optimizer = OptimizerKind::Muon;
        p.train.lr_schedule = LrSchedule::Wsd;
        p.train.steps = 6;
        p.train.min_lr = 0.0;
    }
    let mut rng = Rng::new(17);
    let data: Vec<TokenId> = (0..4000).map(|_| rng.below(20) as TokenId).collect();
    let model = Model::new(p.model.clone(), 2);
    let pool = chargpt::runtime::thread_pool(Some(2)).unwrap();
    let (fast, reference) = pool.install(|| {
        let mut fast = Trainer::with_shards(model.clone(), p.train.clone(), 2);
        let mut reference = Trainer::with_engine(model.clone(), p.train.clone(), Engine::Reference);
        assert_eq!(fast.shard_count(), 2);
        let mut worst = 0.0f64;
        for step in 0..5 {
            let a = fast.train_step(&data).unwrap();
            let b = reference.train_step(&data).unwrap();
            let e = ((a.loss - b.loss) / b.loss).abs() as f64;
            worst = worst.max(e);
            assert!(e < TOLERANCE, "step {step}: loss {} vs {}", a.loss, b.loss);
            let g = ((a.grad_norm - b.grad_norm) / b.grad_norm).abs() as f64;
            assert!(
                g < 1e-4,
                "step {step}: gradient norm {} vs {}",
                a.grad_norm,
                b.grad_norm
            );
        }
        eprintln!("5 steps with dropout (modern: {modern}): losses within {worst:.1e} (relative)");
        (fast, reference)
    });
    let e = rel_err(&fast.model.params, &reference.model.params);
    eprintln!("parameters after 5 steps within {e:.1e} (relative)");
    assert!(e < 1e-4, "parameters differ by {e:.2e}");
    // The two engines' loss estimates and exact losses agree as well.
    let (mut fast, mut reference) = (fast, reference);
    let split = chargpt::data::Split::Val;
    let (a, b) = (
        fast.estimate_loss(&data[..2000], split),
        reference.estimate_loss(&data[..2000], split),
    );
    assert!(((a - b) / b).abs() < 1e-5, "estimate {a} vs {b}");
    let (a, b) = (
        evaluate_exact(&fast.model, &data, 5, Engine::Fast),
        evaluate_exact(&fast.model, &data, 5, Engine::Reference),
    );
    assert_eq!((a.tokens, a.windows), (b.tokens, b.windows));
    assert!(
        ((a.loss - b.loss) / b.loss).abs() < 1e-6,
        "exact {} vs {}",
        a.loss,
        b.loss
    );
}
