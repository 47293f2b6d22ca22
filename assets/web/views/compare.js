// Compare: the val loss curves of several runs on one chart (the ladder's rungs, a sweep).
// Each point is an evaluation's val loss estimate, from the run's metrics.csv. Runs of
// different texts or vocabularies are drawn too, under a line that says their losses do not
// compare directly.

import { lineChart, align, COLORS } from '../charts.js';
import { el, clear, fmt } from './util.js';

let app;
let picker;
let warning;
let chartBox;
let chart = null;
const chosen = new Set();
let summaries = new Map(); // name -> the run's summary in /api/runs
let drawing = 0; // the number of the latest draw, so that a slower earlier one never wins

// A loss is per character of a run's own text, in nats: ln V for a uniform guess over its V
// characters. Runs of different texts or alphabets score different things, so the chart says
// so when the runs it shows differ in either (a run whose text is unknown is left out of it).
function difference(names) {
  const runs = names.map((name) => summaries.get(name)).filter(Boolean);
  const vocabs = new Set(runs.map((r) => r.vocab_size).filter((v) => v != null));
  const texts = new Set(runs.map((r) => r.text?.fingerprint).filter(Boolean));
  if (vocabs.size <= 1 && texts.size <= 1) return '';
  const what = [texts.size > 1 ? 'different texts' : '', vocabs.size > 1 ? 'different alphabets' : '']
    .filter(Boolean).join(' with ');
  // The runs grouped by text and alphabet: "a, b: Tiny Shakespeare, 65 characters (...)".
  const groups = new Map();
  for (const r of runs) {
    const text = r.text ? r.text.name : 'text unknown';
    const guess = r.vocab_size
      ? `${r.vocab_size} characters (a uniform guess: ln ${r.vocab_size} = ${Math.log(r.vocab_size).toFixed(2)})`
      : 'vocabulary unknown';
    const key = `${text}, ${guess}`;
    groups.set(key, [...(groups.get(key) ?? []), r.name]);
  }
  const each = [...groups].map(([key, group]) => `${group.join(', ')}: ${key}`);
  return `These runs learn ${what}. ${each.join('; ')}. Each loss is per character of a run's own text and alphabet, so these curves do not compare directly.`;
}

async function draw() {
  const mine = ++drawing;
  const names = [...chosen].sort();
  const series = await Promise.all(names.map(async (name) => {
    const { metrics } = await app.api.metrics(name);
    return metrics.map((m) => [m.step, m.val_loss]);
  }));
  if (mine !== drawing) return;
  clear(chartBox);
  warning.textContent = difference(names);
  warning.hidden = !warning.textContent;
  if (names.length === 0) {
    chartBox.append(el('p', { className: 'muted' }, 'Tick runs to overlay their val curves.'));
    return;
  }
  // uPlot's series are fixed when a chart is made, so a new choice makes a new chart.
  chart = lineChart(chartBox, {
    title: 'val loss (estimate at each evaluation)',
    yLabel: 'val loss',
    height: 360,
    series: names.map((name, i) => ({ label: name, color: COLORS[i % COLORS.length], points: true })),
  });
  const { x, ys } = align(series);
  chart.set(x, ys);
}

async function refresh() {
  const { runs } = await app.api.runs();
  summaries = new Map(runs.map((r) => [r.name, r]));
  // A run deleted since it was ticked leaves the chart.
  for (const name of chosen) if (!runs.some((r) => r.name === name)) chosen.delete(name);
  clear(picker);
  for (const run of runs) {
    const box = el('input', { type: 'checkbox', value: run.name, checked: chosen.has(run.name),
      onchange: () => { if (box.checked) chosen.add(run.name); else chosen.delete(run.name); draw(); } });
    picker.append(el('label', { className: 'pick' }, box, ` ${run.name} `,
      el('span', { className: 'muted' }, `${run.preset ?? ''} · ${run.text ? `${run.text.name} · ` : ''}`
        + `${run.vocab_size ? `${run.vocab_size} characters · ` : ''}best val ${fmt(run.best_val_loss)}`)));
  }
}

export default {
  id: 'compare',
  title: 'Compare',
  mount(element, shared) {
    app = shared;
    element.append(el('h2', {}, 'Compare runs'),
      picker = el('div', { id: 'compare-runs', className: 'picker' }),
      warning = el('p', { id: 'compare-warning', className: 'warning', hidden: true }),
      chartBox = el('div', { id: 'compare-chart', className: 'chart' }));
  },
  async show() {
    await refresh();
    draw();
  },
};
