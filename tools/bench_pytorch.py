"""The PyTorch counterpart of `chargpt bench`: the same workloads in eager PyTorch on the CPU,
timed the same way (median ms per training step after warm-up; forward, backward, AdamW).

Two PyTorch models per workload:
  gptpy  - the lecture's gpt.py: a module per attention head (key/query/value Linear, tril mask,
           masked_fill, softmax, dropout), concatenated, projected; the reference the issues quote.
  fused  - one q/k/v product and F.scaled_dot_product_attention, as nanoGPT does: faster.

    python3 tools/bench_pytorch.py --workload nanogpt-cpu --model fused --threads 2 --json
    python3 tools/bench_pytorch.py --workload lecture --precision bf16 --dropout 0 --json
    python3 tools/bench_compare.py          # runs chargpt and both PyTorch models, prints ratios

`--precision bf16` is PyTorch's CPU mixed precision as its documentation prescribes:
`torch.autocast("cpu", dtype=torch.bfloat16)` around the forward pass and the loss (linear layers,
matmuls and scaled-dot-product attention run in bf16 through oneDNN; parameters, gradients and
AdamW state stay fp32), backward and the optimizer step outside it.

Each run prints one JSON object: ms_per_step, tokens_per_s, gflops (same formula as chargpt:
6 * params * tokens + 12 * n_layer * n_embd * block_size * tokens per step), gen_tokens_per_s
(with --generate), peak_rss_mb (this process's peak resident memory), params, threads.
"""
import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

WORKLOADS = {
    # name: (n_embd, n_head, n_layer, block_size, batch, dropout, activation, lr)
    "bigram": (None, None, None, 8, 32, 0.0, None, 1e-2),
    "layernorm": (32, 4, 3, 8, 32, 0.0, "relu", 1e-3),
    "nanogpt-cpu": (128, 4, 4, 64, 12, 0.0, "gelu", 1e-3),
    "lecture": (384, 6, 6, 256, 64, 0.2, "relu", 3e-4),
    "default": (192, 6, 4, 128, 16, 0.0, "gelu", 2e-3),
}
VOCAB = 65


class Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        self.token_embedding_table = nn.Embedding(VOCAB, VOCAB)

    def forward(self, idx, targets):
        logits = self.token_embedding_table(idx)
        return logits, F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


# ---- the lecture's gpt.py, verbatim in structure ----
class Head(nn.Module):
    def __init__(self, n_embd, head_size, block_size, dropout):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        k = self.key(x)
        q = self.query(x)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        wei = F.softmax(wei, dim=-1)
        wei = self.dropout(wei)
        v = self.value(x)
        return wei @ v


class MultiHeadAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout):
        super().__init__()
        hs = n_embd // n_head
        self.heads = nn.ModuleList([Head(n_embd, hs, block_size, dropout) for _ in range(n_head)])
        self.proj = nn.Linear(hs * n_head, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        out = torch.cat([h(x) for h in self.heads], dim=-1)
        return self.dropout(self.proj(out))


# ---- fused attention, as nanoGPT ----
class FusedAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd)
        self.p = dropout
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0, is_causal=True)
        return self.dropout(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class FeedForward(nn.Module):
    def __init__(self, n_embd, dropout, act):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(approximate="tanh") if act == "gelu" else nn.ReLU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout, act, fused):
        super().__init__()
        attn = FusedAttention if fused else MultiHeadAttention
        self.sa = attn(n_embd, n_head, block_size, dropout)
        self.ffwd = FeedForward(n_embd, dropout, act)
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, n_embd, n_head, n_layer, block_size, dropout, act, fused):
        super().__init__()
        self.block_size = block_size
        self.token_embedding_table = nn.Embedding(VOCAB, n_embd)
        self.position_embedding_table = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, block_size, dropout, act, fused) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, VOCAB)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.token_embedding_table(idx) + self.position_embedding_table(torch.arange(T))
        logits = self.lm_head(self.ln_f(self.blocks(x)))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(B * T, VOCAB), targets.view(B * T))

    @torch.no_grad()
    def generate(self, idx, n):
        """gpt.py's generate: crop to block_size and recompute the whole context per token."""
        for _ in range(n):
            logits, _ = self(idx[:, -self.block_size:])
            probs = F.softmax(logits[:, -1, :], dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
        return idx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=WORKLOADS, default="nanogpt-cpu")
    ap.add_argument("--model", choices=["gptpy", "fused"], default="fused")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: by workload)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--generate", type=int, default=0, help="also time this many generated tokens at full context")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: torch.autocast('cpu', dtype=torch.bfloat16) around forward + loss")
    ap.add_argument("--dropout", type=float, default=None, help="override the workload's dropout")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1337)
    n_embd, n_head, n_layer, T, B, dropout, act, lr = WORKLOADS[args.workload]
    if args.dropout is not None:
        dropout = args.dropout
    if n_embd is None:
        model = Bigram()
        cfg = dict(n_layer=0, n_embd=0)
    else:
        model = GPT(n_embd, n_head, n_layer, T, dropout, act, args.model == "fused")
        cfg = dict(n_layer=n_layer, n_embd=n_embd)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    default_steps = {"lecture": 3, "nanogpt-cpu": 30, "default": 20, "layernorm": 300, "bigram": 1000}[args.workload]
    steps = args.steps or default_steps
    warmup = args.warmup if args.warmup is not None else max(1, steps // 10)
    data = torch.randint(VOCAB, (100_000,))

    def batch():
        ix = torch.randint(len(data) - T, (B,))
        return torch.stack([data[i:i + T] for i in ix]), torch.stack([data[i + 1:i + T + 1] for i in ix])

    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    per_step = statistics.median(times)
    tokens = B * T
    flops = 6 * params * tokens + 12 * cfg["n_layer"] * cfg["n_embd"] * T * tokens
    out = dict(
        workload=args.workload,
        model=args.model,
        precision=args.precision,
        dropout=dropout,
        threads=args.threads,
        params=params,
        ms_per_step=per_step * 1e3,
        tokens_per_s=tokens / per_step,
        gflops=flops / per_step / 1e9,
        torch=torch.__version__,
    )
    if args.generate and n_embd is not None:
        model.eval()
        ctx = torch.randint(VOCAB, (1, T))
        model.generate(ctx, 2)
        t0 = time.perf_counter()
        model.generate(ctx, args.generate)
        out["gen_tokens_per_s"] = args.generate / (time.perf_counter() - t0)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    sys.exit(main())
