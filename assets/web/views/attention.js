// Attention: every head's weights over a prompt, one map per layer (rows) and head (columns).
// In a map, row t is the character attending (the query) and column u a character it attends
// to (a key); bright is a large weight, each row sums to 1, and the grey triangle is the causal
// mask. Hovering a character of the prompt marks its row in every map and colours the prompt by
// what the selected head gives it; below, that head's weights as lines from each character (top)
// to the ones it looks at (bottom), as bertviz's head view draws them. Click a map to enlarge it.

import { el, clear } from './util.js';
import { runHeader, followRun, asker, promptBox, mapGrid, heat, shown, debounce } from './look.js';

let app;
let header;
let follow;
let prompt;
let strip;
let gridBox;
let big;
let lines;
let error;
let answer = null;
let grid = null;
let selected = [0, 0];
let query = null;
let ask;
let box; // the prompt per run: its own, or the one the user typed for it

function weight(l, h, t, u) {
  return u <= t ? answer.weights[l][h][t][u] : 0;
}

// The prompt as hoverable characters, coloured by the selected head's weights from the query.
function drawStrip() {
  clear(strip);
  answer.tokens.forEach((c, u) => {
    const span = el('span', { className: 'tok', dataset: { i: String(u) } }, shown(c));
    span.addEventListener('mouseenter', () => setQuery(u));
    strip.append(span);
  });
  colourStrip();
}

function colourStrip() {
  const [l, h] = selected;
  let best = -1;
  let bestWeight = -1;
  strip.querySelectorAll('.tok').forEach((span, u) => {
    span.classList.toggle('query', u === query);
    if (query === null) {
      span.style.background = '';
      span.style.color = '';
      return;
    }
    const w = weight(l, h, query, u);
    span.style.background = u <= query ? `rgba(245, 125, 21, ${Math.min(1, 0.04 + w)})` : '';
    span.style.color = u <= query ? '' : '#98a2b3';
    if (w > bestWeight) {
      bestWeight = w;
      best = u;
    }
  });
  strip.dataset.query = query === null ? '' : String(query);
  strip.dataset.strongest = String(best);
}

function setQuery(t) {
  query = t;
  if (grid) grid.mark(t);
  colourStrip();
  drawBig();
  drawLines();
}

function pick(l, h) {
  selected = [l, h];
  grid.select(l, h);
  big.dataset.layer = String(l);
  big.dataset.head = String(h);
  colourStrip();
  drawBig();
  drawLines();
}

// The selected head's map, large, with the characters on both axes.
function drawBig() {
  const [l, h] = selected;
  const n = answer.len;
  const cell = Math.max(3, Math.min(24, Math.floor(480 / n)));
  const margin = 18;
  const size = margin + n * cell;
  const canvas = big.querySelector('canvas') || big.appendChild(el('canvas'));
  canvas.width = size;
  canvas.height = size;
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, size, size);
  for (let t = 0; t < n; t++) {
    for (let u = 0; u < n; u++) {
      ctx.fillStyle = u <= t ? heat(weight(l, h, t, u)) : '#d7dae0';
      ctx.fillRect(margin + u * cell, margin + t * cell, cell, cell);
    }
  }
  const every = Math.ceil(9 / cell);
  ctx.fillStyle = '#1d2330';
  ctx.font = `${Math.min(12, Math.max(8, cell))}px ui-monospace, monospace`;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  answer.tokens.forEach((c, i) => {
    if (i % every && i !== query) return;
    ctx.fillStyle = i === query ? '#d62728' : '#1d2330';
    ctx.fillText(shown(c), margin + (i + 0.5) * cell, margin / 2);
    ctx.fillText(shown(c), margin / 2, margin + (i + 0.5) * cell);
  });
  if (query !== null) {
    ctx.strokeStyle = '#1f9bff';
    ctx.lineWidth = 2;
    ctx.strokeRect(margin + 1, margin + query * cell, n * cell - 2, cell);
  }
  big.querySelector('h3').textContent = `layer ${l}, head ${h}: looks back ${answer.heads[l][h].look_back.toFixed(1)} characters on average`;
}

// bertviz's head view, across: the prompt twice, lines from each query (top) to its keys
// (bottom), as opaque as the weight. With a character hovered, only its lines.
function drawLines() {
  const [l, h] = selected;
  const n = answer.len;
  const width = Math.max(lines.parentElement.clientWidth - 4, 400);
  const step = Math.min(24, (width - 20) / n);
  const height = 170;
  lines.width = width;
  lines.height = height;
  const ctx = lines.getContext('2d');
  ctx.clearRect(0, 0, width, height);
  const x = (i) => 10 + (i + 0.5) * step;
  const top = 22;
  const bottom = height - 22;
  ctx.lineWidth = query === null ? 1 : 2;
  for (let t = 0; t < n; t++) {
    if (query !== null && t !== query) continue;
    for (let u = 0; u <= t; u++) {
      const w = weight(l, h, t, u);
      if (w < 0.01) continue;
      ctx.strokeStyle = `rgba(31, 95, 191, ${query === null ? w * 0.5 : w})`;
      ctx.beginPath();
      ctx.moveTo(x(t), top + 6);
      ctx.lineTo(x(u), bottom - 8);
      ctx.stroke();
    }
  }
  ctx.font = `${Math.min(13, Math.max(7, step * 1.1))}px ui-monospace, monospace`;
  ctx.textAlign = 'center';
  answer.tokens.forEach((c, i) => {
    ctx.fillStyle = i === query ? '#d62728' : '#1d2330';
    ctx.fillText(shown(c), x(i), top);
    const w = query === null ? 0 : weight(l, h, query, i);
    ctx.fillStyle = w > 0.2 ? '#1f5fbf' : '#1d2330';
    ctx.fillText(shown(c), x(i), bottom + 10);
  });
  lines.dataset.query = query === null ? '' : String(query);
}

function render() {
  if (query !== null && query >= answer.len) query = answer.len - 1;
  clear(gridBox);
  grid = mapGrid(answer.weights, { summaries: answer.heads, onPick: pick, selected });
  gridBox.append(grid.element);
  drawStrip();
  pick(...selected);
  setQuery(query);
}

async function fetchNow() {
  if (!(await box.choose())) return undefined;
  const text = prompt.value;
  return ask((run) => app.api.inspectAttention(run, { prompt: text }), (got) => {
    answer = got;
    if (selected[0] >= got.n_layer || selected[1] >= got.n_head) selected = [0, 0];
    gridBox.dataset.step = String(got.step);
    render();
  });
}

const view = {
  id: 'attention',
  title: 'Attention',
  mount(element, shared) {
    app = shared;
    header = runHeader(app, 'att');
    prompt = el('textarea', { id: 'att-prompt', rows: 2, cols: 70, value: 'ROMEO:\nIt is the east, and Juliet is the sun.' });
    box = promptBox(app, prompt);
    prompt.addEventListener('input', debounce(fetchNow, 150));
    strip = el('div', { id: 'att-text', className: 'tokens' });
    gridBox = el('div', { id: 'att-grid' });
    lines = el('canvas', { id: 'att-lines' });
    big = el('div', { id: 'att-big', className: 'big-map' }, el('h3', {}, ''));
    error = el('div', { id: 'att-error', className: 'error' });
    ask = asker(app, header, error, () => {
      answer = null;
      grid = null;
      clear(gridBox);
      delete gridBox.dataset.step;
      clear(strip);
      lines.width = 0;
      big.querySelector('canvas')?.remove();
      big.querySelector('h3').textContent = '';
    });
    element.append(
      el('h2', {}, 'What each head looks at'),
      header.element,
      el('p', { className: 'muted' }, 'Row t of a map is the character attending, column u one it attends to; bright is a large weight, each row sums to 1, and the grey triangle is the causal mask. Hover a character below to mark its row in every map; click a map to enlarge it.'),
      prompt, error, strip,
      el('div', { className: 'lines-box' }, el('h3', { className: 'small' }, 'the selected head, as lines from each character (top) to those it looks at (bottom)'), lines),
      el('div', { className: 'attention-layout' }, gridBox, big));
    follow = followRun(app, view, () => {
      header.refresh();
      fetchNow();
    });
  },
  show() {
    header.refresh();
    follow.shown();
  },
};

export default view;
