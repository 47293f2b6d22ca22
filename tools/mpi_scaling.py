#!/usr/bin/env python3
"""Training speed across processes against threads: `chargpt train` in one process with 2 threads
against `mpirun -np 2` with 1 thread per rank (over TCP), and optionally with the two ranks in two
network namespaces joined by a veth pair through a bridge (the traffic crosses a real link).

Runs the variants round robin (A, B, C, A, B, C, ...) and prints the median tokens/s of the
training steps (from the median step of steps.csv's clock: evaluations excluded) and the median time of the
gradient sum per step on the rank that waited least, with the 1-minute load before each round.

    cargo build --release --features mpi
    python3 tools/mpi_scaling.py --presets nanogpt-cpu default lecture --rounds 3
    sudo python3 tools/mpi_scaling.py --netns ...     # also the veth variant (needs root)

The step counts per preset are chosen to take a few seconds to half a minute of training each.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

STEPS = {"nanogpt-cpu": 100, "default": 30, "layernorm": 400, "lecture": 4}
BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "chargpt")
NS = ("cgmpi0", "cgmpi1")
NET = "10.77.0"


def mpirun(extra):
    return ["mpirun", "-np", "2", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
            "--mca", "btl", "tcp,self"] + extra


# The first 150,000 characters of Tiny Shakespeare: the val split's exact loss at the end of each
# run (not part of the timed steps) then takes seconds rather than a minute on `lecture`.
TEXT = os.path.join(tempfile.gettempdir(), "mpi-scaling-text.txt")


def train_args(preset, steps, out):
    return ["train", "--preset", preset, "--set", f"steps={steps}", "--set", "eval_iters=1",
            "--data", TEXT, "--out", out]


def setup_netns():
    """Two namespaces, each with a veth into a bridge in this one (mpirun's PMIx server is
    reached through the bridge; rank-to-rank bytes cross veth -> bridge -> veth)."""
    teardown_netns()
    sh = lambda *a: subprocess.run(a, check=True)
    sh("ip", "link", "add", "cgmpibr", "type", "bridge")
    sh("ip", "addr", "add", f"{NET}.254/24", "dev", "cgmpibr")
    sh("ip", "link", "set", "cgmpibr", "up")
    for i, ns in enumerate(NS):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"cgmpiv{i}", "type", "veth", "peer", "name", f"cgmpih{i}")
        sh("ip", "link", "set", f"cgmpiv{i}", "netns", ns)
        sh("ip", "link", "set", f"cgmpih{i}", "master", "cgmpibr")
        sh("ip", "link", "set", f"cgmpih{i}", "up")
        sh("ip", "-n", ns, "addr", "add", f"{NET}.{i + 1}/24", "dev", f"cgmpiv{i}")
        sh("ip", "-n", ns, "link", "set", f"cgmpiv{i}", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def teardown_netns():
    for ns in NS:
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "link", "del", "cgmpibr"], stderr=subprocess.DEVNULL)


def command(variant, preset, steps, out):
    args = train_args(preset, steps, out)
    if variant == "1 process x 2 threads":
        return [BIN, "--threads", "2"] + args
    if variant == "2 ranks x 1 thread":
        return mpirun([BIN, "--threads", "1"] + args)
    # Two namespaces: MPMD syntax, one rank in each.
    os.environ["PMIX_MCA_ptl_tcp_remote_connections"] = "1"
    os.environ["PMIX_MCA_ptl_tcp_if_include"] = f"{NET}.0/24"
    base = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
            "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", f"{NET}.0/24",
            "--mca", "oob_tcp_if_include", f"{NET}.0/24"]
    rank = lambda ns: ["-np", "1", "ip", "netns", "exec", ns, BIN, "--threads", "1"] + args
    return base + rank(NS[0]) + [":"] + rank(NS[1])


def run_once(variant, preset, steps):
    out = tempfile.mkdtemp(prefix="mpi-scaling-")
    try:
        p = subprocess.run(command(variant, preset, steps, os.path.join(out, "run")),
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{variant} {preset} failed:\n{p.stderr[-3000:]}")
        # The median step from steps.csv's clock (evaluations fall between two steps and are
        # left out by the median).
        run = os.path.join(out, "run")
        with open(os.path.join(run, "steps.csv")) as f:
            elapsed = [float(line.split(",")[-1]) for line in f.read().splitlines()[1:]]
        with open(os.path.join(run, "config.json")) as f:
            config = json.load(f)
        tokens = config["train"]["batch_size"] * config["model"]["block_size"]
        step_s = statistics.median(b - a for a, b in zip(elapsed, elapsed[1:]))
        tokens_per_s = tokens / step_s
        sums = re.search(r"gradient sum across ranks: ([\d., ]+) ms per step", p.stdout)
        least = min(float(x) for x in sums.group(1).split(",")) if sums else None
        return tokens_per_s, least
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["nanogpt-cpu", "default", "lecture"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--netns", action="store_true", help="also the two-namespace veth variant")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "data", "tinyshakespeare.txt"), encoding="utf-8") as f:
        text = f.read()[:150_000]
    with open(TEXT, "w", encoding="utf-8") as f:
        f.write(text)
    variants = ["1 process x 2 threads", "2 ranks x 1 thread"]
    if args.netns:
        setup_netns()
        variants.append("2 ranks x 1 thread, veth")
    try:
        print("| preset | variant | tokens/s (median) | vs threads | gradient sum, ms/step | loads |")
        print("|---|---|---:|---:|---:|---|")
        for preset in args.presets:
            steps = STEPS.get(preset, 50)
            got = {v: [] for v in variants}
            loads = []
            for _ in range(args.rounds):
                loads.append(os.getloadavg()[0])
                for v in variants:
                    got[v].append(run_once(v, preset, steps))
            base = statistics.median(r for r, _ in got[variants[0]])
            for v in variants:
                rate = statistics.median(r for r, _ in got[v])
                sums = [s for _, s in got[v] if s is not None]
                s = f"{statistics.median(sums):.1f}" if sums else "-"
                print(f"| {preset} ({steps} steps) | {v} | {rate:,.0f} | {rate / base:.1%} | {s} | "
                      + ", ".join(f"{l:.2f}" for l in loads) + " |", flush=True)
    finally:
        if args.netns:
            teardown_netns()


if __name__ == "__main__":
    main()
