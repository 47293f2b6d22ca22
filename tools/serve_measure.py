#!/usr/bin/env python3
"""The figures of the README's "chargpt serve" section, measured on this machine.

    python3 tools/serve_measure.py [--rounds 2] [--steps 500] [--clients 50] [--soak 60]

Standard library only; needs target/release/chargpt, and chromium + chromedriver for the
figures taken with a page open. Prints:
- the time from starting `chargpt serve` to the first page load (HTTP, and in Chromium until the
  page has drawn its runs table);
- the server's memory (VmRSS) when idle;
- nanogpt-cpu tokens/s trained by the CLI and from the page with the page open in Chromium,
  interleaved (CLI, page, CLI, page, ...), from metrics.csv (training steps only), with medians;
- the delay from a step's end to its arrival in the page (the chart redraws at most every 250 ms
  after that);
- CLIENTS event-stream clients for SOAK seconds during a nanogpt-cpu training: half stay
  connected, half reconnect every few seconds from the step they last saw; the run's tokens/s, and
  whether every client got every step and every evaluation in order.
"""

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "chargpt")
TOKEN = "measure-token"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--window-size=1280,1500"]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load():
    return os.getloadavg()[0]


class Server:
    def __init__(self, runs, threads=None):
        args = [BIN, "serve", "--port", "0", "--token", TOKEN, "--runs", runs]
        if threads:
            args += ["--threads", str(threads)]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.first_line = self.proc.stdout.readline().strip()
        self.t_line = time.monotonic()
        self.port = int(self.first_line.split(":")[3].split("/")[0])
        self.url = f"http://127.0.0.1:{self.port}/?token={TOKEN}"

    def call(self, method, path, body=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = json.dumps(body).encode() if body is not None else b""
        conn.request(method, path, body=data, headers={"Authorization": f"Bearer {TOKEN}"})
        r = conn.getresponse()
        text = r.read()
        conn.close()
        return r.status, (json.loads(text) if text and text[:1] in b"[{" else text)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def events(port, name, after=None, until=None, on_event=None):
    """Reads the SSE stream of run `name` until it ends or `until` (a monotonic time)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    path = f"/api/runs/{name}/events" + (f"?after={after}" if after is not None else "")
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    r = conn.getresponse()
    event = None
    try:
        while until is None or time.monotonic() < until:
            try:
                line = r.fp.readline()
            except socket.timeout:
                continue
            if not line:
                break
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                on_event(event, json.loads(line[6:]))
                if event in ("finished", "error", "idle"):
                    break
    finally:
        conn.close()


class Browser:
    """Chromium over ChromeDriver's WebDriver protocol."""

    def __init__(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.driver = subprocess.Popen(["chromedriver", f"--port={self.port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                if self.send("GET", "/status")["ready"]:
                    break
            except OSError:
                time.sleep(0.05)
        self.profile = tempfile.mkdtemp()
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium", "args": FLAGS + [f"--user-data-dir={self.profile}"]}}}}
        self.session = self.send("POST", "/session", caps)["sessionId"]

    def send(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request(method, path, body=json.dumps(body or {}) if method != "GET" else None,
                     headers={"Content-Type": "application/json"})
        value = json.loads(conn.getresponse().read())["value"]
        conn.close()
        return value

    def cmd(self, method, path, body=None):
        return self.send(method, f"/session/{self.session}{path}", body)

    def open(self, url):
        self.cmd("POST", "/url", {"url": url})

    def run(self, script):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": []})

    def wait(self, condition, seconds=60):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.run(f"try {{ return Boolean({condition}); }} catch (e) {{ return false; }}"):
                return
            time.sleep(0.02)
        raise TimeoutError(condition)

    def screenshot(self, path):
        with open(path, "wb") as f:
            f.write(base64.b64decode(self.cmd("GET", "/screenshot")))

    def quit(self):
        try:
            self.cmd("DELETE", "")
        finally:
            self.driver.terminate()
            self.driver.wait()


def mean_rate(run_dir):
    """Mean training tokens/s over the evaluations after step 0 (metrics.csv)."""
    rates = []
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        next(f)
        for line in f:
            step, _, _, _, rate, _ = line.strip().split(",")
            if int(step) > 0:
                rates.append(float(rate))
    return statistics.mean(rates)


def cli_run(runs, name, steps):
    subprocess.run([BIN, "train", "--preset", "nanogpt-cpu", "--set", f"steps={steps}",
                    "--out", os.path.join(runs, name)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return mean_rate(os.path.join(runs, name))


def page_run(server, browser, runs, name, steps, delays):
    """Starts a run from the API with the page open on it, and measures step arrival delays."""
    status, answer = server.call("POST", "/api/runs", {
        "name": name, "preset": "nanogpt-cpu", "settings": {"steps": steps}})
    assert status == 201, answer
    browser.run(f"window.delays = []; chargpt.on('live:step', (points) => {{"
                f" const now = Date.now(); for (const p of points) window.delays.push(now - p.at_ms); }});"
                f" chargpt.show('training'); chargpt.select({json.dumps(name)});")
    browser.wait(f"document.querySelector('#run-name').textContent === {json.dumps(name)} && "
                 "document.querySelector('#view-training').dataset.state === 'finished'", 600)
    delays.extend(browser.run("return window.delays"))
    return mean_rate(os.path.join(runs, name))


def soak(server, runs, clients, seconds, steps):
    status, answer = server.call("POST", "/api/runs", {
        "name": "soak", "preset": "nanogpt-cpu", "settings": {"steps": steps}})
    assert status == 201, answer
    end = time.monotonic() + seconds
    results = [None] * clients

    def client(i):
        got_steps, got_evals, connections = [], [], 0
        reconnecting = i % 2 == 1
        while time.monotonic() < end:
            after = got_steps[-1] if got_steps else None
            until = min(end, time.monotonic() + 3 + (i % 5)) if reconnecting else end

            def on(event, data):
                if event == "step":
                    got_steps.extend(p["step"] for p in data)
                elif event == "eval":
                    if not got_evals or data["step"] > got_evals[-1]:
                        got_evals.append(data["step"])
            connections += 1
            events(server.port, "soak", after=after, until=until, on_event=on)
        results[i] = (got_steps, got_evals, connections)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server.call("POST", "/api/runs/soak/stop")
    time.sleep(2)
    rate = mean_rate(os.path.join(runs, "soak"))
    complete = 0
    for got_steps, got_evals, _ in results:
        contiguous = got_steps == list(range(1, len(got_steps) + 1))
        if contiguous and got_evals == sorted(set(got_evals)) and got_evals[:1] == [0]:
            complete += 1
    last = max(len(r[0]) for r in results)
    least = min(len(r[0]) for r in results)
    conns = sum(r[2] for r in results)
    return rate, complete, least, last, conns


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--soak", type=float, default=60)
    p.add_argument("--screenshots", default=None, help="directory for screenshots")
    args = p.parse_args()
    runs = tempfile.mkdtemp(prefix="serve-measure-")
    print(f"load average at start: {load():.2f}")

    server = Server(runs)
    conn = http.client.HTTPConnection("127.0.0.1", server.port)
    conn.request("GET", f"/?token={TOKEN}")
    r = conn.getresponse()
    cookie = r.getheader("Set-Cookie").split(";")[0]
    r.read()
    conn.request("GET", "/", headers={"Cookie": cookie})
    conn.getresponse().read()
    t_http = time.monotonic()
    print(f"start to first line: {1000 * (server.t_line - server.t0):.1f} ms; "
          f"to the page over HTTP: {1000 * (t_http - server.t0):.1f} ms")
    server.stop()

    browser = Browser()
    server = Server(runs)
    browser.open(server.url)
    browser.wait("document.querySelector('#runs-table tbody tr')")
    t_page = time.monotonic()
    print(f"start to the page drawn in Chromium (runs table filled): {1000 * (t_page - server.t0):.0f} ms"
          " (Chromium already running)")
    time.sleep(1)
    print(f"server memory idle, page loaded: {rss_mib(server.proc.pid):.1f} MiB (VmRSS)")

    cli, page, delays = [], [], []
    for i in range(args.rounds):
        cli.append(cli_run(runs, f"cli{i}", args.steps))
        print(f"  round {i}: CLI {cli[-1]:.0f} tok/s (load {load():.2f})", flush=True)
        page.append(page_run(server, browser, runs, f"page{i}", args.steps, delays))
        print(f"  round {i}: page {page[-1]:.0f} tok/s (load {load():.2f})", flush=True)
    mc, mp = statistics.median(cli), statistics.median(page)
    print(f"nanogpt-cpu, {args.steps} steps: CLI median {mc:.0f} tok/s {sorted(round(c) for c in cli)}, "
          f"page median {mp:.0f} tok/s {sorted(round(c) for c in page)}: page/CLI = {mp / mc:.3f}")
    delays.sort()
    q = lambda f: delays[min(len(delays) - 1, int(f * len(delays)))]
    print(f"step end to its arrival in the page: median {q(0.5):.0f} ms, 90% {q(0.9):.0f} ms, "
          f"max {delays[-1]:.0f} ms over {len(delays)} steps")
    if args.screenshots:
        browser.run("chargpt.show('training'); chargpt.select('page0');")
        time.sleep(2)
        browser.screenshot(os.path.join(args.screenshots, "measure-page0.png"))
    browser.quit()

    soak_steps = int(args.soak * 1.3 / 0.025)
    rate, complete, least, last, conns = soak(server, runs, args.clients, args.soak, soak_steps)
    print(f"{args.clients} event-stream clients for {args.soak:.0f} s ({conns} connections): "
          f"training {rate:.0f} tok/s ({rate / mc:.3f} of the CLI's median); "
          f"{complete}/{args.clients} clients got every step and evaluation in order "
          f"(steps seen: {least} to {last})")
    print(f"server memory after: {rss_mib(server.proc.pid):.1f} MiB; load average {load():.2f}")
    server.stop()


if __name__ == "__main__":
    sys.exit(main())
