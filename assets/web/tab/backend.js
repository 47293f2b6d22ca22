// The tab back end: the page's API (the same functions and answers as server.js) with the
// engine compiled to WebAssembly, so the static site (`bash web/build.sh`) needs no server.
//
// - Runs live in IndexedDB (store.js): a run's last checkpoint as the files' bytes, and its
//   records (metrics.csv, steps.csv, samples.txt, probes.jsonl) as text.
// - A training runs in a leader worker (leader.js) with a helper worker per further shard of
//   the batch (helper.js); its reports arrive here in order: the records are stored first, then
//   its events reach the page, as `chargpt serve` streams them.
// - Looking inside and sampling run in one inspector worker (inspector.js), on a run's saved
//   checkpoint, or on a training's parameters at its last evaluation.
// Every check and every answer's JSON comes from the library (web/src/lib.rs over
// chargpt::page), so a refusal reads as the server's.

import init, * as wasm from '../pkg/chargpt_web.js';
import { ApiError } from '../api-error.js';
import * as store from './store.js';
import { zip } from './zip.js';

await init();

// ?workers=N caps the workers (N = 1 trains on the leader alone); ?shards=M splits each batch
// into M shards whatever the workers (the tests compare 1 worker with 2 shards to 2 workers).
const query = new URLSearchParams(location.search);
const cores = Math.max(1, navigator.hardwareConcurrency || 1);
const workerCap = Math.max(1, Number(query.get('workers')) || cores);
const shardOverride = Number(query.get('shards')) || null;

export const backend = {
  kind: 'tab',
  label: `this tab (WebAssembly${wasm.simd128() ? ', SIMD128' : ''})`,
  simd128: wasm.simd128(),
  cores,
  workers: workerCap,
  memoryBytes: () => wasm.memoryBytes(),
};

// A thrown refusal from the library is JSON {error, field, status}.
function refusal(thrown) {
  if (thrown instanceof ApiError) return thrown;
  const text = typeof thrown === 'string' ? thrown : (thrown?.message ?? String(thrown));
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string') {
      return new ApiError(body.error, body.field ?? null, body.status ?? 400);
    }
  } catch {
    // not a refusal: an engine failure
  }
  return new ApiError(text, null, 500);
}

function call(fn) {
  try {
    return fn();
  } catch (e) {
    throw refusal(e);
  }
}

const refused = (kind, name) => refusal(wasm.refused(kind, name));

// ---- runs in training ----

// name -> { worker, log: [[type, data]], listeners: Set, snapshot, chain, steps, lastStep }
const live = new Map();
// name -> a number that changes whenever the parameters the inspector should see change.
const versions = new Map();
const bump = (name) => versions.set(name, (versions.get(name) ?? 0) + 1);

const textOf = async (run) => {
  if (run?.text?.kind !== 'upload') return { text: undefined, textName: undefined };
  const upload = await store.getUpload(run.text.id);
  if (!upload) return { text: undefined, textName: undefined };
  return { text: upload.text, textName: upload.filename };
};

// Applies one report of the leader: records into the store, then events to the page.
async function take(name, entry, report) {
  await store.updateRun(name, (run) => {
    if (report.samples) run.samples += report.samples;
    if (report.probes) run.probes += report.probes;
    if (report.saved) {
      run.files = { model: report.saved.model, config: report.saved.config,
        optimizer: report.saved.optimizer };
      run.metrics = report.saved.metrics;
      run.steps = report.saved.steps;
    }
  });
  if (report.memory) entry.memory = report.memory;
  if (report.saved) bump(name);
  if (report.snapshot) {
    entry.snapshot = report.snapshot;
    bump(name);
  }
  const events = report.events ?? [];
  const ends = events.some(([type]) => type === 'finished' || type === 'error');
  if (ends) {
    // Before the page hears `finished`: the run is no longer training when it asks.
    live.delete(name);
    bump(name);
  }
  for (const [type, data] of events) {
    if (type === 'step') entry.lastStep = data[data.length - 1].step;
    entry.log.push([type, data]);
    for (const on of [...entry.listeners]) on(type, data);
  }
  if (ends) entry.listeners.clear();
}

// Starts the leader worker on `args` and answers as `POST /api/runs` does once it is
// prepared (or refused).
function train(name, how, args, onStarted) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./leader.js', import.meta.url), { type: 'module' });
    const entry = { worker, log: [], listeners: new Set(), snapshot: null,
      chain: Promise.resolve(), lastStep: null, workers: 1, shards: 1 };
    live.set(name, entry);
    let started = false;
    const fail = (error) => {
      entry.chain = entry.chain.then(() => take(name, entry,
        { events: [['error', { error }]] }));
      worker.terminate();
    };
    worker.onmessage = (e) => {
      const m = e.data;
      if (m.op === 'started') {
        started = true;
        entry.workers = m.workers;
        entry.shards = m.shards;
        entry.chain = entry.chain.then(() => onStarted()).then(() => resolve(m.answer), reject);
      } else if (m.op === 'refused') {
        live.delete(name);
        worker.terminate();
        reject(refusal(m.error));
      } else if (m.op === 'report') {
        entry.chain = entry.chain.then(() => take(name, entry, m)).catch((error) => {
          console.error('storing a report', error);
          fail(`the tab cannot store the run: ${error.message ?? error}`);
        });
      } else if (m.op === 'ended') {
        entry.chain = entry.chain.then(() => worker.terminate());
      }
    };
    worker.onerror = (e) => {
      e.preventDefault?.();
      const message = e.message || 'the training worker failed';
      if (!started) {
        live.delete(name);
        worker.terminate();
        reject(new ApiError(message, null, 500));
      } else {
        fail(`the training stopped: ${message}`);
      }
    };
    const workers = Math.min(workerCap, shardOverride ?? workerCap);
    worker.postMessage({ op: 'start', how, args: { ...args, shards: shardOverride ?? undefined },
      workers });
  });
}

// ---- the API ----

export async function presets() {
  return JSON.parse(wasm.presets());
}

export const presetModel = async (name) => JSON.parse(call(() => wasm.presetModel(name)));

function lastLine(csv) {
  const lines = csv.trimEnd().split('\n');
  return lines.length > 1 ? lines[lines.length - 1] : null;
}

function summaryOf(run) {
  const entry = live.get(run.name);
  let lastStep = entry?.lastStep ?? null;
  if (lastStep == null) {
    const last = lastLine(run.steps);
    lastStep = last ? Number(last.split(',')[0]) : null;
  }
  const history = JSON.parse(wasm.history(run.metrics, '', ''));
  const lastVal = history.metrics.length ? history.metrics[history.metrics.length - 1].val_loss : null;
  return JSON.parse(wasm.summary(run.name, run.files?.config ?? undefined,
    Number.isFinite(lastStep) ? lastStep : undefined, lastVal ?? undefined, !!entry));
}

export async function runs() {
  const list = (await store.allRuns()).map(summaryOf);
  list.sort((a, b) => a.name.localeCompare(b.name));
  return { runs: list };
}

async function storedRun(name) {
  const run = await store.getRun(name);
  if (!run) throw refused('no-such-run', name);
  return run;
}

export async function metrics(name) {
  const run = await storedRun(name);
  return JSON.parse(wasm.history(run.metrics, run.steps, run.samples));
}

export async function upload(file) {
  const limit = (await presets()).upload_limit;
  // A file over the limit is refused from its first bytes past it, in the server's words.
  const blob = file.size > limit ? file.slice(0, limit + 1) : file;
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const answer = JSON.parse(call(() => wasm.checkUpload(bytes, file.name)));
  await store.putUpload({ id: answer.id, filename: answer.filename,
    text: new TextDecoder().decode(bytes) });
  return answer;
}

export async function startRun(request) {
  const name = String(request?.name ?? '');
  call(() => wasm.checkName(name));
  if (live.has(name)) throw refused('training', name);
  if (await store.getRun(name)) throw refused('exists', name);
  let text = { kind: 'builtin' };
  let args = { request: JSON.stringify(request) };
  if (request.upload != null) {
    const up = await store.getUpload(String(request.upload));
    if (!up) {
      throw new ApiError(`no upload ${request.upload}: upload the text again`, 'upload', 404);
    }
    text = { kind: 'upload', id: up.id, filename: up.filename };
    args = { ...args, text: up.text, textName: up.filename };
  }
  let how = 'new';
  if (request.init_from != null && request.init_from !== '') {
    const from = String(request.init_from);
    const base = await store.getRun(from);
    if (!base) throw Object.assign(refused('no-such-run', from), { field: 'init_from' });
    if (!base.files) throw Object.assign(refused('no-checkpoint', from), { field: 'init_from' });
    how = 'fine-tune';
    args = { ...args, config: base.files.config, model: base.files.model, initName: from };
  }
  return train(name, how, args, () => store.putRun(store.newRun(name, text)));
}

export async function resumeRun(name, settings = {}) {
  const run = await storedRun(name);
  if (live.has(name)) throw refused('training', name);
  if (!run.files) throw refused('no-checkpoint', name);
  if (!run.files.optimizer) {
    throw new ApiError(`run ${name} has no optimizer.safetensors, which a resume needs: open its directory again with that file, or fine-tune a new run from it`, null, 409);
  }
  const { text, textName } = await textOf(run);
  const args = {
    name, request: JSON.stringify({ settings }), model: run.files.model,
    config: run.files.config, optimizer: run.files.optimizer, metrics: run.metrics,
    steps: run.steps, text, textName,
  };
  return train(name, 'resume', args, async () => {
    // A resumed run evaluates the steps after its checkpoint again: drop their records.
    const saved = JSON.parse(new TextDecoder().decode(run.files.config)).step;
    await store.updateRun(name, (r) => {
      [r.samples, r.probes] = wasm.recordsThrough(r.samples, r.probes, saved);
    });
  });
}

export async function stopRun(name) {
  const entry = live.get(name);
  if (entry) {
    entry.worker.postMessage({ op: 'stop' });
    return { name, stopping: true };
  }
  await storedRun(name);
  throw refused('not-training', name);
}

export async function deleteRun(name) {
  if (live.has(name)) throw refused('delete-training', name);
  await storedRun(name);
  await store.deleteRun(name);
  bump(name);
  inspector().post({ op: 'forget', run: name });
  return { name, deleted: true };
}

// The live events of a training (as server.js's `follow`): what it has sent so far (steps after
// `after`), then as they come; a run not training gets one `idle` with its summary.
export function follow(name, after, on) {
  const entry = live.get(name);
  if (!entry) {
    let closed = false;
    store.getRun(name).then((run) => {
      if (closed) return;
      if (run) on('idle', summaryOf(run));
      else on('error', { error: refused('no-such-run', name).message });
    });
    return () => { closed = true; };
  }
  for (const [type, data] of entry.log) {
    if (type === 'step') {
      const steps = after == null ? data : data.filter((p) => p.step > after);
      if (steps.length) on(type, steps);
    } else {
      on(type, data);
    }
  }
  entry.listeners.add(on);
  return () => entry.listeners.delete(on);
}

// ---- looking inside: the inspector worker ----

let inspectorWorker = null;

function inspector() {
  if (inspectorWorker) return inspectorWorker;
  const worker = new Worker(new URL('./inspector.js', import.meta.url), { type: 'module' });
  const pending = new Map();
  let nextId = 1;
  const loaded = new Map(); // run -> the version of the parameters it holds
  worker.onmessage = (e) => {
    const m = e.data;
    const p = pending.get(m.id);
    if (!p) return;
    if (m.chunk != null) {
      p.onChunk?.(m.chunk);
      return;
    }
    pending.delete(m.id);
    if (m.error != null) p.reject(refusal(m.error));
    else p.resolve(m.answer ?? m);
  };
  worker.onerror = (e) => {
    for (const p of pending.values()) p.reject(new ApiError(e.message || 'the inspector failed', null, 500));
    pending.clear();
    worker.terminate();
    inspectorWorker = null;
  };
  const ask = (message, onChunk) => new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject, onChunk });
    worker.postMessage({ ...message, id });
  });
  inspectorWorker = {
    worker, ask, loaded,
    post: (message) => worker.postMessage(message),
    kill() {
      worker.terminate();
      for (const p of pending.values()) p.reject(new DOMException('stopped', 'AbortError'));
      inspectorWorker = null;
    },
  };
  return inspectorWorker;
}

// Loads the parameters the page should see for run `name` into the inspector, unless it has
// them: a training's at its last evaluation, or else the run's checkpoint. A run with neither
// is left unloaded (the inspector refuses, as the server does, "no checkpoint yet").
async function ensureLoaded(name) {
  const worker = inspector();
  const version = versions.get(name) ?? 0;
  if (worker.loaded.get(name) === version) return worker;
  const entry = live.get(name);
  let files = entry?.snapshot ? { ...entry.snapshot, live: true } : null;
  const run = await store.getRun(name);
  if (!run && !entry) throw refused('no-such-run', name);
  if (!files && run?.files) files = { config: run.files.config, model: run.files.model, live: false };
  if (!files) {
    worker.post({ op: 'forget', run: name });
    worker.loaded.delete(name);
    return worker;
  }
  const { text } = await textOf(run);
  await worker.ask({ op: 'load', run: name, config: files.config, model: files.model,
    live: files.live, text });
  worker.loaded.set(name, version);
  return worker;
}

async function inspectAnswer(name, endpoint, request) {
  const worker = await ensureLoaded(name);
  return JSON.parse(await worker.ask({ op: 'answer', run: name, endpoint,
    body: JSON.stringify(request ?? {}) }));
}

export const inspectNext = (name, request) => inspectAnswer(name, 'next', request);
export const inspectAttention = (name, request) => inspectAnswer(name, 'attention', request);
export const inspectSurprise = (name, request) => inspectAnswer(name, 'surprise', request);
export const inspectEmbeddings = (name) => inspectAnswer(name, 'embeddings', {});
export const inspectHead = (name, request) => inspectAnswer(name, 'head', request);

// Draws a sample, calling onText(chunk) as the characters come; `signal` stops it (the
// inspector worker is then started afresh).
export async function sample(name, request, onText, signal) {
  const worker = await ensureLoaded(name);
  if (signal?.aborted) throw new DOMException('stopped', 'AbortError');
  const done = worker.ask({ op: 'sample', run: name, body: JSON.stringify(request ?? {}) },
    (chunk) => onText(chunk));
  const abort = () => worker.kill();
  signal?.addEventListener('abort', abort, { once: true });
  try {
    await done;
  } finally {
    signal?.removeEventListener('abort', abort);
  }
}

// The files the model diagram and the replay read: the checkpoint's config.json (or the live
// snapshot's) and probes.jsonl.
async function configOf(name) {
  const run = await storedRun(name);
  const config = live.get(name)?.snapshot?.config ?? run.files?.config;
  if (!config) throw refused('no-checkpoint', name);
  return { run, config };
}

export async function runModel(name) {
  const { run, config } = await configOf(name);
  return JSON.parse(call(() => wasm.modelDiagram(name, config, run.probes)));
}

export async function probes(name, after) {
  const { run, config } = await configOf(name);
  return JSON.parse(call(() => wasm.probes(name, config, run.probes, after ?? undefined)));
}

// ---- the tab's own: a run's files out, and a run directory's files in ----

// Run `name`'s files as a run directory holds them: [{name, data}].
export async function runFiles(name) {
  const run = await storedRun(name);
  if (!run.files) throw refused('no-checkpoint', name);
  const files = [
    { name: 'model.safetensors', data: run.files.model },
    { name: 'config.json', data: run.files.config },
    { name: 'optimizer.safetensors', data: run.files.optimizer },
    { name: 'metrics.csv', data: run.metrics },
    { name: 'steps.csv', data: run.steps },
    { name: 'samples.txt', data: run.samples },
    { name: 'probes.jsonl', data: run.probes },
  ];
  const { text, textName } = await textOf(run);
  if (text != null) files.push({ name: textName, data: text });
  return files;
}

// Saves run `name` as NAME.zip: unzipped, it is a run directory that `chargpt eval --out`,
// `sample` and `train --resume` take.
export async function downloadRun(name) {
  const blob = zip((await runFiles(name)).map((f) => ({ name: `${name}/${f.name}`, data: f.data })));
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = `${name}.zip`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  return blob;
}

// Opens a run directory's files (from `chargpt train --out DIR`: at least config.json and
// model.safetensors) as run `name` (by default the directory's name).
export async function openRunFiles(files, name = null) {
  const byName = new Map();
  for (const f of files) byName.set(f.name, f);
  const folder = [...files].map((f) => f.webkitRelativePath?.split('/')[0]).find((d) => d);
  name = name ?? folder ?? 'opened';
  call(() => wasm.checkName(name));
  if (await store.getRun(name) || live.has(name)) throw refused('exists', name);
  const bytes = async (n) => (byName.has(n) ? new Uint8Array(await byName.get(n).arrayBuffer()) : null);
  const text = async (n) => (byName.has(n) ? byName.get(n).text() : '');
  const config = await bytes('config.json');
  const model = await bytes('model.safetensors');
  if (!config || !model) {
    throw new ApiError('choose a run directory\'s files: config.json and model.safetensors at least (optimizer.safetensors too, to resume it)', 'files', 400);
  }
  call(() => wasm.checkCheckpoint(config, model));
  const optimizer = await bytes('optimizer.safetensors');
  const run = store.newRun(name, { kind: 'builtin' });
  run.files = { config, model, optimizer };
  run.metrics = await text('metrics.csv');
  run.steps = await text('steps.csv');
  run.samples = await text('samples.txt');
  run.probes = await text('probes.jsonl');
  await store.putRun(run);
  bump(name);
  return { name };
}

// What the header shows while run `name` trains: workers and shards, and the bytes of the
// leader worker's WebAssembly memory (each helper holds about as much).
export function training(name) {
  const entry = live.get(name);
  return entry ? { workers: entry.workers, shards: entry.shards, memory: entry.memory ?? null } : null;
}
