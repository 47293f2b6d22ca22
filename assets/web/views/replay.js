// While it learns: at every evaluation a run records what its model does on one probe text
// (probes.jsonl in the run's directory, written by the library for `chargpt train` and the
// page alike): the next-character odds after it, its attention maps, the surprise of each of its
// characters, and the embeddings. The slider replays them over the run's evaluations, so you see
// heads form, surprise fall and the embeddings organise; while the run trains, each new
// evaluation arrives on its own.

import { el, clear } from './util.js';
import {
  runHeader, fromBase64, reshape, drawBars, mapGrid, surpriseText, drawScatter, drawCosine,
  shown, percent, throttle,
} from './look.js';

let app;
let header;
let slider;
let label;
let panels;
let bars;
let text;
let tip;
let grid;
let scatter;
let cosine;
let error;
let vocab = [];
let records = [];
let playing = null;
let loadedFor = null;

// The maps of a record: maps[l][h][t] = the t + 1 weights of query t.
function maps(record) {
  if (!record.attention) return null;
  const bytes = fromBase64(record.attention);
  const n = [...record.probe].length;
  const out = [];
  let at = 0;
  for (let l = 0; l < record.n_layer; l++) {
    const heads = [];
    for (let h = 0; h < record.n_head; h++) {
      const rows = [];
      for (let t = 0; t < n; t++) {
        rows.push(Array.from(bytes.subarray(at, at + t + 1), (b) => b / 255));
        at += t + 1;
      }
      heads.push(rows);
    }
    out.push(heads);
  }
  return out;
}

// The principal components' signs are arbitrary: flip each axis to agree with the last record,
// so that points do not jump from one side to the other between evaluations.
function aligned(points, reference) {
  const sign = [0, 1].map((a) => {
    const dot = points.reduce((s, p, i) => s + p[a] * reference[i][a], 0);
    return dot < 0 ? -1 : 1;
  });
  return points.map((p) => [p[0] * sign[0], p[1] * sign[1]]);
}

function show(index) {
  if (!records.length) return;
  const i = Math.max(0, Math.min(records.length - 1, index));
  const r = records[i];
  slider.value = String(i);
  label.textContent = `evaluation ${i + 1} of ${records.length}: step ${r.step}, val loss ${r.val_loss.toFixed(4)}`;
  panels.dataset.step = String(r.step);
  const probe = [...r.probe];
  drawBars(bars, vocab, reshape(r.logits, 1, null), { count: 10 });
  surpriseText(text, probe, r.surprise, {
    offset: 1,
    tip,
    describe: (k) => [
      el('div', {}, el('b', {}, shown(probe[k + 1])), ` loss ${r.surprise[k].toFixed(3)} nats`),
      el('div', { className: 'muted' }, 'the model expected:'),
      ...r.top[k].map(([id, p]) => el('div', {}, el('code', {}, shown(vocab[id] ?? '?')), ` ${percent(p)}`)),
    ],
  });
  const mean = r.surprise.reduce((s, x) => s + x, 0) / Math.max(1, r.surprise.length);
  text.dataset.mean = String(mean);
  document.querySelector('#replay-surprise-mean').textContent =
    `mean surprise over the probe: ${mean.toFixed(3)} nats per character`;
  clear(grid);
  const m = maps(r);
  if (m) {
    const g = mapGrid(m);
    grid.append(g.element);
  } else {
    grid.textContent = 'A bigram has no attention.';
  }
  const last = records[records.length - 1];
  drawScatter(scatter, vocab, aligned(r.embedding, last.embedding), r.explained, { width: 480, height: 360 });
  if (r.position_cosine) {
    const bytes = fromBase64(r.position_cosine);
    const values = Array.from(bytes, (b) => (b > 127 ? b - 256 : b) / 127);
    drawCosine(cosine, values, probe.length, { size: 260 });
  } else {
    cosine.textContent = 'no position embeddings (a bigram, or RoPE: positions turn the queries and keys instead)';
  }
}

async function load(fresh) {
  const name = app.run;
  if (!name) {
    header.about(null);
    return;
  }
  error.textContent = '';
  const atEnd = !records.length || Number(slider.value) === records.length - 1;
  const after = fresh || !records.length ? null : records[records.length - 1].step;
  try {
    const got = await app.api.probes(name, after);
    if (name !== app.run) return;
    vocab = got.vocab;
    records = fresh ? got.records : records.concat(got.records);
    loadedFor = name;
    slider.max = String(Math.max(0, records.length - 1));
    panels.hidden = !records.length;
    if (!records.length) {
      label.textContent = 'This run has no probe records: runs record one at each evaluation (runs trained before this version did not).';
      return;
    }
    header.about({ step: records[records.length - 1].step, live: false });
    show(atEnd || fresh ? records.length - 1 : Number(slider.value));
  } catch (e) {
    error.textContent = e.message;
  }
}

function play() {
  if (playing) {
    clearInterval(playing);
    playing = null;
    document.querySelector('#replay-play').textContent = 'Play';
    return;
  }
  let i = Number(slider.value) >= records.length - 1 ? 0 : Number(slider.value);
  document.querySelector('#replay-play').textContent = 'Pause';
  playing = setInterval(() => {
    show(i);
    i += 1;
    if (i >= records.length) play();
  }, 600);
}

const view = {
  id: 'replay',
  title: 'While it learns',
  mount(element, shared) {
    app = shared;
    header = runHeader(app, 'replay');
    slider = el('input', { id: 'replay-slider', type: 'range', min: 0, max: 0, step: 1, value: 0 });
    slider.addEventListener('input', () => show(Number(slider.value)));
    label = el('span', { id: 'replay-label' });
    bars = el('div', { id: 'replay-bars', className: 'bars' });
    text = el('div', { id: 'replay-text', className: 'surprise-text' });
    tip = el('div', { className: 'tip', hidden: true });
    document.body.append(tip);
    grid = el('div', { id: 'replay-grid' });
    scatter = el('div', { id: 'replay-scatter' });
    cosine = el('div', { id: 'replay-cosine' });
    error = el('div', { id: 'replay-error', className: 'error' });
    panels = el('div', { id: 'replay-panels', hidden: true },
      el('div', { className: 'two-columns' },
        el('div', {}, el('h3', {}, 'the probe, coloured by surprise'), text,
          el('p', { id: 'replay-surprise-mean', className: 'muted small' })),
        el('div', {}, el('h3', {}, 'the next character after it'), bars)),
      el('h3', {}, 'attention over the probe'), grid,
      el('div', { className: 'two-columns' },
        el('div', {}, el('h3', {}, 'token embeddings (first two principal components)'), scatter),
        el('div', {}, el('h3', {}, 'position embeddings of the probe\'s positions (cosine)'), cosine)));
    element.append(
      el('h2', {}, 'Watch it learn'),
      header.element,
      el('p', { className: 'muted' }, 'At every evaluation the run records what its model does on a probe text. Move the slider to see the model as it was at each one; while a run trains, new evaluations appear by themselves (and the other views follow its live parameters).'),
      el('div', { className: 'row' }, slider, el('button', { id: 'replay-play', onclick: play }, 'Play'), label),
      error, panels);
    app.on('live:eval', throttle(() => { if (loadedFor === app.run) load(false); }, 200));
    app.on('run-selected', () => {
      if (playing) play();
      records = [];
      loadedFor = null;
      panels.hidden = true;
      slider.max = '0';
      slider.value = '0';
      label.textContent = '';
      error.textContent = '';
      header.about(null);
      if (!element.hidden) load(true);
    });
  },
  show() {
    header.refresh();
    if (loadedFor !== app.run) load(true);
  },
};

export default view;
