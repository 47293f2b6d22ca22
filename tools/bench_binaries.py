"""Two builds of chargpt against each other, round robin: `chargpt bench` of each preset with
binary A, then B, then A, ... so that a machine whose pace drifts (other work, clocks) shifts
both alike. Prints each round's ms/step and the ratio B/A of the medians, per preset.

    cp target/release/chargpt /tmp/chargpt-before      # the build to compare against
    ... change, cargo build --release ...
    python3 tools/bench_binaries.py /tmp/chargpt-before target/release/chargpt \
        --presets nanogpt-cpu,default,layernorm --rounds 5

`--set KEY=VALUE` and `--threads N` go to every run. Standard library only.
"""
import argparse
import json
import statistics
import subprocess
import sys


def step_ms(binary, preset, steps, extra):
    cmd = [binary, "bench", "--preset", preset, "--gen-tokens", "0", "--json"] + extra
    if steps:
        cmd += ["--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])["ms_per_step"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("a", help="the build compared against (A)")
    parser.add_argument("b", help="the build measured (B)")
    parser.add_argument("--presets", default="nanogpt-cpu,default,layernorm")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="steps per run (0: bench's default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    extra = [x for kv in args.set for x in ("--set", kv)]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    print("| preset | A ms/step (median) | B ms/step (median) | B / A | per-round B / A |")
    print("|---|---:|---:|---:|---|")
    for preset in args.presets.split(","):
        a_ms, b_ms = [], []
        for _ in range(args.rounds):
            a_ms.append(step_ms(args.a, preset, args.steps, extra))
            b_ms.append(step_ms(args.b, preset, args.steps, extra))
        ratios = ", ".join(f"{b / a:.3f}" for a, b in zip(a_ms, b_ms))
        ma, mb = statistics.median(a_ms), statistics.median(b_ms)
        print(f"| {preset} | {ma:.3f} | {mb:.3f} | {mb / ma:.3f} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
