// Line charts over training steps, drawn by uPlot (vendor/uPlot.esm.js).
//
// uPlot takes "aligned" data: one array of x values and, per series, one array of y values of
// the same length, with null where a series has no point. A chart here is made once and then
// given new data with `set(x, ys)`; it follows its container's width.

import uPlot from './vendor/uPlot.esm.js';

export const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b',
  '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

// The y axis as wide as its longest tick label (uPlot's is 50 px, too narrow for 0.00015).
function yAxisSize(self, values) {
  const longest = Math.max(0, ...(values ?? []).map((v) => String(v ?? '').length));
  return Math.max(50, 7 * longest + 18);
}

// Tick labels with as many decimals as the step between ticks needs (0.0005 apart: 0.0015,
// not uPlot's 3-decimal 0.002 twice).
function yAxisValues(self, splits, axisIdx, space, incr) {
  let decimals = 0;
  while (decimals < 12 && Math.abs(incr * 10 ** decimals - Math.round(incr * 10 ** decimals)) > 1e-6) decimals += 1;
  return splits.map((v) => (v == null ? '' : v.toFixed(decimals)));
}

// series: [{label, color, width?, points?: true (dots, joined over gaps), dash?}]
// ySpace: the least room in pixels between two y ticks (uPlot's default 30 leaves a short
// chart two or three ticks).
export function lineChart(element, { title, yLabel, series, height = 260, yLog = false, ySpace = 30 }) {
  const options = {
    title,
    width: Math.max(element.clientWidth, 300),
    height,
    scales: { x: { time: false }, y: yLog ? { distr: 3 } : {} },
    axes: [{ label: 'step' }, { label: yLabel, space: ySpace, size: yAxisSize, values: yLog ? undefined : yAxisValues }],
    legend: { live: true },
    hooks: {
      // How many y ticks are labelled: the browser tests read it.
      draw: [(u) => {
        element.dataset.yTicks = String((u.axes[1]._values ?? []).filter((v) => v != null && v !== '').length);
      }],
    },
    series: [
      { label: 'step' },
      ...series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: s.width ?? 1.5,
        dash: s.dash,
        spanGaps: Boolean(s.points),
        points: { show: Boolean(s.points), size: 5, fill: s.color },
      })),
    ],
  };
  const plot = new uPlot(options, [[], ...series.map(() => [])], element);
  // The chart's data and axes, for the browser tests.
  element.plot = plot;
  new ResizeObserver(() => {
    const width = Math.max(element.clientWidth, 300);
    if (width !== plot.width) plot.setSize({ width, height });
  }).observe(element);
  return {
    plot,
    set(x, ys) {
      plot.setData([x, ...ys]);
      // How many x positions the chart has: the browser tests read it.
      element.dataset.points = String(x.length);
    },
  };
}

// Merges sorted step numbers of several series into one x axis, and spreads each series' values
// over it (null where a series has no point at that step).
export function align(seriesPoints) {
  const steps = new Set();
  for (const points of seriesPoints) for (const [step] of points) steps.add(step);
  const x = [...steps].sort((a, b) => a - b);
  const index = new Map(x.map((step, i) => [step, i]));
  const ys = seriesPoints.map((points) => {
    const y = new Array(x.length).fill(null);
    for (const [step, value] of points) y[index.get(step)] = value;
    return y;
  });
  return { x, ys };
}

// A centred moving average: each point is the mean of the values within `half` steps either
// side of it, so the curve follows a falling loss without lagging behind it. Near the ends the
// window shrinks on both sides alike (the first point is itself, the second the mean of the
// first three, ...): a window cut on one side only averaged the first point with the lower
// losses after it, and the smoothed curve started well below the real loss (0.35 nats on a
// default run). Prefix sums make it one pass.
export function smooth(values, half) {
  const prefix = [0];
  for (const v of values) prefix.push(prefix[prefix.length - 1] + v);
  const last = values.length - 1;
  return values.map((_, i) => {
    const h = Math.min(half, i, last - i);
    return (prefix[i + h + 1] - prefix[i - h]) / (2 * h + 1);
  });
}
