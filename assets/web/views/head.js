// One head, step by step: pick a prompt, a position t, a layer and a head, and follow what that
// head computes for t, each formula beside the model's real numbers, from its input row to its
// output. The numbers come from chargpt::inspect::head_trace (a real forward pass's q, k and v,
// then each step recomputed from them) and the answer also carries the fast forward pass's own
// weights and output, to show they agree.
//
// The server lists the steps it computed, in order, with their shapes: this view draws each by
// its `id` and shows an id it does not know generically, so the trace can grow (other norms,
// rotary positions) without this file assuming what a block holds.

import { el, clear } from './util.js';
import { runHeader, followRun, asker, promptBox, shown, num, diverging, heat, debounce } from './look.js';

let app;
let header;
let follow;
let prompt;
let layer;
let head;
let position;
let positionLabel;
let steps;
let check;
let error;
let ask;
let box; // the prompt per run: its own, or the one the user typed for it

// A link that opens a file of the project at a line: the paragraph of docs/ or the function that
// computes a step. `find` is text the file contains (src/serve/assets.rs's tests check every
// one against the files the server embeds).
function link(file, find, label) {
  const href = `read.html?file=${encodeURIComponent(file)}&find=${encodeURIComponent(find)}`;
  return el('a', { href, target: '_blank', className: 'source-link', dataset: { file, find } }, label);
}

const M = (body) => `<math display="block">${body}</math>`;
const sub = (a, b) => `<msub><mi>${a}</mi><mi>${b}</mi></msub>`;

// What each step is: its title, formula (MathML), what it means, and where it is computed.
function describe(id, trace) {
  const hs = trace.head_size;
  const scaleBy = trace.scale_by === 'n_embd'
    ? `<msqrt><mi>C</mi></msqrt>` : `<msqrt><mi>hs</mi></msqrt>`;
  const scaleText = trace.scale_by === 'n_embd' ? `1/√C = 1/√${trace.n_embd}` : `1/√hs = 1/√${hs}`;
  const known = {
    input: {
      title: 'the block\'s input at position t',
      formula: M(`${sub('x', 't')}<mo>∈</mo><msup><mi>ℝ</mi><mi>C</mi></msup>`),
      text: trace.layer > 0
        ? `Row t of the residual stream after block ${trace.layer - 1}.`
        : trace.rope
          ? 'Row t of the token embedding: what enters the first block. With RoPE there is no position embedding; the position enters below, when q and k are rotated.'
          : 'Row t of the token embedding plus the position embedding: what enters the first block.',
      links: [link('docs/how-it-works.md', '**Embedding.**', 'How it works: Embedding'),
        link('src/reference/model.rs', 'fn block_forward(', 'reference: block_forward'),
        link('src/model/forward.rs', 'fn block_forward(', 'fast: Model::block_forward')],
    },
    layernorm: {
      title: 'LayerNorm',
      formula: M(`${sub('x̂', 't')}<mo>=</mo><mfrac><mrow>${sub('x', 't')}<mo>−</mo><mi>μ</mi></mrow><msqrt><msup><mi>σ</mi><mn>2</mn></msup><mo>+</mo><mi>ε</mi></msqrt></mfrac><mo>⊙</mo><mi>w</mi>${trace.norm_bias === false ? '' : '<mo>+</mo><mi>b</mi>'}`),
      text: trace.norm_bias === false
        ? 'The row brought to mean 0 and variance 1, then scaled by the learned weight (ln1 of this block; bias=false: no shift).'
        : 'The row brought to mean 0 and variance 1, then scaled and shifted by the learned weight and bias (ln1 of this block).',
      links: [link('docs/how-it-works.md', '**LayerNorm.**', 'How it works: LayerNorm'),
        link('src/reference/layers.rs', 'pub fn layernorm_forward(', 'reference: layernorm_forward'),
        link('src/kernels/layernorm.rs', 'pub fn forward(', 'fast: layernorm::forward')],
    },
    rmsnorm: {
      title: 'RMSNorm',
      formula: M(`${sub('x̂', 't')}<mo>=</mo><mfrac>${sub('x', 't')}<msqrt><mfrac><mn>1</mn><mi>C</mi></mfrac><msub><mo>∑</mo><mi>i</mi></msub><msubsup><mi>x</mi><mi>ti</mi><mn>2</mn></msubsup><mo>+</mo><mi>ε</mi></msqrt></mfrac><mo>⊙</mo><mi>w</mi>`),
      text: 'The row divided by its root mean square (no mean subtracted, no shift), then scaled by the learned weight (ln1 of this block).',
      links: [link('docs/beyond-the-lecture.md', '**RMSNorm**', 'Beyond the lecture: RMSNorm'),
        link('src/reference/layers.rs', 'pub fn rmsnorm_forward(', 'reference: rmsnorm_forward'),
        link('src/kernels/rmsnorm.rs', 'pub fn forward(', 'fast: rmsnorm::forward')],
    },
    q_linear: {
      title: 'the query, from the weights',
      formula: M(`${sub('q′', 't')}<mo>=</mo>${sub('x̂', 't')}<msubsup><mi>W</mi><mi>q</mi><mi>T</mi></msubsup>`),
      text: `This head's ${hs} rows of the query part of attn.qkv.weight times the normed row: the query before ${[trace.qk_norm ? 'QK-norm' : '', trace.rope ? 'the rotation' : ''].filter(Boolean).join(' and ')}.`,
      links: [link('docs/how-it-works.md', '**Queries, keys and values.**', 'How it works: Queries, keys and values'),
        link('src/reference/layers.rs', 'pub fn linear_forward(', 'reference: linear_forward'),
        link('src/kernels/matmul.rs', 'pub fn forward<', 'fast: matmul::forward')],
    },
    q: trace.qk_norm || trace.rope ? {
      title: 'the query, as the scores read it',
      formula: M(`${sub('q', 't')}<mo>=</mo>${trace.rope ? `<msub><mi>R</mi><mi>t</mi></msub>` : ''}${trace.qk_norm ? `<mo>(</mo><mfrac>${sub('q′', 't')}<mrow><mi>rms</mi><mo>(</mo>${sub('q′', 't')}<mo>)</mo></mrow></mfrac><mo>⊙</mo>${sub('w', 'q')}<mo>)</mo>` : sub('q′', 't')}`),
      text: [trace.qk_norm ? `QK-norm: divided by its root mean square and scaled by attn.q_norm.weight (${hs} gains shared by the heads), so that no score can grow without bound.` : '',
        trace.rope ? `RoPE: each pair of numbers (2i, 2i+1) turned by the angle t·10000^(−2i/${hs}); a key turned likewise by u makes q·k depend on t − u only.` : ''].filter(Boolean).join(' '),
      links: [
        trace.qk_norm ? link('docs/beyond-the-lecture.md', '**QK-norm**', 'Beyond the lecture: QK-norm') : null,
        trace.rope ? link('docs/beyond-the-lecture.md', '**Rotary position embedding**', 'Beyond the lecture: RoPE') : null,
        trace.qk_norm ? link('src/reference/layers.rs', 'pub fn qk_norm_forward(', 'reference: qk_norm_forward') : null,
        trace.rope ? link('src/reference/layers.rs', 'pub fn rope_forward(', 'reference: rope_forward') : null,
        trace.qk_norm ? link('src/kernels/rmsnorm.rs', 'pub fn qk_forward(', 'fast: rmsnorm::qk_forward') : null,
        trace.rope ? link('src/kernels/rope.rs', 'pub fn apply(', 'fast: rope::apply') : null,
      ].filter(Boolean),
    } : {
      title: 'the query',
      formula: M(`${sub('q', 't')}<mo>=</mo>${sub('x̂', 't')}<msubsup><mi>W</mi><mi>q</mi><mi>T</mi></msubsup>`),
      text: `What position t is looking for: ${hs} numbers, from this head's ${hs} rows of the query part of attn.qkv.weight.`,
      links: [link('docs/how-it-works.md', '**Queries, keys and values.**', 'How it works: Queries, keys and values'),
        link('src/reference/layers.rs', 'pub fn linear_forward(', 'reference: linear_forward'),
        link('src/kernels/matmul.rs', 'pub fn forward<', 'fast: matmul::forward')],
    },
    k: {
      title: 'the keys of every visible position',
      formula: M(`${sub('k', 'u')}<mo>=</mo>${sub('x̂', 'u')}<msubsup><mi>W</mi><mi>k</mi><mi>T</mi></msubsup><mo>,</mo><mspace width="1em"/><mi>u</mi><mo>≤</mo><mi>t</mi>`),
      text: trace.qk_norm || trace.rope
        ? `What each position offers to be found by: one row per position u ≤ t, ${[trace.qk_norm ? 'normed as the query is (with attn.k_norm.weight)' : '', trace.rope ? 'rotated by its own position u' : ''].filter(Boolean).join(' and ')}.`
        : 'What each position offers to be found by: one row per position u ≤ t.',
      links: [link('docs/how-it-works.md', '**Queries, keys and values.**', 'How it works: Queries, keys and values'),
        link('src/reference/layers.rs', 'pub fn linear_forward(', 'reference: linear_forward'),
        link('src/kernels/matmul.rs', 'pub fn forward<', 'fast: matmul::forward')],
    },
    v: {
      title: 'the values of every visible position',
      formula: M(`${sub('v', 'u')}<mo>=</mo>${sub('x̂', 'u')}<msubsup><mi>W</mi><mi>v</mi><mi>T</mi></msubsup>`),
      text: 'What each position passes on when it is looked at.',
      links: [link('docs/how-it-works.md', '**Queries, keys and values.**', 'How it works: Queries, keys and values'),
        link('src/reference/layers.rs', 'pub fn linear_forward(', 'reference: linear_forward'),
        link('src/kernels/matmul.rs', 'pub fn forward<', 'fast: matmul::forward')],
    },
    dots: {
      title: 'scores: query against every key',
      formula: M(`${sub('q', 't')}<mo>·</mo>${sub('k', 'u')}<mo>=</mo><munderover><mo>∑</mo><mi>i</mi><mi>hs</mi></munderover><msub><mi>q</mi><mrow><mi>t</mi><mi>i</mi></mrow></msub><msub><mi>k</mi><mrow><mi>u</mi><mi>i</mi></mrow></msub>`),
      text: 'Large when the key matches what the query looks for.',
      links: [link('docs/how-it-works.md', '**Scaling.**', 'How it works: Scaling'),
        link('src/reference/layers.rs', 'pub fn attention_scores(', 'reference: attention_scores'),
        link('src/kernels/attention/mod.rs', 'unsafe fn head_forward_rows(', 'fast: head_forward_rows')],
    },
    scale: {
      title: `scaled by ${scaleText}`,
      formula: M(`${sub('s', 'u')}<mo>=</mo><mfrac><mrow>${sub('q', 't')}<mo>·</mo>${sub('k', 'u')}</mrow>${scaleBy}</mfrac>`),
      text: `Times ${num(trace.scale, 4)}: keeps the scores near unit variance, so the softmax starts soft.`,
      links: [link('docs/how-it-works.md', '**Scaling.**', 'How it works: Scaling'),
        link('src/reference/layers.rs', 'pub fn scale(', 'reference: scale'),
        link('src/config.rs', 'pub fn attention_scale_factor(', 'fast: ModelConfig::attention_scale_factor')],
    },
    mask: {
      title: 'the causal mask',
      formula: M(`${sub('s', 'u')}<mo>=</mo><mo>−</mo><mi>∞</mi><mspace width="1em"/><mtext>for</mtext><mspace width="0.5em"/><mi>u</mi><mo>&gt;</mo><mi>t</mi>`),
      text: 'Position t never sees the characters after it: their scores become −∞, and their weights 0.',
      links: [link('docs/how-it-works.md', '**Causal mask.**', 'How it works: Causal mask'),
        link('src/reference/layers.rs', 'pub fn causal_mask(', 'reference: causal_mask'),
        link('src/kernels/attention/mod.rs', 'fn softmax_causal(', 'fast: softmax_causal')],
    },
    softmax: {
      title: 'softmax: the weights',
      formula: M(`${sub('a', 'u')}<mo>=</mo><mfrac><msup><mi>e</mi><mrow>${sub('s', 'u')}<mo>−</mo><mi>max</mi></mrow></msup><mrow><msub><mo>∑</mo><mi>w</mi></msub><msup><mi>e</mi><mrow>${sub('s', 'w')}<mo>−</mo><mi>max</mi></mrow></msup></mrow></mfrac>`),
      text: 'Positive, summing to 1: how much of each position\'s value position t takes.',
      links: [link('docs/how-it-works.md', '**Softmax.**', 'How it works: Softmax'),
        link('src/reference/layers.rs', 'pub fn softmax_forward(', 'reference: softmax_forward'),
        link('src/kernels/attention/mod.rs', 'fn softmax_causal(', 'fast: softmax_causal')],
    },
    output: {
      title: 'the weighted sum of the values',
      formula: M(`${sub('o', 't')}<mo>=</mo><munder><mo>∑</mo><mrow><mi>u</mi><mo>≤</mo><mi>t</mi></mrow></munder>${sub('a', 'u')}${sub('v', 'u')}`),
      text: `This head's ${hs} numbers of the attention output at t; the heads' outputs are concatenated${trace.n_head > 1 ? ` (this one is channels ${trace.head * hs} to ${(trace.head + 1) * hs - 1})` : ''}.`,
      links: [link('docs/how-it-works.md', '**Softmax.**', 'How it works: Softmax'),
        link('src/reference/layers.rs', 'pub fn attention_weighted_sum(', 'reference: attention_weighted_sum'),
        link('src/kernels/mod.rs', 'fn weighted_rows(', 'fast: weighted_rows')],
    },
  };
  return known[id] || { title: id, formula: '', text: '', links: [] };
}

// A vector as a strip of coloured cells (blue negative, red positive), the numbers on hover,
// the first few written out.
function vectorCells(values, { labels = null, scale = null, kind = 'diverging' } = {}) {
  const finite = values.filter((v) => v !== null);
  const max = scale ?? Math.max(1e-9, ...finite.map((v) => Math.abs(v)));
  const strip = el('div', { className: 'cells' });
  values.forEach((v, i) => {
    const colour = v === null ? '#d7dae0' : kind === 'weights' ? heat(v) : diverging(v / max);
    const cell = el('span', { className: 'cell', title: `${labels ? `${JSON.stringify(labels[i])} ` : `[${i}] `}${num(v, 4)}` },
      labels ? shown(labels[i]) : '');
    cell.style.background = colour;
    if (kind === 'weights' && v > 0.5) cell.style.color = '#000';
    else if (kind === 'weights' && v !== null) cell.style.color = '#fff';
    strip.append(cell);
  });
  const shownCount = Math.min(values.length, 8);
  const text = values.slice(0, shownCount).map((v) => num(v)).join('  ');
  return el('div', {}, strip,
    el('div', { className: 'numbers' }, `[${text}${values.length > shownCount ? '  …' : ''}]  (${values.length} numbers)`));
}

// A (rows, cols) matrix as one canvas of coloured cells (blue negative, red positive), each row
// labelled with its character, the number under the pointer in the tooltip. A canvas, not a
// cell element per number: a 128-character prompt gives 2 x 128 x hs numbers, and that many
// elements took the page a few hundred milliseconds to lay out at every request.
function matrixRows(values, shape, labels) {
  const [rows, cols] = shape;
  const [w, h, gap] = [7, 9, 1];
  const max = Math.max(1e-9, ...values.map((v) => Math.abs(v ?? 0)));
  const canvas = el('canvas', { className: 'matrix-canvas', width: cols * (w + gap), height: rows * (h + gap) });
  const ctx = canvas.getContext('2d');
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      ctx.fillStyle = diverging(values[r * cols + c] / max);
      ctx.fillRect(c * (w + gap), r * (h + gap), w, h);
    }
  }
  canvas.addEventListener('mousemove', (e) => {
    const box = canvas.getBoundingClientRect();
    const c = Math.floor((e.clientX - box.left) / (w + gap));
    const r = Math.floor((e.clientY - box.top) / (h + gap));
    if (r >= 0 && r < rows && c >= 0 && c < cols) {
      canvas.title = `${JSON.stringify(labels[r])} [${c}] ${num(values[r * cols + c], 4)}`;
    }
  });
  const names = el('div', { className: 'matrix-labels' },
    ...labels.slice(0, rows).map((l) => el('code', { className: 'row-label' }, shown(l))));
  return el('div', { className: 'matrix' }, names, canvas);
}

function render(trace) {
  clear(steps);
  const visible = trace.tokens.slice(0, trace.position + 1);
  for (const s of trace.steps) {
    const d = describe(s.id, trace);
    let values;
    if (s.shape.length === 2) values = matrixRows(s.values, s.shape, visible);
    else if (s.id === 'mask') values = vectorCells(s.values, { labels: trace.tokens });
    else if (s.id === 'softmax') values = vectorCells(s.values, { labels: visible, kind: 'weights' });
    else if (s.shape[0] === visible.length && ['dots', 'scale'].includes(s.id)) values = vectorCells(s.values, { labels: visible });
    else values = vectorCells(s.values);
    const formula = el('div', { className: 'formula' });
    formula.innerHTML = d.formula; // static MathML written above, never from the server
    steps.append(el('section', { className: 'step', dataset: { id: s.id } },
      el('div', { className: 'step-head' },
        el('h3', {}, d.title),
        el('span', { className: 'muted small' }, `shape (${s.shape.join(', ')})`)),
      el('div', { className: 'step-body' },
        formula,
        el('div', { className: 'step-values' }, values, el('p', { className: 'muted small' }, d.text))),
      el('div', { className: 'links' }, ...d.links)));
  }
  const f = trace.forward;
  check.textContent = `The fast forward pass, run on the same prompt, gives this head at position ${trace.position} the same softmax weights (largest difference ${f.weights_diff.toExponential(1)}) and the same output (largest difference ${f.output_diff.toExponential(1)}).`;
  check.dataset.weightsDiff = String(f.weights_diff);
}

function fillSelect(select, n, value) {
  if (select.options.length !== n) {
    clear(select);
    for (let i = 0; i < n; i++) select.append(el('option', { value: String(i) }, String(i)));
  }
  select.value = String(Math.min(value, n - 1));
}

async function fetchNow() {
  const before = prompt.value;
  if (!(await box.choose())) return undefined;
  // A new prompt (another run's): its last position, not the one picked on the old one.
  if (prompt.value !== before) delete position.dataset.touched;
  const request = {
    prompt: prompt.value,
    layer: Number(layer.value || 0),
    head: Number(head.value || 0),
  };
  if (position.dataset.touched) request.position = Number(position.value);
  return ask((run) => app.api.inspectHead(run, request), (got) => {
    fillSelect(layer, got.n_layer, got.layer);
    fillSelect(head, got.n_head, got.head);
    position.max = String(got.tokens.length - 1);
    position.value = String(got.position);
    positionLabel.textContent = `${got.position}: ${JSON.stringify(got.tokens[got.position])} (after ${JSON.stringify(got.tokens.slice(Math.max(0, got.position - 12), got.position).join(''))})`;
    steps.dataset.step = String(got.step);
    steps.dataset.position = String(got.position);
    render(got);
  });
}

const view = {
  id: 'head',
  title: 'One head',
  mount(element, shared) {
    app = shared;
    header = runHeader(app, 'head');
    prompt = el('textarea', { id: 'head-prompt', rows: 2, cols: 70, value: 'ROMEO:\nIt is the east, and Juliet is the sun.' });
    box = promptBox(app, prompt);
    prompt.addEventListener('input', debounce(() => {
      delete position.dataset.touched;
      fetchNow();
    }, 150));
    layer = el('select', { id: 'head-layer' });
    head = el('select', { id: 'head-head' });
    position = el('input', { id: 'head-position', type: 'range', min: 0, max: 0, step: 1, value: 0 });
    positionLabel = el('span', { id: 'head-position-label', className: 'muted' });
    layer.addEventListener('change', fetchNow);
    head.addEventListener('change', fetchNow);
    position.addEventListener('input', debounce(() => {
      position.dataset.touched = 'true';
      fetchNow();
    }, 60));
    steps = el('div', { id: 'head-steps' });
    check = el('p', { id: 'head-check', className: 'check' });
    error = el('div', { id: 'head-error', className: 'error' });
    ask = asker(app, header, error, () => {
      clear(steps);
      delete steps.dataset.step;
      delete steps.dataset.position;
      check.textContent = '';
      positionLabel.textContent = '';
    });
    element.append(
      el('h2', {}, 'One head, step by step'),
      header.element,
      el('p', { className: 'muted' }, 'Every number one attention head computes for one position of the prompt, with this model\'s parameters. Each step links to the paragraph of the docs that explains it and to the functions that compute it: the reference engine\'s (plain loops, the one to read) and the fast engine\'s.'),
      prompt,
      el('div', { className: 'row' },
        el('label', {}, 'layer ', layer), el('label', {}, 'head ', head),
        el('label', {}, 'position ', position), positionLabel),
      error, steps, check,
      el('p', { className: 'muted small' }, 'The trace: ',
        link('src/inspect/mod.rs', 'pub fn head_trace(', 'chargpt::inspect::head_trace'),
        ' reads q, k and v from a forward pass and recomputes each step from them.'));
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
