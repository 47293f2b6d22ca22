"""chargpt's model in PyTorch: the reference the Rust engine is tested against, and a loader for
chargpt checkpoints.

    from chargpt_torch import load_chargpt
    model, vocab = load_chargpt("runs/default")        # a trained chargpt model, in PyTorch
    logits = model(torch.tensor([[vocab.index(c) for c in "ROMEO:"]]))

Module and parameter names match chargpt's tensor names exactly (`blocks.0.attn.qkv.weight`, ...),
so `model.load_state_dict(safetensors.torch.load_file(".../model.safetensors"))` just works (a
model with `tie_embeddings` has no `lm_head.weight`: its head reads `token_embedding.weight`).

The settings beyond the lecture (src/config.rs; absent from old configs, which mean the lecture's
model): `position` learned | rope, `norm` layer | rms, `activation` relu | gelu | relu2, `qk_norm`,
`tie_embeddings`, `bias`; and for training `lr_schedule` wsd with `decay_fraction`, and `optimizer`
adamw | muon (`muon_lr`, `muon_momentum`, `muon_weight_decay`).
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

ROPE_BASE = 10000.0
NORM_EPS = 1e-5


def rope_tables(T, hs):
    """cos and sin of position * 10000^(-2i/hs), (T, hs/2): computed in float64 with Python's
    math (the C library's, as Rust's f64 methods) and rounded to float32 once, as chargpt does."""
    cos = [[math.cos(p * ROPE_BASE ** (-(2 * i) / hs)) for i in range(hs // 2)] for p in range(T)]
    sin = [[math.sin(p * ROPE_BASE ** (-(2 * i) / hs)) for i in range(hs // 2)] for p in range(T)]
    return torch.tensor(cos, dtype=torch.float64).float(), torch.tensor(sin, dtype=torch.float64).float()


def rope(x, cos, sin):
    """Turns each (even, odd) pair of the last dimension of x (B, H, T, hs) by its angle."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    y0 = x0 * cos - x1 * sin
    y1 = x0 * sin + x1 * cos
    return torch.stack((y0, y1), dim=-1).flatten(-2)


def make_norm(cfg, C):
    """A pre-norm: LayerNorm (with or without its shift) or RMSNorm (never a shift)."""
    if cfg.get("norm", "layer") == "rms":
        return nn.RMSNorm(C, eps=NORM_EPS)
    return nn.LayerNorm(C, eps=NORM_EPS, bias=cfg.get("bias", True))


class Attention(nn.Module):
    """Causal multi-head self-attention with a fused q/k/v projection (no bias, as the lecture)."""

    def __init__(self, cfg):
        super().__init__()
        C, H = cfg["n_embd"], cfg["n_head"]
        self.n_head = H
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        hs = C // H
        if cfg.get("qk_norm", False):
            self.q_norm = nn.RMSNorm(hs, eps=NORM_EPS)
            self.k_norm = nn.RMSNorm(hs, eps=NORM_EPS)
        else:
            self.q_norm = self.k_norm = None
        bias = cfg.get("bias", True)
        self.proj = nn.Linear(C, C, bias=bias) if cfg["attention_projection"] else None
        self.rope = cfg.get("position", "learned") == "rope"
        if self.rope:
            cos, sin = rope_tables(cfg["block_size"], hs)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.scale = hs ** -0.5 if cfg["attention_scale"] == "head-size" else C ** -0.5
        self.dropout = cfg["dropout"]
        T = cfg["block_size"]
        self.register_buffer("tril", torch.tril(torch.ones(T, T)), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, H, C // H)
        k = k.view(B, T, H, C // H)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.transpose(1, 2)
        k = k.transpose(1, 2)
        v = v.view(B, T, H, C // H).transpose(1, 2)
        if self.rope:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        att = (q @ k.transpose(-2, -1)) * self.scale
        att = att.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = F.dropout(att, self.dropout, self.training)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        if self.proj is not None:
            y = F.dropout(self.proj(y), self.dropout, self.training)
        return y


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["n_embd"]
        hidden = 4 * C if cfg["feed_forward"] == "mlp" else C
        bias = cfg.get("bias", True)
        self.fc = nn.Linear(C, hidden, bias=bias)
        self.proj = nn.Linear(hidden, C, bias=bias) if cfg["feed_forward"] == "mlp" else None
        self.activation = cfg["activation"]
        self.dropout = cfg["dropout"]

    def forward(self, x):
        x = self.fc(x)
        if self.activation == "gelu":
            x = F.gelu(x, approximate="tanh")
        elif self.activation == "relu2":
            x = F.relu(x).square()
        else:
            x = F.relu(x)
        if self.proj is not None:
            x = self.proj(x)
        return F.dropout(x, self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["n_embd"]
        self.residual = cfg["residual"]
        has_ffn = cfg["feed_forward"] != "none"
        self.ln1 = make_norm(cfg, C) if cfg["layer_norm"] else None
        self.attn = Attention(cfg)
        self.ln2 = make_norm(cfg, C) if cfg["layer_norm"] and has_ffn else None
        self.ffn = FeedForward(cfg) if has_ffn else None

    def forward(self, x):
        y = self.attn(self.ln1(x) if self.ln1 is not None else x)
        x = x + y if self.residual else y
        if self.ffn is not None:
            y = self.ffn(self.ln2(x) if self.ln2 is not None else x)
            x = x + y if self.residual else y
        return x


class TiedHead(nn.Module):
    """`lm_head` with `tie_embeddings`: the token embedding's (V, C) weight, and its own bias."""

    def __init__(self, V, bias):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(V)) if bias else None

    def forward(self, x, weight):
        return F.linear(x, weight, self.bias)


class CharGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        V = cfg["vocab_size"]
        if cfg["architecture"] == "bigram":
            self.token_embedding = nn.Embedding(V, V)
            return
        C = cfg["n_embd"]
        self.token_embedding = nn.Embedding(V, C)
        if cfg.get("position", "learned") == "learned":
            self.position_embedding = nn.Embedding(cfg["block_size"], C)
        else:
            self.position_embedding = None
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg["n_layer"])])
        self.ln_f = make_norm(cfg, C) if cfg["layer_norm"] else None
        self.tied = cfg.get("tie_embeddings", False)
        if self.tied:
            self.lm_head = TiedHead(V, cfg.get("bias", True))
        else:
            self.lm_head = nn.Linear(C, V, bias=cfg.get("bias", True))

    def forward(self, idx, targets=None):
        if self.cfg["architecture"] == "bigram":
            logits = self.token_embedding(idx)
        else:
            T = idx.shape[1]
            x = self.token_embedding(idx)
            if self.position_embedding is not None:
                x = x + self.position_embedding(torch.arange(T, device=idx.device))
            for block in self.blocks:
                x = block(x)
            if self.ln_f is not None:
                x = self.ln_f(x)
            if self.tied:
                logits = self.lm_head(x, self.token_embedding.weight)
            else:
                logits = self.lm_head(x)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        return logits, loss


def lr_at(train, step):
    """chargpt's learning-rate schedule (optimizer.rs::learning_rate)."""
    if train["lr_schedule"] == "constant":
        return train["learning_rate"]
    warmup, total = train["warmup_steps"], train["steps"]
    if step < warmup:
        return train["learning_rate"] * (step + 1) / (warmup + 1)
    if train["lr_schedule"] == "wsd":
        decay = min(max(round(train.get("decay_fraction", 0.2) * total), 1), max(total - warmup, 1))
        start = total - decay
        if step < start:
            return train["learning_rate"]
        if step >= total:
            return train["min_lr"]
        ratio = (step - start) / decay
        return train["learning_rate"] + ratio * (train["min_lr"] - train["learning_rate"])
    if step > total or total <= warmup:
        return train["min_lr"]
    ratio = (step - warmup) / (total - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return train["min_lr"] + coeff * (train["learning_rate"] - train["min_lr"])


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(u, steps=5):
    """Muon's orthogonalisation in float32 (torch.optim.Muon runs it in bfloat16)."""
    a, b, c = NS_COEFFICIENTS
    transposed = u.shape[0] > u.shape[1]
    x = u.T if transposed else u
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


class Muon:
    """chargpt's Muon (optimizer.rs): Nesterov momentum, Newton-Schulz, a step of
    lr * max(1, rows/cols)^0.5, decoupled weight decay lr * wd."""

    def __init__(self, params, momentum, weight_decay):
        self.params = list(params)
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.bufs = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, lr):
        for p, buf in zip(self.params, self.bufs):
            g = p.grad
            buf.mul_(self.momentum).add_(g)
            u = g + self.momentum * buf
            x = newton_schulz(u)
            scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
            p.mul_(1 - lr * self.weight_decay)
            p.add_(x, alpha=-lr * scale)

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def hidden_matrices(model):
    """The blocks' 2-D weights (q/k/v, projection, feed-forward): what Muon updates."""
    return [(n, p) for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]


def make_optimizers(model, train):
    """The optimizers of a chargpt run: [AdamW] or [AdamW on the rest, Muon on the hidden
    matrices]. Call `step_all(optimizers, train, step)` after the backward pass."""
    if train.get("optimizer", "adamw") != "muon":
        return [make_optimizer(model, train)]
    hidden = {id(p) for _, p in hidden_matrices(model)}
    rest = [p for p in model.parameters() if id(p) not in hidden]
    adamw = make_optimizer(model, train, rest)
    muon = Muon([p for _, p in hidden_matrices(model)], train.get("muon_momentum", 0.95),
                train.get("muon_weight_decay", 0.0))
    return [adamw, muon]


def step_all(optimizers, train, step):
    """One step of every optimizer at the scheduled learning rates."""
    lr = lr_at(train, step)
    for opt in optimizers:
        if isinstance(opt, Muon):
            opt.step(train.get("muon_lr", 0.02) * lr / train["learning_rate"])
        else:
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()


def make_optimizer(model, train, params=None):
    """AdamW as chargpt configures it: decay on every tensor, or on matrices only."""
    params = list(model.parameters()) if params is None else list(params)
    if train["decay_on"] == "all":
        groups = [{"params": params, "weight_decay": train["weight_decay"]}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": train["weight_decay"]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    return torch.optim.AdamW(
        groups, lr=train["learning_rate"], betas=(train["beta1"], train["beta2"]), eps=train["eps"]
    )


def load_chargpt(directory):
    """Loads a chargpt checkpoint directory: returns (model in eval mode, vocabulary list)."""
    from safetensors.torch import load_file

    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    model = CharGPT(config["model"])
    model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
    model.eval()
    return model, config["vocab"]
