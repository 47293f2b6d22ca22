// Tokens per second of training in the browser tab against native chargpt, round robin in one
// run: native `chargpt bench` (2 threads), then the static site in headless Chromium with 2
// workers and with 1, each training the same preset's shape. With --time-to-quality it also
// trains `layernorm` and `nanogpt-cpu` in the tab for their goals (val <= 2.10 in under 60 s;
// <= 1.90 in under 5 minutes) and reports the exact val each reached.
//
//   bash web/build.sh && cargo build --release
//   node tools/bench_tab.mjs [--preset nanogpt-cpu] [--rounds 2] [--steps 30] [--time-to-quality]
//
// Needs Debian's chromium and playwright-core (installed here into target/bench-node when
// missing: `npm install --prefix target/bench-node playwright-core`). Prints a table; the peer
// (TensorFlow.js, tools/bench_tfjs.mjs) runs separately.
import { createServer } from 'node:http';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { extname, join, resolve } from 'node:path';
import { cpus } from 'node:os';

const root = resolve(new URL('..', import.meta.url).pathname);
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const preset = option('preset', 'nanogpt-cpu');
const rounds = Number(option('rounds', 2));
const steps = Number(option('steps', 30));
const quality = args.includes('--time-to-quality');

const nodeDir = join(root, 'target/bench-node');
if (!existsSync(join(nodeDir, 'node_modules/playwright-core'))) {
  execFileSync('npm', ['install', '--prefix', nodeDir, '--no-audit', '--no-fund', 'playwright-core'],
    { stdio: 'inherit' });
}
const { chromium } = createRequire(join(nodeDir, 'package.json'))('playwright-core');

// The site, as any static host serves it.
const dist = join(root, 'web/dist');
const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css',
  '.wasm': 'application/wasm' };
const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  const file = join(dist, path.endsWith('/') ? `${path}index.html` : path);
  if (!file.startsWith(dist) || !existsSync(file)) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'Content-Type': types[extname(file)] ?? 'text/plain' });
  res.end(readFileSync(file));
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const site = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
});

function native() {
  const out = execFileSync(join(root, 'target/release/chargpt'), ['bench', '--preset', preset,
    '--threads', '2', '--steps', String(steps), '--gen-tokens', '0'], { encoding: 'utf8' });
  return Number(/ms\/step[^,]*, (\d+) tokens\/s/.exec(out)[1]);
}

// Trains `preset` in a fresh tab with `workers` workers and returns the median tokens/s of the
// steps after the first few (the page's own figure, per step).
async function tab(workers) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${site}?workers=${workers}`);
  await page.waitForFunction(() => window.chargpt?.api);
  const got = await page.evaluate(async ({ preset, steps }) => {
    const api = window.chargpt.api;
    const name = `bench${Date.now()}`;
    await api.startRun({ name, preset, settings: { steps: 100000, eval_interval: 100000 } });
    const settings = (await api.presets()).presets.find((p) => p.name === preset).settings;
    const tokens = settings.batch_size * settings.block_size;
    const points = [];
    let memory = null;
    let stopped = false;
    await new Promise((done) => {
      api.follow(name, null, (type, data) => {
        if (type === 'step') {
          for (const p of data) points.push(p);
          if (points.length >= steps + 3 && !stopped) {
            stopped = true;
            memory = api.training(name)?.memory;
            api.stopRun(name).catch(() => {});
          }
        }
        if (type === 'finished' || type === 'error') done();
      });
    });
    // The steps after 3 warm-up steps, by when each ended.
    const timed = points.slice(3, steps + 3);
    const ms = timed[timed.length - 1].at_ms - points[2].at_ms;
    return { rate: tokens * timed.length / (ms / 1000), memory };
  }, { preset, steps });
  await context.close();
  return got;
}

const results = { native: [], tab2: [], tab1: [] };
let memory = 0;
for (let r = 0; r < rounds; r++) {
  results.native.push(native());
  const two = await tab(2);
  results.tab2.push(two.rate);
  memory = Math.max(memory, two.memory ?? 0);
  results.tab1.push((await tab(1)).rate);
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const cpu = cpus()[0]?.model ?? 'unknown CPU';
console.log(`\n${preset}, tokens/s of training, ${rounds} rounds round robin on ${cpu} (${cpus().length} cores), Chromium headless`);
const nat = median(results.native);
for (const [what, xs] of Object.entries(results)) {
  const m = median(xs);
  console.log(`${what.padEnd(7)} ${xs.map((x) => Math.round(x)).join(' / ').padEnd(24)} median ${Math.round(m)}  (${(m / nat).toFixed(2)} of native)`);
}
console.log(`per core: tab 1 worker / native 2 threads per core = ${(median(results.tab1) / (nat / 2)).toFixed(2)}`);
console.log(`the leader worker's WebAssembly memory: ${(memory / 2 ** 20).toFixed(0)} MiB`);

// Time to quality in the tab: each preset's whole run (its exact val at the end).
if (quality) {
  for (const [name, goal, limit] of [['layernorm', 2.10, 60], ['nanogpt-cpu', 1.90, 300]]) {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${site}?workers=2`);
    await page.waitForFunction(() => window.chargpt?.api);
    const got = await page.evaluate(async (preset) => {
      const api = window.chargpt.api;
      const started = performance.now();
      await api.startRun({ name: preset, preset, settings: {} });
      let finished = null;
      await new Promise((done) => api.follow(preset, null, (type, data) => {
        if (type === 'finished') finished = data;
        if (type === 'finished' || type === 'error') done();
      }));
      return { seconds: (performance.now() - started) / 1000, finished };
    }, name);
    const val = got.finished?.final_val_loss;
    console.log(`${name}: exact val ${val?.toFixed(4)} in ${got.seconds.toFixed(1)} s in the tab (goal <= ${goal} in under ${limit} s: ${val <= goal && got.seconds < limit ? 'met' : 'missed'})`);
    await context.close();
  }
}
await browser.close();
server.close();
