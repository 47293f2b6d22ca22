// Sample: text from any run's latest checkpoint (a training run's too), streamed as it is drawn.
// The same run, settings and seed give the same text, as `chargpt sample` does.

import { el, clear } from './util.js';

let app;
let form;
let output;
let running = null; // the AbortController of the sample being drawn

async function refresh() {
  const select = form.querySelector('#sample-run');
  const current = select.value || app.run;
  const { runs } = await app.api.runs();
  clear(select);
  for (const run of runs) select.append(el('option', { value: run.name }, run.name));
  if (runs.some((r) => r.name === current)) select.value = current;
  // A sample of a run deleted since goes with it.
  if (output.dataset.run && !runs.some((r) => r.name === output.dataset.run)) {
    output.textContent = '';
    delete output.dataset.run;
    delete output.dataset.done;
  }
}

async function draw(event) {
  event.preventDefault();
  if (running) running.abort();
  const value = (id) => form.querySelector(id).value.trim();
  const prompt = form.querySelector('#sample-prompt').value;
  const request = {
    prompt,
    temperature: Number(value('#sample-temperature')),
    top_k: value('#sample-top-k') === '' ? null : Number(value('#sample-top-k')),
    seed: Number(value('#sample-seed')),
    tokens: Number(value('#sample-tokens')),
  };
  for (const e of form.querySelectorAll('.field-error')) e.textContent = '';
  output.textContent = prompt;
  output.dataset.done = 'false';
  output.dataset.run = value('#sample-run');
  running = new AbortController();
  try {
    await app.api.sample(value('#sample-run'), request, (text) => { output.textContent += text; },
      running.signal);
  } catch (e) {
    if (e.name !== 'AbortError') {
      const spot = form.querySelector(`.field-error[data-for="${e.field}"]`)
        ?? form.querySelector('#sample-error');
      spot.textContent = e.message;
    }
  } finally {
    output.dataset.done = 'true';
    running = null;
  }
}

function field(label, input, key) {
  return el('label', {}, `${label} `, input, el('span', { className: 'field-error', dataset: { for: key } }));
}

export default {
  id: 'sample',
  title: 'Sample',
  mount(element, shared) {
    app = shared;
    form = el('form', { id: 'sample-form', onsubmit: draw },
      el('div', { className: 'row' },
        field('run', el('select', { id: 'sample-run' }), 'run'),
        field('temperature', el('input', { id: 'sample-temperature', value: '1.0', size: 4 }), 'temperature'),
        field('top-k', el('input', { id: 'sample-top-k', value: '', size: 4, placeholder: 'all' }), 'top_k'),
        field('seed', el('input', { id: 'sample-seed', value: '1337', size: 6 }), 'seed'),
        field('characters', el('input', { id: 'sample-tokens', value: '500', size: 6 }), 'tokens')),
      field('prompt', el('textarea', { id: 'sample-prompt', rows: 2, cols: 60, placeholder: 'ROMEO:' }), 'prompt'),
      el('div', { className: 'row' },
        el('button', { id: 'sample-go', type: 'submit', className: 'primary' }, 'Draw'),
        el('button', { type: 'button', onclick: () => running && running.abort() }, 'Stop'),
        el('span', { id: 'sample-error', className: 'error' })));
    output = el('pre', { id: 'sample-out', className: 'sample-out' });
    element.append(el('h2', {}, 'Sample from a run'),
      el('p', { className: 'muted' }, 'Temperature below 1 is safer, above 1 wilder; top-k draws only from the k most likely characters.'),
      form, output);
    app.on('run-selected', (name) => {
      if (name) form.querySelector('#sample-run').value = name;
    });
  },
  show() {
    refresh();
  },
};
