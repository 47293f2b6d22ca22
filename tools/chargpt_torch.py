"""chargpt's model in PyTorch: the reference the Rust engine is tested against, and a loader for
chargpt checkpoints.

    from chargpt_torch import load_chargpt
    model, vocab = load_chargpt("runs/default")        # a trained chargpt model, in PyTorch
    logits = model(torch.tensor([[vocab.index(c) for c in "ROMEO:"]]))

Module and parameter names match chargpt's tensor names exactly (`blocks.0.attn.qkv.weight`, ...),
so `model.load_state_dict(safetensors.torch.load_file(".../model.safetensors"))` just works.
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Causal multi-head self-attention with a fused q/k/v projection (no bias, as the lecture)."""

    def __init__(self, cfg):
        super().__init__()
        C, H = cfg["n_embd"], cfg["n_head"]
        self.n_head = H
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C) if cfg["attention_projection"] else None
        hs = C // H
        self.scale = hs ** -0.5 if cfg["attention_scale"] == "head-size" else C ** -0.5
        self.dropout = cfg["dropout"]
        T = cfg["block_size"]
        self.register_buffer("tril", torch.tril(torch.ones(T, T)), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, H, C // H).transpose(1, 2)
        k = k.view(B, T, H, C // H).transpose(1, 2)
        v = v.view(B, T, H, C // H).transpose(1, 2)
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
        self.fc = nn.Linear(C, hidden)
        self.proj = nn.Linear(hidden, C) if cfg["feed_forward"] == "mlp" else None
        self.gelu = cfg["activation"] == "gelu"
        self.dropout = cfg["dropout"]

    def forward(self, x):
        x = self.fc(x)
        x = F.gelu(x, approximate="tanh") if self.gelu else F.relu(x)
        if self.proj is not None:
            x = self.proj(x)
        return F.dropout(x, self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["n_embd"]
        self.residual = cfg["residual"]
        has_ffn = cfg["feed_forward"] != "none"
        self.ln1 = nn.LayerNorm(C) if cfg["layer_norm"] else None
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(C) if cfg["layer_norm"] and has_ffn else None
        self.ffn = FeedForward(cfg) if has_ffn else None

    def forward(self, x):
        y = self.attn(self.ln1(x) if self.ln1 is not None else x)
        x = x + y if self.residual else y
        if self.ffn is not None:
            y = self.ffn(self.ln2(x) if self.ln2 is not None else x)
            x = x + y if self.residual else y
        return x


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
        self.position_embedding = nn.Embedding(cfg["block_size"], C)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg["n_layer"])])
        self.ln_f = nn.LayerNorm(C) if cfg["layer_norm"] else None
        self.lm_head = nn.Linear(C, V)

    def forward(self, idx, targets=None):
        if self.cfg["architecture"] == "bigram":
            logits = self.token_embedding(idx)
        else:
            T = idx.shape[1]
            x = self.token_embedding(idx) + self.position_embedding(torch.arange(T, device=idx.device))
            for block in self.blocks:
                x = block(x)
            if self.ln_f is not None:
                x = self.ln_f(x)
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
    if step > total or total <= warmup:
        return train["min_lr"]
    ratio = (step - warmup) / (total - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return train["min_lr"] + coeff * (train["learning_rate"] - train["min_lr"])


def make_optimizer(model, train):
    """AdamW as chargpt configures it: decay on every tensor, or on matrices only."""
    params = list(model.parameters())
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
