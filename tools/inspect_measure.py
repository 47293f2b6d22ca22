#!/usr/bin/env python3
"""How fast the inspection endpoints of `chargpt serve` answer, and whether they hold the server up.

    python3 tools/inspect_measure.py --model runs/default [--rounds 30] [--train]

Copies the checkpoint (never modifies it) into a scratch runs directory, starts `chargpt serve`
there, and for a 128-character prompt of Tiny Shakespeare asks every inspection endpoint
`--rounds` times (after one warm-up request, which loads the checkpoint): the time the server
spent (its Server-Timing header) and the time the client waited, median and 90th percentile,
and the size of the answer. Then, while inspections run back to back, how long `GET /api/runs`
takes (the server's one thread must stay free: the page never freezes). With --train, the same
while a training of the `default` preset runs in the server. Standard library only.
"""

import argparse
import functools
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "chargpt")
TOKEN = "measure-token"
print = functools.partial(print, flush=True)  # noqa: A001 (progress shows through a pipe)


def call(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    start = time.perf_counter()
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    waited = (time.perf_counter() - start) * 1000
    timing = response.getheader("server-timing") or ""
    conn.close()
    assert 200 <= response.status < 300, (path, response.status, payload[:300])
    server = float(timing.split("dur=")[1]) if "dur=" in timing else None
    return waited, server, len(payload)


def summary(values):
    values = sorted(values)
    return statistics.median(values), values[int(0.9 * (len(values) - 1))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="runs/default")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp()
    runs = os.path.join(scratch, "runs")
    shutil.copytree(args.model, os.path.join(runs, "default"),
                    ignore=shutil.ignore_patterns("train.lock"))
    server = subprocess.Popen([BIN, "serve", "--port", "0", "--token", TOKEN, "--runs", runs],
                              stdout=subprocess.PIPE, text=True)
    first = server.stdout.readline()
    match = re.match(r"chargpt serve: http://127\.0\.0\.1:(\d+)/", first)
    if not match:
        server.terminate()
        raise SystemExit(f"unexpected first line from chargpt serve: {first!r}")
    port = int(match.group(1))
    text = open(os.path.join(HERE, "..", "data", "tinyshakespeare.txt")).read()
    prompt = text[5000:5128]
    assert len(prompt) == 128
    endpoints = [
        ("next", "POST", "/api/runs/default/inspect/next", {"prompt": prompt}),
        ("attention", "POST", "/api/runs/default/inspect/attention", {"prompt": prompt}),
        ("head", "POST", "/api/runs/default/inspect/head", {"prompt": prompt, "layer": 2, "head": 1}),
        ("surprise (1 window)", "POST", "/api/runs/default/inspect/surprise", {"windows": 1}),
        ("surprise (2 windows)", "POST", "/api/runs/default/inspect/surprise", {"windows": 2}),
        ("embeddings", "GET", "/api/runs/default/inspect/embeddings", None),
        ("model", "GET", "/api/runs/default/inspect/model", None),
    ]
    try:
        first = call(port, *endpoints[0][1:])
        print(f"first request (loads the checkpoint): {first[0]:.1f} ms")
        print(f"{'endpoint':22} {'server median':>14} {'p90':>7} {'client median':>14} {'p90':>7} {'bytes':>10}")
        for name, method, path, body in endpoints:
            waits, servers, size = [], [], 0
            for _ in range(args.rounds):
                waited, spent, size = call(port, method, path, body)
                waits.append(waited)
                if spent is not None:
                    servers.append(spent)
            s = summary(servers) if servers else (float("nan"), float("nan"))
            c = summary(waits)
            print(f"{name:22} {s[0]:11.1f} ms {s[1]:5.1f} {c[0]:11.1f} ms {c[1]:5.1f} {size:10,}")

        def busy(stop):
            while not stop.is_set():
                call(port, *endpoints[1][1:])

        def listing_under_load(label):
            stop = threading.Event()
            worker = threading.Thread(target=busy, args=(stop,))
            worker.start()
            time.sleep(0.2)
            waits = [call(port, "GET", "/api/runs")[0] for _ in range(args.rounds)]
            stop.set()
            worker.join()
            m, p = summary(waits)
            print(f"GET /api/runs {label}: median {m:.1f} ms, p90 {p:.1f} ms")

        idle = [call(port, "GET", "/api/runs")[0] for _ in range(args.rounds)]
        m, p = summary(idle)
        print(f"GET /api/runs alone: median {m:.1f} ms, p90 {p:.1f} ms")
        listing_under_load("while attention requests run back to back")
        if args.train:
            started = call(port, "POST", "/api/runs", {"name": "busy", "preset": "default",
                                                      "settings": {"steps": 100000}})
            time.sleep(5)
            listing_under_load("during a training, with attention requests back to back")
            for name, method, path, body in endpoints[:3]:
                waits = [call(port, method, path, body)[1] for _ in range(args.rounds)]
                m, p = summary(waits)
                print(f"{name} during the training: server median {m:.1f} ms, p90 {p:.1f} ms")
            call(port, "POST", "/api/runs/busy/stop", {})
            del started
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
