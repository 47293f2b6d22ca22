// What the views that look inside a model share: which run they look at, how characters and
// numbers are shown, colour scales, and the drawings that several views (and the replay) make:
// next-character bars, attention maps, text coloured by surprise, the embedding scatter and the
// position-similarity matrix.

import { el, clear } from './util.js';

// ---- characters and numbers ----

// A character as the maps and bars show it: whitespace made visible.
export function shown(c) {
  if (c === ' ') return '␣';
  if (c === '\n') return '⏎';
  if (c === '\t') return '⇥';
  return c;
}

export function percent(p) {
  const x = 100 * p;
  if (x >= 10) return `${x.toFixed(1)}%`;
  if (x >= 0.01) return `${x.toPrecision(2)}%`;
  return `${x.toExponential(1)}%`;
}

export function num(x, digits = 3) {
  if (x === null || x === undefined) return '−∞';
  return Number(x).toFixed(digits).replace('-', '−');
}

// What `chargpt sample` draws from (src/sampling.rs, `weights` and `distribution`):
// softmax(logits / temperature) over the top_k largest (every value tied with the k-th kept),
// 0 elsewhere. top_k null or >= V: all.
export function reshape(logits, temperature, topK) {
  const z = [...logits];
  if (topK && topK < z.length) {
    // Dividing by a positive temperature keeps the order: cut on the logits themselves.
    const cut = [...z].sort((a, b) => b - a)[Math.max(topK, 1) - 1];
    for (let i = 0; i < z.length; i++) if (z[i] < cut) z[i] = -Infinity;
  }
  const max = Math.max(...z);
  // exp((z - max) / T): never infinity minus infinity; at T = 0, the limit: the most likely
  // character (each of several equal ones) takes everything, as sampling does.
  const e = z.map((x) => (temperature > 0 ? Math.exp((x - max) / temperature) : (x === max ? 1 : 0)));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

// Calls fn at most once every `ms`, always after the last call (a stream of calls faster than
// `ms` still gets one call per `ms`, which a debounce would put off for ever).
export function throttle(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// The kind of a character, for the embedding scatter's colours, in any script: a letter is
// anything Unicode calls one (é, ß, Ж, ζ, 中), a vowel one whose base letter (accents taken off)
// is a Latin, Greek or Cyrillic vowel, a capital one with a lower case; digits are any numeral.
const VOWELS = 'aeiouæøœαεηιουω';
const CYRILLIC_VOWELS = 'аеёиоуыэюяіїє';
export function charClass(c) {
  if (/\s/u.test(c)) return 'space or newline';
  if (/\p{L}/u.test(c)) {
    const capital = /\p{Lu}|\p{Lt}/u.test(c);
    const lower = c.toLowerCase();
    if (!capital && lower === c.toUpperCase()) return 'other letter';
    const vowel = /\p{Script=Cyrillic}/u.test(c)
      ? CYRILLIC_VOWELS.includes(lower)
      : VOWELS.includes(lower.normalize('NFD').replace(/\p{M}/gu, ''));
    if (vowel) return capital ? 'capital vowel' : 'vowel';
    return capital ? 'capital consonant' : 'consonant';
  }
  if (/\p{N}/u.test(c)) return 'digit';
  if (/\p{P}/u.test(c)) return 'punctuation';
  return 'symbol';
}

export const CLASS_COLORS = {
  vowel: '#d62728',
  'capital vowel': '#ff9896',
  consonant: '#1f77b4',
  'capital consonant': '#9ecae1',
  'other letter': '#17becf',
  digit: '#2ca02c',
  'space or newline': '#7f7f7f',
  punctuation: '#9467bd',
  symbol: '#8c564b',
};

// A character too rare in the text to have learned much: seen fewer than RARE_MIN times, or
// in fewer than RARE_SHARE of its characters (1 in 10,000). Its embedding is met in too few
// batches to move far from where initialisation put it, so such characters pile up near the
// middle of the scatter, where their labels would hide each other and the common ones.
export const RARE_MIN = 20;
export const RARE_SHARE = 1e-4;
export function rareCharacters(counts) {
  if (!counts) return null;
  const total = counts.reduce((s, n) => s + n, 0);
  const cut = Math.max(RARE_MIN, RARE_SHARE * total);
  return counts.map((n) => n < cut);
}

// ---- colour scales ----

// 0..1 from dark to bright (a magma-like ramp), as [r, g, b].
const RAMP = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
  [245, 125, 21], [250, 193, 39], [252, 255, 164]];
export function heatRGB(v) {
  const x = Math.min(1, Math.max(0, v)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const f = x - i;
  return RAMP[i].map((a, k) => Math.round(a + f * (RAMP[i + 1][k] - a)));
}
export function heat(v) {
  const [r, g, b] = heatRGB(v);
  return `rgb(${r},${g},${b})`;
}

// -1..1 from blue through white to red.
export function divergingRGB(v) {
  const x = Math.min(1, Math.max(-1, v));
  if (x >= 0) return [255, Math.round(255 * (1 - 0.8 * x)), Math.round(255 * (1 - 0.85 * x))];
  return [Math.round(255 * (1 + 0.85 * x)), Math.round(255 * (1 + 0.6 * x)), 255];
}
export function diverging(v) {
  const [r, g, b] = divergingRGB(v);
  return `rgb(${r},${g},${b})`;
}

// A loss in nats, from pale (expected) to deep red (surprising); 5 nats and more is the deepest.
export function lossColor(loss) {
  const x = Math.min(1, Math.max(0, loss / 5));
  return `rgb(255,${Math.round(250 - 190 * x)},${Math.round(235 - 215 * x)})`;
}

// ---- which run ----

// A line at the top of a view: a picker of the runs (choosing one selects it everywhere) and
// what the last answer looked at. Returns {element, refresh(), about(answer)}.
export function runHeader(app, id) {
  const select = el('select', { id: `${id}-run`, className: 'run-pick' });
  const about = el('span', { id: `${id}-about`, className: 'muted' });
  select.addEventListener('change', () => app.select(select.value || null));
  const element = el('div', { className: 'row look-header' },
    el('label', {}, 'run ', select), about);
  return {
    element,
    async refresh() {
      try {
        const { runs } = await app.api.runs();
        clear(select);
        select.append(el('option', { value: '' }, '(pick a run)'));
        for (const r of runs) select.append(el('option', { value: r.name }, r.name));
        select.value = app.run && runs.some((r) => r.name === app.run) ? app.run : '';
      } catch {
        // The list stays as it was; the view's own request will say what is wrong.
      }
    },
    about(answer) {
      if (!answer) {
        about.textContent = app.run ? '' : 'pick a run (a trained one, or one training now)';
        return;
      }
      about.textContent = answer.live
        ? `step ${answer.step}: the training's parameters at its last evaluation (live)`
        : `step ${answer.step}: its checkpoint`;
      about.dataset.step = String(answer.step);
    },
  };
}

// Runs `fetcher` when the view is visible, again at every evaluation of a training run
// (`live:eval`, bursts merged), and when the selected run changes; a view that is hidden
// when an evaluation arrives refreshes when it is shown.
export function followRun(app, view, fetcher) {
  let stale = true;
  const refresh = throttle(() => {
    if (view.element.hidden) {
      stale = true;
      return;
    }
    stale = false;
    fetcher();
  }, 150);
  app.on('live:eval', refresh);
  app.on('run-selected', () => {
    stale = true;
    refresh();
  });
  return {
    shown() {
      if (stale) refresh();
    },
    now: refresh,
  };
}

// The tail of every request a view makes about the selected run: with no run selected (none
// picked yet, or the selected one deleted), `empty()` clears what the view shows and the header
// asks for a run; otherwise `request(run)` is sent and `draw(answer)` runs with its answer,
// after the header says what it looked at. Requests are numbered, so that an answer (or a
// refusal) that arrives after a later request was sent, or after the run was deselected, is
// dropped: the later one is newer. A refusal shows in `error`, in the server's words.
// Returns ask(request, draw).
export function asker(app, header, error, empty = () => {}) {
  let asked = 0;
  return async (request, draw) => {
    const mine = ++asked;
    error.textContent = '';
    if (!app.run) {
      header.about(null);
      empty();
      return;
    }
    try {
      const got = await request(app.run);
      if (mine !== asked) return;
      header.about(got);
      draw(got);
    } catch (e) {
      if (mine !== asked) return;
      error.textContent = e.message;
    }
  };
}

// ---- the prompt ----

// The prompt a run's views start from: inspect/model's `prompt`, the run's probe (a line of
// the text it learns: Tiny Shakespeare's for a model of it, else the start of a line of the
// run's own text), or null for a run with none yet (before its first evaluation). Kept once
// known; a run deleted and made again under its name is asked again.
const runPrompts = new Map();
let forgetting = false;
async function runPrompt(app, name) {
  if (!forgetting) {
    app.on('runs-changed', () => runPrompts.clear());
    forgetting = true;
  }
  if (runPrompts.has(name)) return runPrompts.get(name);
  let prompt = null;
  try {
    prompt = (await app.api.runModel(name)).prompt ?? null;
  } catch {
    prompt = null; // the view's own request will say what is wrong
  }
  if (prompt !== null) runPrompts.set(name, prompt);
  return prompt;
}

// A view's prompt box, per run: when a run is selected the box shows the run's own prompt
// (so that a model of another text is not asked about Shakespeare, whose characters it may
// lack) unless the user has typed a prompt of their own for that run, which comes back when
// the run is selected again. A run with no prompt yet keeps what the box holds and is asked
// again at the next request (its first evaluation records one).
// Returns {choose(), typed()}: `await choose()` before each request (false: the selected run
// changed meanwhile, and the request for the new one is on its way); typed() when the view
// itself changes the text for the user (a clicked bar appended).
export function promptBox(app, textarea) {
  const typed = new Map(); // run -> the prompt the user typed for it
  let holds = null; // the run whose prompt (its own or the user's) the box holds
  const keep = () => {
    if (!app.run) return;
    typed.set(app.run, textarea.value);
    holds = app.run;
  };
  // 'change' too: a box emptied by a script (WebDriver's clear) fires only that.
  textarea.addEventListener('input', keep);
  textarea.addEventListener('change', keep);
  return {
    async choose() {
      const run = app.run;
      if (!run || holds === run) return true;
      if (!typed.has(run)) {
        const own = await runPrompt(app, run);
        if (run !== app.run) return false;
        // The user may have typed while it was asked.
        if (holds === run || typed.has(run) || own === null) return true;
        textarea.value = own;
      } else {
        textarea.value = typed.get(run);
      }
      holds = run;
      return true;
    },
    typed: keep,
  };
}

// ---- drawings ----

// Bars of the most likely next characters: probs (V) over vocab, at most `count`, zeros left
// out. `onPick(char)` when a bar is clicked.
export function drawBars(element, vocab, probs, { count = 20, onPick = null } = {}) {
  clear(element);
  const order = probs.map((p, i) => [p, i]).filter(([p]) => p > 0)
    .sort((a, b) => b[0] - a[0]).slice(0, count);
  const top = order.length ? order[0][0] : 1;
  for (const [p, i] of order) {
    const bar = el('div', {
      className: `bar${onPick ? ' pickable' : ''}`,
      dataset: { char: vocab[i], p: String(p) },
      title: onPick ? `append ${JSON.stringify(vocab[i])}` : '',
    },
    el('span', { className: 'bar-char' }, shown(vocab[i])),
    el('span', { className: 'bar-track' },
      el('span', { className: 'bar-fill', style: `width:${(100 * p) / top}%` })),
    el('span', { className: 'bar-value' }, percent(p)));
    if (onPick) bar.addEventListener('click', () => onPick(vocab[i]));
    element.append(bar);
  }
}

// An attention map as a canvas of T x T pixels (scaled by CSS, pixelated): rows[t] holds the
// t + 1 weights of query t (keys 0..=t); the masked triangle is grey.
export function mapCanvas(rows, { className = 'map' } = {}) {
  const n = rows.length;
  const canvas = el('canvas', { className, width: n, height: n });
  const ctx = canvas.getContext('2d');
  const image = ctx.createImageData(n, n);
  for (let t = 0; t < n; t++) {
    for (let u = 0; u < n; u++) {
      const at = 4 * (t * n + u);
      const [r, g, b] = u <= t ? heatRGB(rows[t][u] ?? 0) : [215, 218, 224];
      image.data[at] = r;
      image.data[at + 1] = g;
      image.data[at + 2] = b;
      image.data[at + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
  // For the tests: a number that changes when the map does.
  let sum = 0;
  rows.forEach((row, t) => row.forEach((w, u) => { sum += w * (1 + ((t * 31 + u * 7) % 13)); }));
  canvas.dataset.checksum = sum.toFixed(6);
  return canvas;
}

// A grid of maps, one per layer (rows) and head (columns), each with a title and a band that
// marks the query row under the pointer. maps[l][h] = rows. Returns {element, mark(t), select}.
export function mapGrid(maps, { summaries = null, onPick = null, selected = null } = {}) {
  const nLayer = maps.length;
  const nHead = nLayer ? maps[0].length : 0;
  const n = nLayer ? maps[0][0].length : 0;
  const grid = el('div', { className: 'map-grid', style: `grid-template-columns:repeat(${nHead}, minmax(0, 190px))` });
  const bands = [];
  const cells = [];
  for (let l = 0; l < nLayer; l++) {
    for (let h = 0; h < nHead; h++) {
      const band = el('div', { className: 'map-band', hidden: true });
      bands.push(band);
      const s = summaries && summaries[l][h];
      const cell = el('figure', { className: 'head-cell', dataset: { layer: l, head: h } },
        el('figcaption', {}, `layer ${l}, head ${h}`),
        el('div', { className: 'map-box' }, mapCanvas(maps[l][h]), band),
        s ? el('div', { className: 'muted small' },
          `looks back ${s.look_back.toFixed(1)} · prev ${Math.round(100 * s.previous)}% · self ${Math.round(100 * s.itself)}%`) : null);
      if (onPick) cell.addEventListener('click', () => onPick(l, h));
      cells.push(cell);
      grid.append(cell);
    }
  }
  const api = {
    element: grid,
    mark(t) {
      for (const band of bands) {
        band.hidden = t === null || t === undefined;
        band.style.top = `${(100 * t) / n}%`;
        band.style.height = `${Math.max(100 / n, 1.5)}%`;
      }
      grid.dataset.query = t === null || t === undefined ? '' : String(t);
    },
    select(l, h) {
      for (const cell of cells) {
        cell.classList.toggle('selected', Number(cell.dataset.layer) === l && Number(cell.dataset.head) === h);
      }
    },
  };
  if (selected) api.select(...selected);
  return api;
}

// Text coloured by each character's loss. `text` is an array of characters; losses[i] belongs
// to character i + offset (the first `offset` are not scored, shown grey). `describe(i)` gives
// the hover text of scored character i (index into losses).
export function surpriseText(element, text, losses, { offset = 1, describe = null, tip = null } = {}) {
  clear(element);
  text.forEach((c, i) => {
    const k = i - offset;
    const scored = k >= 0 && k < losses.length;
    const span = el('span', {
      className: scored ? 'ch' : 'ch unscored',
      dataset: scored ? { i: String(k), loss: String(losses[k]) } : {},
    }, c === '\n' ? '⏎' : c);
    if (scored) span.style.background = lossColor(losses[k]);
    if (scored && describe && tip) {
      span.addEventListener('mouseenter', () => {
        tip.hidden = false;
        clear(tip);
        tip.append(...describe(k));
        const box = span.getBoundingClientRect();
        tip.style.left = `${Math.min(window.innerWidth - 320, box.left + window.scrollX)}px`;
        tip.style.top = `${box.bottom + window.scrollY + 4}px`;
        element.dataset.hovered = String(k);
      });
      span.addEventListener('mouseleave', () => { tip.hidden = true; });
    }
    element.append(span);
    if (c === '\n') element.append('\n');
  });
}

// The scatter of the characters on two principal components, labelled and coloured by kind.
const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}
export { svg };

// With `counts` (each character's count in the text), rare characters (rareCharacters) are
// small dots, labelled while the pointer is on them; returns how many were drawn so.
export function drawScatter(element, vocab, points, explained, { width = 620, height = 460, counts = null } = {}) {
  clear(element);
  const pad = 36;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const span = (v) => {
    const lo = Math.min(...v);
    const hi = Math.max(...v);
    const extra = (hi - lo) * 0.05 || 1;
    return [lo - extra, hi + extra];
  };
  const [x0, x1] = span(xs);
  const [y0, y1] = span(ys);
  const X = (x) => pad + ((x - x0) / (x1 - x0)) * (width - 2 * pad);
  const Y = (y) => height - pad - ((y - y0) / (y1 - y0)) * (height - 2 * pad);
  const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'scatter' });
  root.append(svg('rect', { x: pad, y: pad / 2, width: width - 2 * pad, height: height - 1.5 * pad, fill: '#fff', stroke: '#d9dee7' }));
  if (x0 < 0 && x1 > 0) root.append(svg('line', { x1: X(0), x2: X(0), y1: pad / 2, y2: height - pad, stroke: '#eef0f4' }));
  if (y0 < 0 && y1 > 0) root.append(svg('line', { x1: pad, x2: width - pad, y1: Y(0), y2: Y(0), stroke: '#eef0f4' }));
  root.append(svg('text', { x: width / 2, y: height - 8, 'text-anchor': 'middle', class: 'axis' },
    `first principal component (${(100 * explained[0]).toFixed(1)}% of the variance)`));
  root.append(svg('text', { x: 12, y: height / 2, transform: `rotate(-90 12 ${height / 2})`, 'text-anchor': 'middle', class: 'axis' },
    `second (${(100 * explained[1]).toFixed(1)}%)`));
  const rare = rareCharacters(counts) ?? vocab.map(() => false);
  const about = (c, i, kind) => `${JSON.stringify(c)} (${kind}${counts ? `, ${counts[i].toLocaleString('en-US')} in the text` : ''}): ${num(points[i][0])}, ${num(points[i][1])}`;
  // The rare ones first, under the labels; one label follows the pointer over them.
  const hover = svg('text', { class: 'hover-label', 'text-anchor': 'middle', visibility: 'hidden' });
  vocab.forEach((c, i) => {
    if (!rare[i]) return;
    const kind = charClass(c);
    const x = X(points[i][0]);
    const y = Y(points[i][1]);
    const dot = svg('circle', { cx: x, cy: y, r: 3, fill: CLASS_COLORS[kind], class: 'point rare', 'data-char': c });
    dot.append(svg('title', {}, about(c, i, kind)));
    dot.addEventListener('mouseenter', () => {
      hover.textContent = shown(c);
      hover.setAttribute('x', x);
      hover.setAttribute('y', y - 9);
      hover.setAttribute('fill', CLASS_COLORS[kind]);
      hover.setAttribute('visibility', 'visible');
    });
    dot.addEventListener('mouseleave', () => hover.setAttribute('visibility', 'hidden'));
    root.append(dot);
  });
  vocab.forEach((c, i) => {
    if (rare[i]) return;
    const kind = charClass(c);
    const label = c === ' ' ? '␣' : c === '\n' ? '⏎' : c;
    const text = svg('text', { x: X(points[i][0]), y: Y(points[i][1]), 'text-anchor': 'middle', 'dominant-baseline': 'central', fill: CLASS_COLORS[kind], class: 'point', 'data-char': c },
      label);
    text.append(svg('title', {}, about(c, i, kind)));
    root.append(text);
  });
  root.append(hover);
  element.append(root);
  const legend = el('div', { className: 'legend' });
  for (const [kind, color] of Object.entries(CLASS_COLORS)) {
    if (vocab.some((c) => charClass(c) === kind)) {
      legend.append(el('span', {}, el('span', { className: 'swatch', style: `background:${color}` }), kind));
    }
  }
  element.append(legend);
  const drawnRare = rare.filter(Boolean).length;
  element.dataset.rare = String(drawnRare);
  return drawnRare;
}

// A square matrix of values in -1..1 (row-major, n x n) as a canvas, blue-white-red, with a
// few position ticks.
export function drawCosine(element, values, n, { size = 360 } = {}) {
  clear(element);
  const canvas = el('canvas', { className: 'cosine', width: n, height: n });
  const ctx = canvas.getContext('2d');
  const image = ctx.createImageData(n, n);
  for (let i = 0; i < n * n; i++) {
    const [r, g, b] = divergingRGB(values[i]);
    image.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
  canvas.style.width = `${size}px`;
  canvas.style.height = `${size}px`;
  const ticks = el('div', { className: 'muted small' },
    `positions 0 to ${n - 1} on both axes (row i, column j: cos(wpe[i], wpe[j])); `,
    el('span', { className: 'swatch', style: `background:${diverging(-1)}` }), '−1 ',
    el('span', { className: 'swatch', style: `background:${diverging(0)};border:1px solid #ccc` }), '0 ',
    el('span', { className: 'swatch', style: `background:${diverging(1)}` }), '1');
  element.append(canvas, ticks);
}
