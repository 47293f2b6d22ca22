// Surprise: a text coloured by how unexpected each character was to the model, its loss
// -ln p(character | what came before). The text is cut into consecutive windows of block_size
// as `chargpt eval` cuts the val split, so the mean shown is eval's loss over the same windows.
// Hover a character for p and the characters the model expected instead.

import { el, clear } from './util.js';
import { runHeader, followRun, asker, surpriseText, lossColor, shown, percent } from './look.js';

let app;
let header;
let follow;
let form;
let out;
let tip;
let mean;
let uniform; // the legend's ln V, for the model looked at
let error;
let ask;

function request() {
  const value = (id) => form.querySelector(id).value;
  if (form.querySelector('#sur-source-text').checked) return { text: value('#sur-text') };
  return { offset: Number(value('#sur-offset')), windows: Number(value('#sur-windows')) };
}

function fetchNow() {
  return ask((run) => app.api.inspectSurprise(run, request()), (got) => {
    const text = [...got.text];
    surpriseText(out, text, got.losses, {
      offset: 1,
      tip,
      describe: (k) => {
        const c = text[k + 1];
        return [
          el('div', {}, el('b', {}, shown(c)), ` p = ${percent(got.probs[k])}, loss ${got.losses[k].toFixed(3)} nats`),
          el('div', { className: 'muted' }, 'the model expected:'),
          ...got.top[k].map(([alt, p]) => el('div', { className: alt === c ? 'alt chosen' : 'alt' },
            el('code', {}, shown(alt)), ` ${percent(p)}`)),
        ];
      },
    });
    out.dataset.step = String(got.step);
    const where = got.source === 'val'
      ? `the val split's characters ${got.offset} to ${got.offset + got.text.length - 1} (of ${got.val_chars})`
      : 'your text';
    mean.textContent = `mean loss ${got.mean.toFixed(4)} nats per character over ${got.losses.length} characters of ${where}: `
      + `${got.windows} window${got.windows === 1 ? '' : 's'} of ${got.block_size}, scored as chargpt eval scores them`
      + `${got.cut ? ` (${got.cut} characters at the end, short of a window, left out)` : ''}.`
      + `${got.final_val_loss != null ? ` Over the whole val split: ${got.final_val_loss.toFixed(4)}.` : ''}`;
    mean.dataset.mean = String(got.mean);
    uniform.textContent = `ln ${got.vocab_size} = ${Math.log(got.vocab_size).toFixed(2)} = a uniform guess over its ${got.vocab_size} characters`;
    uniform.dataset.vocab = String(got.vocab_size);
  });
}

const view = {
  id: 'surprise',
  title: 'Surprise',
  mount(element, shared) {
    app = shared;
    header = runHeader(app, 'sur');
    form = el('form', { id: 'sur-form', onsubmit: (e) => { e.preventDefault(); fetchNow(); } },
      el('div', { className: 'row' },
        el('label', {}, el('input', { type: 'radio', name: 'sur-source', id: 'sur-source-val', checked: true }), ' an excerpt of the val split, from character '),
        el('input', { id: 'sur-offset', type: 'number', min: 0, value: 0, size: 7 }),
        el('label', {}, ' windows ', el('input', { id: 'sur-windows', type: 'number', min: 1, max: 32, value: 2, size: 3 }))),
      el('div', { className: 'row' },
        el('label', {}, el('input', { type: 'radio', name: 'sur-source', id: 'sur-source-text' }), ' this text: '),
        el('textarea', { id: 'sur-text', rows: 3, cols: 70, placeholder: 'paste a text of the model\'s characters' })),
      el('button', { id: 'sur-go', type: 'submit', className: 'primary' }, 'Score'));
    form.querySelector('#sur-text').addEventListener('input', () => {
      form.querySelector('#sur-source-text').checked = true;
    });
    out = el('div', { id: 'sur-out', className: 'surprise-text' });
    tip = el('div', { id: 'sur-tip', className: 'tip', hidden: true });
    mean = el('p', { id: 'sur-mean' });
    error = el('div', { id: 'sur-error', className: 'error' });
    ask = asker(app, header, error, () => {
      clear(out);
      delete out.dataset.step;
      mean.textContent = '';
      delete mean.dataset.mean;
    });
    const legend = el('div', { className: 'legend' }, 'loss: ',
      ...[0, 1, 2, 3, 4, 5].map((l) => el('span', {}, el('span', { className: 'swatch', style: `background:${lossColor(l)}` }), `${l}${l === 5 ? '+' : ''}`)),
      el('span', {}, ' nats (−ln p; 0 = certain and right, ',
        uniform = el('span', { id: 'sur-uniform' }, 'ln V = a uniform guess over the model\'s V characters'),
        ')'));
    element.append(
      el('h2', {}, 'How surprising is each character?'),
      header.element, form, error, mean, legend, out);
    document.body.append(tip);
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
