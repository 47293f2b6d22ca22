// Training: the selected run's progress, its loss and learning-rate curves, and the sample of
// every evaluation, all growing live while it trains.
//
// Loss curves: every step's training loss (the batch's, noisy: thin), its moving average
// (thick), and each evaluation's estimates of the train and val loss (dots). The history comes
// from the run's files when it is selected; live steps arrive about ten times a second.

import { lineChart, align, smooth, COLORS } from '../charts.js';
import { el, fmt, clear, duration, rate } from './util.js';

let app;
let root;
let lossChart;
let lrChart;
let feed;

// The selected run's data: steps as [step, loss, lr], evaluations, samples.
let steps = [];
let evals = [];
let samples = [];
let total = null; // the run's number of steps
let drawPending = false;
let lastDraw = 0;
// The newest step's progress line, drawn with the charts.
let pendingProgress = null;

function reset() {
  steps = [];
  evals = [];
  samples = [];
  total = null;
  pendingProgress = null;
  clear(feed);
}

function lastStep() {
  return steps.length ? steps[steps.length - 1][0] : 0;
}

// Redraws (charts and progress line) at most once a second, whatever the rate of steps: on a
// 2-core machine the browser's drawing takes its CPU from the training, and at four redraws a
// second a page open on a nanogpt-cpu run cost it 29% of its speed.
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  const wait = Math.max(0, 1000 - (performance.now() - lastDraw));
  setTimeout(() => requestAnimationFrame(draw), wait);
}

function draw() {
  drawPending = false;
  lastDraw = performance.now();
  if (pendingProgress) {
    setProgress(...pendingProgress);
    pendingProgress = null;
  }
  const raw = steps.map(([s, loss]) => [s, loss]);
  // Averaged over about a hundredth of the run on each side, as loss.png (at least 1 step).
  const half = Math.max(1, Math.floor((total ?? lastStep()) / 100));
  const averaged = smooth(steps.map(([, loss]) => loss), half);
  const { x, ys } = align([
    raw,
    steps.map(([s], i) => [s, averaged[i]]),
    evals.map((e) => [e.step, e.train_loss]),
    evals.map((e) => [e.step, e.val_loss]),
  ]);
  lossChart.set(x, ys);
  const lr = align([steps.map(([s, , rateValue]) => [s, rateValue])]);
  lrChart.set(lr.x, lr.ys);
}

function setState(state, text) {
  const badge = root.querySelector('#run-state');
  badge.textContent = state;
  badge.className = `state ${state}`;
  root.dataset.state = state;
  root.querySelector('#stop').hidden = state !== 'training';
  root.querySelector('#resume').hidden = state !== 'stopped';
  root.querySelector('#extend-box').hidden = state !== 'stopped' && state !== 'finished';
  const extend = root.querySelector('#extend-steps');
  if (state === 'finished' && total && !extend.value) extend.value = String(total * 2);
  if (text !== undefined) {
    pendingProgress = null;
    root.querySelector('#progress-text').textContent = text;
  }
}

function setProgress(step, of, extra) {
  pendingProgress = null; // what is set now is newer than a step waiting to be drawn
  const bar = root.querySelector('#progress');
  bar.max = of || 1;
  bar.value = step;
  root.querySelector('#progress-text').textContent =
    `step ${step}${of ? ` / ${of}` : ''}${extra ? ` · ${extra}` : ''}`;
}

function addSample(sample, label) {
  // An evaluation's sample can come twice: from the records read, and from a live stream that
  // replays the training's events from its start.
  if (!label && feed.querySelector(`.sample[data-step="${sample.step}"]:not([data-final])`)) return;
  const card = el('article', { className: 'sample',
    dataset: label ? { step: sample.step, final: 'true' } : { step: sample.step } },
    el('h3', {}, label ?? `step ${sample.step} · val loss ${fmt(sample.val_loss)}`),
    el('pre', {}, sample.text));
  feed.prepend(card); // newest first: gibberish at the bottom, play-like text at the top
}

function onHistory(history) {
  reset();
  steps = history.steps;
  evals = history.metrics.map((m) => ({ step: m.step, train_loss: m.train_loss, val_loss: m.val_loss }));
  for (const s of history.samples) addSample(s);
  root.querySelector('#run-name').textContent = history.name;
  setProgress(lastStep(), total);
  scheduleDraw();
}

const live = {
  start(data) {
    // The history was read after the run (re)started, and the server rewrote the records to its
    // checkpoint before it answered: every row held is this session's (a stream that joins late
    // replays this start after rows it must keep).
    total = data.steps;
    setState('training');
    setProgress(data.step, total, data.resumed ? 'resumed' : 'starting');
    scheduleDraw();
  },
  step(points) {
    const from = lastStep();
    for (const p of points) if (p.step > from) steps.push([p.step, p.loss, p.lr]);
    const p = points[points.length - 1];
    total = p.steps;
    pendingProgress = [p.step, p.steps, `loss ${fmt(p.loss)} · ${rate(p.tokens_per_s)} · ETA ${duration(p.eta_s)}`];
    scheduleDraw();
  },
  eval(data) {
    evals = evals.filter((e) => e.step !== data.step);
    evals.push(data);
    evals.sort((a, b) => a.step - b.step);
    addSample({ step: data.step, val_loss: data.val_loss, text: data.sample });
    scheduleDraw();
  },
  note(data) {
    // A time budget far short of its recipe's steps: what a smaller model might do instead.
    root.querySelector('#run-note').textContent = `note: ${data.note}`;
  },
  saved(data) {
    root.querySelector('#saved').textContent = `checkpoint saved at step ${data.step}`;
  },
  exact(data) {
    pendingProgress = null;
    root.querySelector('#progress-text').textContent =
      `measuring the exact val loss over ${data.windows} windows…`;
  },
  finished(data) {
    const summary = data.state === 'finished'
      ? `finished ${data.step} steps in ${duration(data.elapsed_s)}; exact val loss ${fmt(data.final_val_loss)}`
      : `stopped at step ${data.step} of ${data.steps}; resume it to go on`;
    setState(data.state, summary);
    const bar = root.querySelector('#progress');
    bar.max = data.steps || 1;
    bar.value = data.step;
    if (data.sample) addSample({ step: data.step, text: data.sample }, `final model, step ${data.step}`);
  },
  error(data) {
    setState('stopped', '');
    root.querySelector('#run-error').textContent = data.error;
  },
  idle(run) {
    total = run.steps;
    setState(run.state);
    setProgress(run.step, run.steps, run.final_val_loss != null
      ? `exact val loss ${fmt(run.final_val_loss)}` : '');
  },
};

async function act(fn) {
  root.querySelector('#run-error').textContent = '';
  try {
    await fn();
  } catch (e) {
    root.querySelector('#run-error').textContent = e.message;
  }
  app.emit('runs-changed');
}

export default {
  id: 'training',
  title: 'Training',

  mount(element, shared) {
    app = shared;
    root = element;
    element.append(
      el('div', { className: 'row' },
        el('h2', { id: 'run-name' }, 'no run selected'),
        el('span', { id: 'run-state', className: 'state' }),
        el('button', { id: 'stop', hidden: true,
          onclick: () => act(() => app.api.stopRun(app.run)) }, 'Stop (saves)'),
        el('button', { id: 'resume', hidden: true,
          onclick: () => act(async () => { await app.api.resumeRun(app.run); await app.watch(); }) },
        'Resume'),
        el('span', { id: 'extend-box', hidden: true },
          el('label', {}, 'train to ', el('input', { id: 'extend-steps', type: 'number', min: 1, size: 6 }),
            ' steps '),
          el('button', { id: 'extend', onclick: () => act(async () => {
            const stepsWanted = root.querySelector('#extend-steps').value;
            await app.api.resumeRun(app.run, { steps: stepsWanted });
            await app.watch();
          }) }, 'Extend'))),
      el('div', { className: 'row', id: 'progress-row', hidden: true },
        el('progress', { id: 'progress', value: 0, max: 1 }),
        el('span', { id: 'progress-text', className: 'muted' }),
        el('span', { id: 'saved', className: 'muted' })),
      el('div', { id: 'run-error', className: 'error' }),
      el('p', { id: 'run-note', className: 'muted' }),
      el('div', { className: 'charts', hidden: true },
        el('div', { id: 'loss-chart', className: 'chart' }),
        el('div', { id: 'lr-chart', className: 'chart small' })),
      el('h2', {}, 'Samples at each evaluation'),
      el('p', { className: 'muted' }, '200 characters drawn from the model as it was at that step, newest first.'),
      feed = el('div', { id: 'samples' }));
    lossChart = lineChart(element.querySelector('#loss-chart'), {
      title: 'loss', yLabel: 'loss (nats per character)', series: [
        { label: 'step loss', color: '#a8c8e8', width: 1 },
        { label: 'step loss, smoothed', color: COLORS[0], width: 2 },
        { label: 'train (eval)', color: COLORS[3], points: true },
        { label: 'val (eval)', color: COLORS[1], points: true, width: 2 },
      ] });
    lrChart = lineChart(element.querySelector('#lr-chart'), {
      title: 'learning rate', yLabel: 'learning rate', height: 200, ySpace: 18,
      series: [{ label: 'learning rate', color: COLORS[2] }] });
    for (const [type, handler] of Object.entries(live)) app.on(`live:${type}`, handler);
    app.on('history', onHistory);
    // Another run, or none (the selected run was deleted): nothing of the last one stays, its
    // progress included, until the new run's history or events say where it stands.
    app.on('run-selected', (name) => {
      reset();
      root.querySelector('#extend-steps').value = '';
      setState('', '');
      const bar = root.querySelector('#progress');
      bar.max = 1;
      bar.value = 0;
      root.querySelector('#run-error').textContent = '';
      root.querySelector('#run-note').textContent = '';
      root.querySelector('#saved').textContent = '';
      root.querySelector('#run-name').textContent = name ?? 'no run selected';
      root.querySelector('#progress-row').hidden = !name;
      root.querySelector('.charts').hidden = !name;
      scheduleDraw();
    });
  },
};
