// Compare: the val loss curves of several runs on one chart (the ladder's rungs, a sweep).
// Each point is an evaluation's val loss estimate, from the run's metrics.csv.

import { lineChart, align, COLORS } from '../charts.js';
import { el, clear, fmt } from './util.js';

let app;
let picker;
let chartBox;
let chart = null;
const chosen = new Set();

async function draw() {
  const names = [...chosen].sort();
  const series = await Promise.all(names.map(async (name) => {
    const { metrics } = await app.api.metrics(name);
    return metrics.map((m) => [m.step, m.val_loss]);
  }));
  clear(chartBox);
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
  // A run deleted since it was ticked leaves the chart.
  for (const name of chosen) if (!runs.some((r) => r.name === name)) chosen.delete(name);
  clear(picker);
  for (const run of runs) {
    const box = el('input', { type: 'checkbox', value: run.name, checked: chosen.has(run.name),
      onchange: () => { if (box.checked) chosen.add(run.name); else chosen.delete(run.name); draw(); } });
    picker.append(el('label', { className: 'pick' }, box, ` ${run.name} `,
      el('span', { className: 'muted' }, `${run.preset ?? ''} · best val ${fmt(run.best_val_loss)}`)));
  }
}

export default {
  id: 'compare',
  title: 'Compare',
  mount(element, shared) {
    app = shared;
    element.append(el('h2', {}, 'Compare runs'),
      picker = el('div', { id: 'compare-runs', className: 'picker' }),
      chartBox = el('div', { id: 'compare-chart', className: 'chart' }));
  },
  async show() {
    await refresh();
    draw();
  },
};
