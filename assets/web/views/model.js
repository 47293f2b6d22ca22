// The model: a diagram of its layers in order, each with what it computes, the shape of what
// comes out for one sequence of T characters, and its parameter count, drawn from the parts the
// server lists (chargpt::inspect::model_parts, built from the parameter layout: every parameter
// is in exactly one part). Any run's model, or any preset's (at a vocabulary of 65).

import { el, clear } from './util.js';
import { svg } from './look.js';

let app;
let source;
let diagram;
let summary;
let table;
let error;
let presetsLoaded = false;

const FILL = {
  embedding: '#e0ecff',
  norm: '#f1f3f6',
  attention: '#ffe8cc',
  'feed-forward': '#dcfae6',
  residual: '#ffffff',
  linear: '#e0ecff',
  softmax: '#f4ebff',
};

const count = (n) => n.toLocaleString('en-US');

// The width in pixels of `text` in the diagram's type (its CSS: 14px semibold names, 12px
// details and shapes), measured before anything is drawn, so that each box can be made tall
// enough for its text, wrapped to the box's width.
let ruler = null;
function textWidth(text, font) {
  if (!ruler) ruler = document.createElement('canvas').getContext('2d');
  ruler.font = `${font} ${getComputedStyle(document.documentElement).fontFamily}`;
  return ruler.measureText(text).width;
}
const NAME_FONT = '600 14px';
const SMALL_FONT = '12px';

// `text` cut into lines at most `width` pixels wide, at spaces (a word longer than a line gets
// a line of its own).
function wrap(text, width, font) {
  const lines = [];
  let line = '';
  for (const word of text.split(' ')) {
    const longer = line ? `${line} ${word}` : word;
    if (line && textWidth(longer, font) > width) {
      lines.push(line);
      line = word;
    } else {
      line = longer;
    }
  }
  if (line) lines.push(line);
  return lines;
}

function draw(answer) {
  const { parts, config } = answer;
  clear(diagram);
  const width = 800;
  const boxX = 40;
  const boxW = 660;
  const boxH = 50;
  const gap = 22;
  const items = [];
  let y = 14;
  const input = { y, h: 26 };
  y += input.h + gap;
  const pad = 10;
  const lineH = 16;
  // Where each box's text goes: the name, then the output shape and parameters on the same
  // line at the right if they fit beside it (else on a line of their own), then the detail
  // wrapped to the box. The box grows to hold them.
  const layout = (part) => {
    if (part.kind === 'residual') {
      const label = `⊕ ${part.detail}`;
      return { label, h: 30, w: Math.max(220, textWidth(label, NAME_FONT) + 36) };
    }
    const params = `→ ${part.dims} (${part.output.join(' × ')}) · ${part.params ? `${count(part.params)} params` : 'no parameters'}`;
    const beside = textWidth(part.name, NAME_FONT) + textWidth(params, SMALL_FONT) + 3 * pad <= boxW;
    const detail = wrap(part.detail, boxW - 2 * pad, SMALL_FONT);
    // The baselines as drawn below: the name at 19, the shape line 16 below it when not
    // beside, the detail's lines 19 below the line above, then 16 apart; 12 below the last.
    const last = 19 + (beside ? 0 : lineH) + 3 + lineH * detail.length;
    return { params, beside, detail, h: Math.max(boxH, last + 12) };
  };
  const place = (part, inBlock) => {
    const text = layout(part);
    items.push({ part, y, h: text.h, inBlock, text });
    y += text.h + gap;
  };
  parts.before.forEach((p) => {
    if (p.kind !== 'softmax') place(p, false);
  });
  let blockTop = null;
  let blockBottom = null;
  if (parts.block.length) {
    y += 18;
    blockTop = y - 12;
    parts.block.forEach((p) => place(p, true));
    blockBottom = y - gap + 10;
    y += 12;
  }
  parts.after.forEach((p) => place(p, false));
  parts.before.filter((p) => p.kind === 'softmax').forEach((p) => place(p, false));
  const height = y + 10;
  const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'model-diagram', id: 'model-svg' });
  const defs = svg('defs');
  const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
  marker.append(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#667085' }));
  defs.append(marker);
  root.append(defs);
  // The input.
  root.append(svg('text', { x: boxX + boxW / 2, y: input.y + 17, 'text-anchor': 'middle', class: 'diagram-input' },
    `T = ${config.block_size} characters (ids 0 to ${config.vocab_size - 1})`));
  if (blockTop !== null) {
    root.append(svg('rect', { x: boxX - 24, y: blockTop, width: boxW + 80, height: blockBottom - blockTop, rx: 10, fill: 'none', stroke: '#1f5fbf', 'stroke-dasharray': '6 4', class: 'block-frame' }));
    root.append(svg('text', { x: boxX - 14, y: blockTop - 6, class: 'block-label' },
      `block × ${parts.n_layer} (blocks.0 to blocks.${parts.n_layer - 1}), ${count(parts.block_params)} parameters each`));
  }
  let previousBottom = input.y + input.h;
  let segmentStart = null;
  for (const item of items) {
    const { part } = item;
    const cx = boxX + boxW / 2;
    root.append(svg('line', { x1: cx, y1: previousBottom + 2, x2: cx, y2: item.y - 2, stroke: '#667085', 'marker-end': 'url(#arrow)' }));
    if (item.inBlock && segmentStart === null) segmentStart = previousBottom + 6;
    const group = svg('g', { class: 'part', 'data-kind': part.kind, 'data-name': part.name, 'data-params': String(part.params) });
    const { text } = item;
    if (part.kind === 'residual') {
      const half = text.w / 2;
      group.append(svg('rect', { x: cx - half, y: item.y, width: text.w, height: item.h, rx: 15, fill: FILL.residual, stroke: '#667085' }));
      group.append(svg('text', { x: cx, y: item.y + 19, 'text-anchor': 'middle', class: 'part-name' }, text.label));
      // The skip connection: from the block's input (or the previous add) around the sublayer.
      const right = boxX + boxW + 36;
      root.append(svg('path', { d: `M ${cx} ${segmentStart} H ${right} V ${item.y + item.h / 2} H ${cx + half + 2}`, fill: 'none', stroke: '#1f5fbf', 'marker-end': 'url(#arrow)', class: 'skip' }));
      segmentStart = item.y + item.h + 6;
    } else {
      group.append(svg('rect', { x: boxX, y: item.y, width: boxW, height: item.h, rx: 6, fill: FILL[part.kind] || '#fff', stroke: '#98a2b3' }));
      group.append(svg('text', { x: boxX + pad, y: item.y + 19, class: 'part-name' }, part.name));
      let baseline = item.y + 19;
      if (text.beside) {
        group.append(svg('text', { x: boxX + boxW - pad, y: baseline, 'text-anchor': 'end', class: 'part-params' }, text.params));
      } else {
        baseline += lineH;
        group.append(svg('text', { x: boxX + pad, y: baseline, class: 'part-params' }, text.params));
      }
      baseline += 19 - lineH;
      for (const line of text.detail) {
        baseline += lineH;
        group.append(svg('text', { x: boxX + pad, y: baseline, class: 'part-detail' }, line));
      }
      group.append(svg('title', {}, part.tensors.map((t) => `${t.name} (${t.shape.join(' × ')})`).join('\n') || part.name));
    }
    root.append(group);
    previousBottom = item.y + item.h;
  }
  diagram.append(root);
  const sum = parts.before.concat(parts.after).reduce((s, p) => s + p.params, 0) + parts.n_layer * parts.block_params;
  summary.textContent = `${answer.preset ? `preset ${answer.preset}` : answer.name}: ${count(parts.total_params)} parameters`
    + ` (V = ${config.vocab_size} characters, T = ${config.block_size}${config.architecture === 'bigram' ? '' : `, C = ${config.n_embd}, ${config.n_layer} block${config.n_layer === 1 ? '' : 's'} of ${config.n_head} head${config.n_head === 1 ? '' : 's'}`})`
    + `${sum === parts.total_params ? '' : ` — the parts add up to ${count(sum)}!`}`;
  summary.dataset.total = String(parts.total_params);
  summary.dataset.sum = String(sum);
  clear(table);
  table.append(el('tr', {}, el('th', {}, 'tensor'), el('th', {}, 'shape'), el('th', {}, 'parameters')));
  for (const t of parts.tensors) {
    table.append(el('tr', {}, el('td', {}, el('code', {}, t.name)), el('td', {}, t.shape.join(' × ')),
      el('td', { className: 'num' }, count(t.params))));
  }
}

async function load() {
  error.textContent = '';
  const value = source.value;
  if (!value) return;
  try {
    const answer = value.startsWith('run:')
      ? await app.api.runModel(value.slice(4))
      : await app.api.presetModel(value.slice(7));
    if (source.value !== value) return;
    diagram.dataset.source = value;
    draw(answer);
  } catch (e) {
    error.textContent = e.message;
  }
}

async function fillSources() {
  const keep = source.value;
  if (!presetsLoaded) {
    const { presets } = await app.api.presets();
    const group = el('optgroup', { label: 'presets' });
    for (const p of presets) group.append(el('option', { value: `preset:${p.name}` }, p.name));
    source.append(group);
    presetsLoaded = true;
  }
  const run = source.querySelector('option.run');
  if (run) run.remove();
  if (app.run) {
    source.prepend(el('option', { className: 'run', value: `run:${app.run}` }, `run ${app.run}`));
  }
  source.value = keep && [...source.options].some((o) => o.value === keep) ? keep
    : app.run ? `run:${app.run}` : 'preset:default';
}

export default {
  id: 'model',
  title: 'The model',
  mount(element, shared) {
    app = shared;
    source = el('select', { id: 'model-source' });
    source.addEventListener('change', load);
    diagram = el('div', { id: 'model-diagram' });
    summary = el('p', { id: 'model-summary' });
    table = el('table', { id: 'model-tensors', className: 'tensors' });
    error = el('div', { id: 'model-error', className: 'error' });
    element.append(
      el('h2', {}, 'The model, layer by layer'),
      el('div', { className: 'row' }, el('label', {}, 'model of ', source)),
      el('p', { className: 'muted' }, 'Top to bottom, what one sequence of T characters goes through; on the right, the shape of what comes out of each part (T positions × C channels, or × V characters). Hover a box for its tensors.'),
      error, summary, diagram,
      el('details', {}, el('summary', {}, 'every tensor, as the checkpoint names it'), table));
    app.on('run-selected', () => {
      source.value = '';
      if (!element.hidden) fillSources().then(load);
    });
  },
  async show() {
    try {
      await fillSources();
      await load();
    } catch (e) {
      error.textContent = e.message;
    }
  },
};
