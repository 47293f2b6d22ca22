"""Runs `chargpt bench` and the PyTorch counterparts (tools/bench_pytorch.py) on the same
workloads, one after the other on the same machine with the same thread count, and prints the
ratios as a Markdown table.

    cargo build --release
    python3 tools/bench_compare.py [--threads 2] [--repeats 3] [--workloads lecture,nanogpt-cpu,...]
    python3 tools/bench_compare.py --bf16 [--repeats 3]   # the bf16 table (needs AVX512_BF16)

Each number is the median of `--repeats` runs (each run itself reports a median step time).
Peak RSS is each process's maximum resident set size. PyTorch stays out of CI: this script is
run by hand.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHARGPT = os.path.join(ROOT, "target", "release", "chargpt")
TARGETS = {"lecture": 1.4, "nanogpt-cpu": 1.6, "layernorm": 6.0, "bigram": 10.0}


def run(cmd):
    """Runs cmd, returns (parsed JSON of its last stdout line, peak RSS in MB)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    # ru_maxrss of the finished child alone: wait4 is not available after communicate, so each
    # tool reports its own peak RSS in its JSON.
    return json.loads(out.strip().splitlines()[-1])


def median_of(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


# The bf16 comparison: (label, workload, dropout override or None, chargpt's target vs PyTorch's
# bf16 autocast, or None where the target is bf16 at least as fast as chargpt's fp32).
BF16_CASES = [
    ("lecture, dropout 0", "lecture", 0.0, 1.5),
    ("lecture, dropout 0.2", "lecture", None, 1.5),
    ("nanogpt-cpu", "nanogpt-cpu", None, None),
    ("default", "default", None, None),
]


def bf16_table(args):
    """chargpt fp32 and bf16 against PyTorch (fused attention) fp32 and bf16 autocast, round robin."""
    rows = []
    cases = [c for c in BF16_CASES if args.workloads is None or c[1] in args.workloads.split(",")]
    for label, w, dropout, target in cases:
        chargpt = [CHARGPT, "--threads", str(args.threads), "bench", "--preset", w, "--json", "--gen-tokens", "0"]
        torch = [sys.executable, os.path.join(HERE, "bench_pytorch.py"), "--workload", w, "--model", "fused",
                 "--threads", str(args.threads), "--json"]
        if dropout is not None:
            chargpt += ["--set", f"dropout={dropout}"]
            torch += ["--dropout", str(dropout)]
        cmds = [
            ("chargpt fp32", chargpt),
            ("chargpt bf16", chargpt + ["--set", "precision=bf16"]),
            ("torch fp32", torch),
            ("torch bf16", torch + ["--precision", "bf16"]),
        ]
        runs = {name: [] for name, _ in cmds}
        for _ in range(args.repeats):
            for name, cmd in cmds:
                runs[name].append(run(cmd))
                print(f"{label} {name}: {runs[name][-1]['ms_per_step']:.3f} ms/step", file=sys.stderr)
        results = {name: {k: median_of(r, k) for k in
                          ("ms_per_step", "tokens_per_s", "gflops", "percent_of_peak", "peak_rss_mb")}
                   for name, r in runs.items()}
        rows.append((label, target, results))
    print("| workload | chargpt fp32 | chargpt bf16 | PyTorch fp32 | PyTorch bf16 autocast | "
          "bf16 vs PyTorch bf16 | bf16 vs fp32 | target |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, target, r in rows:
        c32, c16, t32, t16 = (r[k] for k in ("chargpt fp32", "chargpt bf16", "torch fp32", "torch bf16"))
        want = f">= {target}x PyTorch bf16" if target else "bf16 >= fp32"
        print(f"| {label} | {c32['ms_per_step']:.1f} ms | {c16['ms_per_step']:.1f} ms "
              f"({c16['gflops']:.0f} GFLOP/s, {c16['percent_of_peak']:.0f}% of the bf16 peak) | "
              f"{t32['ms_per_step']:.1f} ms | {t16['ms_per_step']:.1f} ms | "
              f"{t16['ms_per_step'] / c16['ms_per_step']:.2f}x | {c32['ms_per_step'] / c16['ms_per_step']:.2f}x | {want} |")
    for label, _, r in rows:
        if label.startswith("lecture"):
            print(f"peak RSS, {label}: chargpt fp32 {r['chargpt fp32']['peak_rss_mb']:.0f} MB, "
                  f"bf16 {r['chargpt bf16']['peak_rss_mb']:.0f} MB, PyTorch bf16 {r['torch bf16']['peak_rss_mb']:.0f} MB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workloads", default=None,
                    help="comma-separated [default: lecture,nanogpt-cpu,layernorm,bigram; with --bf16 its four cases]")
    ap.add_argument("--bf16", action="store_true", help="the bf16 table instead (chargpt and PyTorch, fp32 and bf16)")
    args = ap.parse_args()
    if args.bf16:
        return bf16_table(args)
    rows = []
    for w in (args.workloads or "lecture,nanogpt-cpu,layernorm,bigram").split(","):
        cmds = [
            ("chargpt", [CHARGPT, "--threads", str(args.threads), "bench", "--preset", w, "--json"]),
            ("gptpy", [sys.executable, os.path.join(HERE, "bench_pytorch.py"), "--workload", w,
                       "--model", "gptpy", "--threads", str(args.threads), "--json"]
             + (["--generate", "20"] if w == "lecture" else [])),
            ("fused", [sys.executable, os.path.join(HERE, "bench_pytorch.py"), "--workload", w,
                       "--model", "fused", "--threads", str(args.threads), "--json"]
             + (["--generate", "20"] if w == "lecture" else [])),
        ]
        if w == "bigram":
            cmds = cmds[:2]  # the bigram has no attention to fuse
        # Round robin (chargpt, gpt.py, fused, chargpt, ...) rather than all runs of one program
        # and then the next: a shared machine's speed drifts over minutes, and interleaving
        # spreads that drift over all three instead of biasing the ratio.
        runs = {name: [] for name, _ in cmds}
        for _ in range(args.repeats):
            for name, cmd in cmds:
                runs[name].append(run(cmd))
                print(f"{w} {name}: {runs[name][-1]['ms_per_step']:.3f} ms/step", file=sys.stderr)
        results = {name: {k: median_of(r, k) for k in
                          ("ms_per_step", "tokens_per_s", "gflops", "gen_tokens_per_s", "peak_rss_mb")}
                   for name, r in runs.items()}
        rows.append((w, results))

    print(f"| workload | chargpt ms/step | gpt.py ms/step | fused ms/step | tokens/s vs fastest PyTorch | target |")
    print("|---|---|---|---|---|---|")
    for w, r in rows:
        base = min((r[k]["ms_per_step"] for k in ("gptpy", "fused") if k in r))
        ratio = base / r["chargpt"]["ms_per_step"]
        fused = r.get("fused", {}).get("ms_per_step")
        print(f"| {w} | {r['chargpt']['ms_per_step']:.3f} ({r['chargpt']['gflops']:.0f} GFLOP/s) | "
              f"{r['gptpy']['ms_per_step']:.3f} | {fused if fused is None else f'{fused:.3f}'} | "
              f"{ratio:.2f}x | >= {TARGETS.get(w, 0)}x |")
    for w, r in rows:
        if w == "lecture":
            c, g, f = r["chargpt"], r["gptpy"], r["fused"]
            print(f"\ngeneration (10.8M, full context): chargpt {c['gen_tokens_per_s']:.0f} tok/s, "
                  f"gpt.py {g['gen_tokens_per_s']:.1f}, fused {f['gen_tokens_per_s']:.1f} "
                  f"-> {c['gen_tokens_per_s'] / max(g['gen_tokens_per_s'], f['gen_tokens_per_s']):.1f}x (target >= 10x)")
            print(f"peak RSS training the 10.8M model: chargpt {c['peak_rss_mb']:.0f} MB, gpt.py "
                  f"{g['peak_rss_mb']:.0f} MB, fused {f['peak_rss_mb']:.0f} MB -> "
                  f"{c['peak_rss_mb'] / g['peak_rss_mb']:.2f}x / {c['peak_rss_mb'] / f['peak_rss_mb']:.2f}x (target <= 0.5x)")


if __name__ == "__main__":
    main()
