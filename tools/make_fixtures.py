"""Writes the PyTorch reference fixtures that chargpt's parity tests compare against.

    python3 tools/make_fixtures.py            # writes tests/fixtures/*.safetensors
    python3 tools/make_fixtures.py modern_all # only the cases named

For each case: a model config, fixed random weights, one fixed batch; the logits, the loss and the
gradient of every parameter; then the losses of 10 optimizer steps on that same batch (as llm.c's
test does). Everything is float32 on the CPU. The Rust tests need only the files this writes.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from chargpt_torch import CharGPT, make_optimizers, step_all  # noqa: E402

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")


def model_cfg(**kw):
    base = dict(
        architecture="transformer", vocab_size=65, block_size=16, n_embd=32, n_head=4, n_layer=2,
        dropout=0.0, attention_scale="head-size", attention_projection=True, feed_forward="mlp",
        activation="relu", residual=True, layer_norm=True, init="lecture",
    )
    base.update(kw)
    return base


def train_cfg(**kw):
    base = dict(
        batch_size=4, steps=10, learning_rate=1e-3, lr_schedule="constant", warmup_steps=0,
        min_lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decay_on="all",
        grad_clip=0.0, eval_interval=500, eval_iters=200, seed=1337,
    )
    base.update(kw)
    return base


NANOGPT_OPT = dict(lr_schedule="cosine", warmup_steps=3, min_lr=1e-4, beta2=0.99,
                   weight_decay=0.1, decay_on="matrices", grad_clip=1.0)
MODERN_OPT = dict(lr_schedule="wsd", warmup_steps=2, decay_fraction=0.4, min_lr=0.0, beta2=0.99,
                  weight_decay=0.1, decay_on="matrices", optimizer="muon", muon_lr=0.02,
                  muon_momentum=0.95, muon_weight_decay=0.0)

CASES = {
    # The lecture's bigram: a 65x65 table of logits.
    "bigram": (model_cfg(architecture="bigram", block_size=8, n_embd=0, n_head=0, n_layer=0,
                         attention_projection=False, feed_forward="none", layer_norm=False,
                         residual=False, init="pytorch"),
               train_cfg(learning_rate=1e-2, min_lr=1e-2)),
    # The ladder's feed-forward rung: no projection, Linear(C, C) + ReLU, no residual, no
    # LayerNorm, scores scaled by n_embd.
    "rung_feed_forward": (model_cfg(block_size=8, n_layer=1, attention_projection=False,
                                    feed_forward="linear", residual=False, layer_norm=False,
                                    attention_scale="n-embd", init="pytorch"),
                          train_cfg()),
    # The ladder's residual rung: blocks with residual adds but no LayerNorm.
    "rung_residual": (model_cfg(block_size=8, n_layer=3, layer_norm=False,
                                attention_scale="n-embd", init="pytorch"),
                      train_cfg()),
    # Full pre-norm blocks with ReLU, the lecture's optimizer.
    "blocks_relu": (model_cfg(), train_cfg()),
    # Full pre-norm blocks with GELU, nanoGPT's optimizer (warm-up + cosine, wd on matrices,
    # beta2 0.99, clipping at 1.0).
    "blocks_gelu": (model_cfg(activation="gelu"), train_cfg(**NANOGPT_OPT)),
    # Heads large enough (T 64, head size 32) for the engine's matrix-product attention path.
    "blocks_wide_heads": (model_cfg(block_size=64, n_embd=64, n_head=2, activation="gelu"),
                          train_cfg(batch_size=2, **NANOGPT_OPT)),
    # Beyond the lecture: every modern setting of the model (RoPE, RMSNorm, ReLU squared,
    # QK-norm, tied embeddings, no biases), trained with Muon and the wsd schedule.
    "modern_all": (model_cfg(position="rope", norm="rms", activation="relu2", qk_norm=True,
                             tie_embeddings=True, bias=False),
                   train_cfg(**MODERN_OPT)),
    # RoPE and QK-norm on heads large enough (T 64, head size 32) for the tiled attention, with
    # LayerNorm and biases, untied, GELU; Muon with weight decay and clipping.
    "modern_wide_heads": (model_cfg(block_size=64, n_embd=64, n_head=2, activation="gelu",
                                    position="rope", qk_norm=True),
                          train_cfg(batch_size=2, **dict(MODERN_OPT, grad_clip=1.0,
                                                         muon_weight_decay=0.1))),
    # LayerNorm without its shift and no linear biases, tied embeddings, learned positions;
    # AdamW with the wsd schedule (nanoGPT's decay on matrices).
    "layernorm_no_bias_tied": (model_cfg(activation="gelu", bias=False, tie_embeddings=True),
                               train_cfg(**dict(NANOGPT_OPT, lr_schedule="wsd",
                                                decay_fraction=0.3))),
}


def randomize(model, gen):
    """Weights with some spread in every tensor, so that every gradient is exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "ln_f.weight"
                    or name.endswith("norm.weight")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[1]
                std = 1.0 if name.endswith("embedding.weight") else fan_in ** -0.5
                p.copy_(std * torch.randn(p.shape, generator=gen))


def make_case(name, mcfg, tcfg, seed):
    gen = torch.Generator().manual_seed(seed)
    model = CharGPT(mcfg)
    randomize(model, gen)
    model.train()  # dropout is 0 in every case
    B, T, V = tcfg["batch_size"], mcfg["block_size"], mcfg["vocab_size"]
    idx = torch.randint(V, (B, T), generator=gen)
    tgt = torch.randint(V, (B, T), generator=gen)
    tensors = {"inputs": idx.to(torch.int32), "targets": tgt.to(torch.int32)}
    for pname, p in model.named_parameters():
        tensors["param." + pname] = p.detach().clone()
    logits, loss = model(idx, tgt)
    loss.backward()
    tensors["logits"] = logits.detach().clone()
    tensors["loss"] = loss.detach().reshape(1).clone()
    for pname, p in model.named_parameters():
        tensors["grad." + pname] = p.grad.detach().clone()

    model.zero_grad()
    optimizers = make_optimizers(model, tcfg)
    losses = []
    for step in range(tcfg["steps"]):
        for opt in optimizers:
            opt.zero_grad()
        _, loss = model(idx, tgt)
        loss.backward()
        if tcfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
        step_all(optimizers, tcfg, step)
        losses.append(loss.item())
    tensors["step_losses"] = torch.tensor(losses, dtype=torch.float32)
    meta = {"model": json.dumps(mcfg), "train": json.dumps(tcfg), "torch": torch.__version__}
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=meta)
    print(f"{name}: loss {tensors['loss'].item():.6f}, 10-step losses {losses[0]:.4f} -> {losses[-1]:.4f}, "
          f"{os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    wanted = sys.argv[1:]
    unknown = [w for w in wanted if w not in CASES]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; the cases are {list(CASES)}")
    for i, (name, (m, t)) in enumerate(CASES.items()):
        if not wanted or name in wanted:
            make_case(name, m, t, seed=1000 + i)
