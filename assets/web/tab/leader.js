// The leader worker: trains one run through the library's run loop (chargpt_web's Training),
// with helper workers running the other shards of each step (helper.js).
//
// From the page:  {op: 'start', how: 'new' | 'fine-tune' | 'resume', args, workers}
//                 {op: 'stop'}
// To the page:    {op: 'started', answer} or {op: 'refused', error} (a refusal's JSON)
//                 {op: 'report', events, samples, probes, saved, snapshot}  (as they come)
//                 {op: 'ended'}                                            (after the last)

import init, { Training, memoryBytes } from '../pkg/chargpt_web.js';

let training = null;
let helpers = [];

// A report at most every REPORT_MS, and at once after an evaluation or a save.
const REPORT_MS = 100;
let lastReport = 0;

function report(force = false) {
  const now = performance.now();
  if (!force && now - lastReport < REPORT_MS) return;
  lastReport = now;
  const events = JSON.parse(training.takeEvents());
  const [samples, probes] = training.takeRecords();
  const files = training.takeSaved();
  let saved = null;
  if (files) {
    const [metrics, steps] = training.savedRecords();
    saved = { model: files[0], config: files[1], optimizer: files[2], metrics, steps };
  }
  const shot = training.takeSnapshot();
  const snapshot = shot ? { config: shot[0], model: shot[1] } : null;
  if (!events.length && !samples && !probes && !saved && !snapshot) return;
  const transfer = [];
  if (saved) transfer.push(saved.model.buffer, saved.config.buffer, saved.optimizer.buffer);
  if (snapshot) transfer.push(snapshot.config.buffer, snapshot.model.buffer);
  postMessage({ op: 'report', events, samples, probes, saved, snapshot, memory: memoryBytes() },
    transfer);
}

// A helper worker with a queue of answers, in order.
function helper(k, files, tokens, shards) {
  const worker = new Worker(new URL('./helper.js', import.meta.url), { type: 'module' });
  const waiting = [];
  worker.onmessage = (e) => {
    const next = waiting.shift();
    if (e.data.op === 'failed') next.reject(new Error(e.data.error));
    else next.resolve(e.data);
  };
  worker.onerror = (e) => {
    for (const w of waiting.splice(0)) w.reject(new Error(e.message || 'a helper worker failed'));
  };
  const ask = (message, transfer = []) => new Promise((resolve, reject) => {
    waiting.push({ resolve, reject });
    worker.postMessage(message, transfer);
  });
  const ready = ask({ op: 'init', k, shards, config: files[0], model: files[1], optimizer: files[2],
    tokens });
  return { k, worker, ask, ready, tell: (m, t) => worker.postMessage(m, t) };
}

// Lets messages (a stop) in between steps.
const pause = () => new Promise((resolve) => setTimeout(resolve, 0));

async function train() {
  let yielded = performance.now();
  while (training.due() === 'step') {
    if (helpers.length === 0) {
      training.step();
    } else {
      const answers = helpers.map((h) => h.ask({ op: 'pass' }));
      training.firstShard();
      for (const [i, a] of (await Promise.all(answers)).entries()) {
        training.setShard(helpers[i].k, a.grad, a.loss);
      }
      const sum = training.endStep();
      const loss = training.loss();
      for (const h of helpers) h.tell({ op: 'apply', sum, loss });
      training.recorded();
      // A time budget set the steps (the learning rate of each) or turned dropout on.
      const settings = training.replicaSettings();
      if (settings !== undefined) for (const h of helpers) h.tell({ op: 'follow', settings });
      yielded = performance.now();
    }
    report();
    if (performance.now() - yielded > 50) {
      await pause();
      yielded = performance.now();
    }
  }
  report(true);
  for (const h of helpers) h.worker.terminate();
  postMessage({ op: 'ended' });
}

async function start({ how, args, workers }) {
  await init();
  try {
    const shards = Math.max(1, args.shards ?? workers);
    if (how === 'new') {
      training = Training.newRun(args.request, args.text ?? undefined, args.textName ?? undefined,
        shards);
    } else if (how === 'fine-tune') {
      training = Training.fineTune(args.request, args.config, args.model, args.initName,
        args.text ?? undefined, args.textName ?? undefined, shards);
    } else {
      training = Training.resume(args.name, args.request, args.model, args.config, args.optimizer,
        args.metrics, args.steps, args.text ?? undefined, args.textName ?? undefined, shards);
    }
  } catch (e) {
    postMessage({ op: 'refused', error: typeof e === 'string' ? e : JSON.stringify({ error: String(e) }) });
    return;
  }
  // One worker per shard when there are several workers; one worker runs every shard itself.
  const count = training.shards();
  if (workers > 1 && count > 1) {
    const files = training.replicaFiles();
    const tokens = training.trainTokens();
    helpers = [];
    for (let k = 1; k < count; k++) helpers.push(helper(k, files, tokens, count));
    try {
      await Promise.all(helpers.map((h) => h.ready));
    } catch (e) {
      for (const h of helpers) h.worker.terminate();
      postMessage({ op: 'refused', error: JSON.stringify({ error: `cannot start the helper workers: ${e.message}` }) });
      return;
    }
  }
  postMessage({ op: 'started', answer: JSON.parse(training.started()),
    workers: 1 + helpers.length, shards: count });
  report(true);
  try {
    await train();
  } catch (e) {
    postMessage({ op: 'report', events: [['error', { error: `the training stopped: ${e.message}` }]] });
    for (const h of helpers) h.worker.terminate();
    postMessage({ op: 'ended' });
  }
}

onmessage = (e) => {
  const message = e.data;
  if (message.op === 'start') start(message);
  else if (message.op === 'stop' && training) training.requestStop();
};
