// Next character: what the model expects after a prompt, as bars. The server sends the logits
// of the last position once per prompt; the temperature and top-k sliders reshape them here,
// the way sampling does (softmax(logits / T) over the k most likely: look.js `reshape`, the
// same as src/sampling.rs), so the bars move with the sliders without asking again. Clicking a
// bar appends its character to the prompt.

import { el, clear } from './util.js';
import { runHeader, followRun, asker, promptBox, reshape, drawBars, debounce, shown } from './look.js';

let app;
let header;
let follow;
let prompt;
let temperature;
let topK;
let bars;
let note;
let error;
let ask;
let box; // the prompt per run: its own, or the one the user typed for it
let answer = null; // the last answer: {vocab, logits, tokens, ...}

function settings() {
  const t = Number(temperature.value);
  const k = Number(topK.value);
  return { temperature: t, top_k: answer && k >= answer.vocab.length ? null : k };
}

function draw() {
  const { temperature: t, top_k: k } = settings();
  document.querySelector('#next-temperature-value').textContent = t.toFixed(2);
  document.querySelector('#next-top-k-value').textContent = k === null ? 'all' : String(k);
  if (!answer) return;
  const probs = reshape(answer.logits, t, k);
  drawBars(bars, answer.vocab, probs, {
    count: 20,
    onPick: (c) => {
      prompt.value += c;
      box.typed();
      fetchNow();
    },
  });
  bars.dataset.prompt = answer.prompt;
  bars.dataset.temperature = String(t);
  bars.dataset.topK = k === null ? '' : String(k);
  const cut = answer.dropped
    ? ` (its last ${answer.tokens.length}: the model sees at most ${answer.block_size} characters)`
    : '';
  note.textContent = `after ${JSON.stringify(answer.prompt.slice(-30))}${cut}: softmax(logits / ${t.toFixed(2)})`
    + `${k === null ? '' : ` over the ${k} most likely`}, the distribution chargpt sample draws from.`;
}

async function fetchNow() {
  if (!(await box.choose())) return undefined;
  const text = prompt.value;
  return ask((run) => app.api.inspectNext(run, { prompt: text }), (got) => {
    answer = { ...got, prompt: text };
    topK.max = String(got.vocab.length);
    if (!topK.dataset.touched) topK.value = topK.max;
    draw();
  });
}

const fetchSoon = debounce(fetchNow, 120);

const view = {
  id: 'next',
  title: 'Next character',
  mount(element, shared) {
    app = shared;
    header = runHeader(app, 'next');
    prompt = el('textarea', { id: 'next-prompt', rows: 3, cols: 70, value: 'ROMEO:\nIt is the east, and Juliet is the s' });
    box = promptBox(app, prompt);
    prompt.addEventListener('input', fetchSoon);
    temperature = el('input', { id: 'next-temperature', type: 'range', min: 0, max: 3, step: 0.05, value: 1 });
    topK = el('input', { id: 'next-top-k', type: 'range', min: 1, max: 65, step: 1, value: 65 });
    temperature.addEventListener('input', draw);
    topK.addEventListener('input', () => {
      topK.dataset.touched = 'true';
      draw();
    });
    bars = el('div', { id: 'next-bars', className: 'bars' });
    note = el('p', { id: 'next-note', className: 'muted' });
    error = el('div', { id: 'next-error', className: 'error' });
    ask = asker(app, header, error, () => {
      answer = null;
      clear(bars);
      delete bars.dataset.prompt;
      note.textContent = '';
    });
    element.append(
      el('h2', {}, 'What comes next?'),
      header.element,
      el('p', { className: 'muted' }, 'Type a prompt: the bars are the model\'s probabilities for the character after it. Click a bar to append that character.'),
      prompt,
      el('div', { className: 'row' },
        el('label', {}, 'temperature ', temperature, ' ', el('span', { id: 'next-temperature-value' }, '1.00')),
        el('label', {}, 'top-k ', topK, ' ', el('span', { id: 'next-top-k-value' }, 'all'))),
      error, bars, note,
      el('p', { className: 'muted small' }, `Below 1 the temperature sharpens the bars towards the most likely character (at 0 it takes all), above 1 it flattens them; top-k gives every character outside the k most likely probability 0. ${shown(' ')} is a space, ${shown('\n')} a newline.`));
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
