// Runs: the runs under --runs (or, in the tab, the runs this browser keeps), and a form to
// start a new one from a preset or fine-tune one.
//
// The form shows every setting of the chosen preset (the keys `chargpt train --set` takes) and
// sends only those you change, so that settings which follow others (warmup_steps with steps,
// min_lr with learning_rate) follow them as on the command line. A refusal appears beside the
// field it is about, in the command line's words.

import { el, fmt, clear } from './util.js';

let app;
let presets = [];
let form;
let table;
let message;
let refreshTimer = null;

function presetByName(name) {
  return presets.find((p) => p.name === name);
}

async function refresh() {
  let list;
  try {
    ({ runs: list } = await app.api.runs());
  } catch (e) {
    message.textContent = e.message;
    return;
  }
  const body = table.querySelector('tbody');
  clear(body);
  if (list.length === 0) {
    body.append(el('tr', {}, el('td', { colSpan: 8, className: 'empty' },
      'No runs yet: start one below.')));
  }
  for (const run of list) {
    const row = el('tr', { dataset: { run: run.name, state: run.state } },
      el('td', {}, el('a', { href: '#training', onclick: () => open(run.name) }, run.name)),
      el('td', {}, run.preset ?? ''),
      el('td', { className: 'num' }, run.steps ? `${run.step} / ${run.steps}` : `${run.step}`),
      el('td', { className: 'num' }, fmt(run.best_val_loss)),
      el('td', { className: 'num' }, fmt(run.final_val_loss)),
      el('td', {}, el('span', { className: `state ${run.state}` }, run.state),
        run.problem ? el('div', { className: 'error' }, run.problem) : ''),
      el('td', { className: 'actions' }, ...actions(run)));
    body.append(row);
  }
  fillStartFrom(list);
}

// The form's "start from": a new model, or any run with a checkpoint to fine-tune.
function fillStartFrom(list) {
  const select = form?.querySelector('#new-init');
  if (!select) return;
  const kept = select.value;
  clear(select);
  select.append(el('option', { value: '' }, 'a new model (the preset\'s)'));
  for (const run of list.filter((r) => r.saved_step != null)) {
    select.append(el('option', { value: run.name }, `fine-tune run ${run.name} (step ${run.saved_step})`));
  }
  select.value = [...select.options].some((o) => o.value === kept) ? kept : '';
  form.querySelector('#unknown-row').hidden = select.value === '';
}

function actions(run) {
  const act = (label, fn, cls = '') => el('button', {
    className: cls,
    dataset: { action: label.toLowerCase() },
    onclick: async () => {
      message.textContent = '';
      try {
        await fn();
      } catch (e) {
        message.textContent = e.message;
      }
      app.emit('runs-changed');
    },
  }, label);
  const list = [act('Open', () => open(run.name))];
  // The tab keeps its runs in the browser: Download gives the run directory's files.
  if (app.api.downloadRun && run.saved_step != null) {
    list.push(act('Download', () => app.api.downloadRun(run.name)));
  }
  if (run.state === 'training') {
    list.push(act('Stop', () => app.api.stopRun(run.name)));
  } else {
    if (run.state === 'stopped') {
      list.push(act('Resume', async () => {
        await app.api.resumeRun(run.name);
        await open(run.name);
      }));
    }
    list.push(act('Extend', async () => {
      const steps = prompt(`Train ${run.name} to how many steps? (now ${run.steps ?? run.step})`,
        String((run.steps ?? run.step) * 2));
      if (!steps) return;
      await app.api.resumeRun(run.name, { steps });
      await open(run.name);
    }));
    list.push(act('Delete', async () => {
      if (!confirm(`Delete run ${run.name} and all its files (checkpoint, metrics, samples)?`)) return;
      await app.api.deleteRun(run.name);
      if (app.run === run.name) app.select(null);
    }, 'danger'));
  }
  return list;
}

async function open(name) {
  app.show('training');
  await app.select(name);
}

// ---- the new-run form ----

function fillSettings(preset) {
  const grid = form.querySelector('#settings');
  clear(grid);
  for (const [key, value] of Object.entries(preset.settings)) {
    const input = el('input', {
      name: key, value: String(value), dataset: { preset: String(value) }, size: 8,
      oninput: () => input.classList.toggle('changed', input.value !== input.dataset.preset),
    });
    grid.append(el('label', { className: 'setting' }, el('span', {}, key), input,
      el('span', { className: 'field-error', dataset: { for: key } })));
  }
  form.querySelector('#preset-about').textContent =
    `${preset.description}; ${preset.params.toLocaleString()} parameters (with 65 characters)`;
}

function changedSettings() {
  const settings = {};
  for (const input of form.querySelectorAll('#settings input')) {
    if (input.value !== input.dataset.preset) settings[input.name] = input.value;
  }
  return settings;
}

// What the last submit left: its refusal (beside a field or below the button) and its notes.
// Every submit starts by clearing them, so that only its own answer shows.
function clearErrors() {
  for (const e of form.querySelectorAll('.field-error')) e.textContent = '';
  form.querySelector('#form-error').textContent = '';
  form.querySelector('#form-notes').textContent = '';
}

// A submit the browser itself refuses (a name that does not match the pattern, or none) never
// reaches start(): the field's own message replaces the last refusal. The invalid events of
// one submit arrive together, so the errors are cleared once for them.
let clearedForInvalid = false;
function onInvalid(event) {
  if (!clearedForInvalid) {
    clearErrors();
    clearedForInvalid = true;
    setTimeout(() => { clearedForInvalid = false; });
  }
  const input = event.target;
  const spot = form.querySelector(`.field-error[data-for="${input.name}"]`);
  if (spot) spot.textContent = input.validationMessage;
}

function showError(error) {
  const spot = error.field && form.querySelector(`.field-error[data-for="${error.field}"]`);
  if (spot) {
    spot.textContent = error.message;
  } else {
    form.querySelector('#form-error').textContent = error.message;
  }
}

async function start(event) {
  event.preventDefault();
  clearErrors();
  const name = form.querySelector('#new-name').value.trim();
  const request = {
    name,
    preset: form.querySelector('#new-preset').value,
    settings: changedSettings(),
  };
  const initFrom = form.querySelector('#new-init').value;
  if (initFrom) {
    request.init_from = initFrom;
    request.unknown_chars = form.querySelector('#new-unknown').value;
  }
  const button = form.querySelector('#start');
  button.disabled = true;
  try {
    const file = form.querySelector('#new-text').files[0];
    if (form.querySelector('#text-upload').checked) {
      if (!file) throw Object.assign(new Error('choose a text file to upload'), { field: 'upload' });
      const uploaded = await app.api.upload(file);
      request.upload = uploaded.id;
    }
    const started = await app.api.startRun(request);
    const notes = [...started.notes.map((n) => `note: ${n}`),
      ...started.warnings.map((w) => `warning: ${w}`)];
    form.querySelector('#form-notes').textContent = notes.join('\n');
    app.emit('runs-changed');
    await open(name);
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

// The tab's back end: a run directory from `chargpt train` (or a download) opened in the page.
function openFiles() {
  const note = el('span', { className: 'error', id: 'open-error' });
  const opened = async (input) => {
    note.textContent = '';
    try {
      const name = document.getElementById('open-name').value.trim() || null;
      const { name: run } = await app.api.openRunFiles([...input.files], name);
      app.emit('runs-changed');
      await open(run);
    } catch (e) {
      note.textContent = e.message;
    } finally {
      input.value = '';
    }
  };
  return el('details', { id: 'open-run' },
    el('summary', {}, 'Open a run\'s files (a run directory from chargpt train, or a download)'),
    el('div', { className: 'row' },
      el('label', {}, 'as run ', el('input', { id: 'open-name', placeholder: 'its folder\'s name',
        size: 14 })),
      el('label', {}, ' a run directory: ', el('input', { type: 'file', id: 'open-dir',
        webkitdirectory: true, onchange: (e) => opened(e.target) })),
      el('label', {}, ' or its files: ', el('input', { type: 'file', id: 'open-files',
        multiple: true, onchange: (e) => opened(e.target) }))),
    note);
}

function buildForm(limit) {
  form = el('form', { id: 'new-run', onsubmit: start },
    el('h2', {}, 'New run'),
    el('div', { className: 'row' },
      el('label', {}, 'name ', el('input', { id: 'new-name', name: 'name', required: true,
        pattern: '[A-Za-z0-9_\\-][A-Za-z0-9._\\-]{0,63}', placeholder: 'my-run' }),
        el('span', { className: 'field-error', dataset: { for: 'name' } })),
      el('label', {}, 'preset ', el('select', { id: 'new-preset', name: 'preset',
        onchange: (e) => fillSettings(presetByName(e.target.value)) },
        ...presets.map((p) => el('option', { value: p.name }, p.name))),
        el('span', { className: 'field-error', dataset: { for: 'preset' } })),
      el('span', { id: 'preset-about', className: 'muted' })),
    el('div', { className: 'row' },
      el('label', {}, 'start from ', el('select', { id: 'new-init', name: 'init_from',
        onchange: (e) => { form.querySelector('#unknown-row').hidden = e.target.value === ''; } })),
      el('span', { className: 'field-error', dataset: { for: 'init_from' } }),
      el('span', { id: 'unknown-row', hidden: true },
        el('label', {}, ' characters the model has not seen ', el('select', { id: 'new-unknown',
          name: 'unknown_chars' },
          el('option', { value: 'error' }, 'refuse the text (error)'),
          el('option', { value: 'drop' }, 'drop them from the text (drop)'),
          el('option', { value: 'extend' }, 'give them new embeddings (extend)'))),
        el('span', { className: 'field-error', dataset: { for: 'unknown_chars' } }))),
    el('fieldset', {},
      el('legend', {}, 'text'),
      el('label', {}, el('input', { type: 'radio', name: 'text', id: 'text-builtin', checked: true }),
        ' Tiny Shakespeare (built in, 1.1 million characters)'),
      el('label', {}, el('input', { type: 'radio', name: 'text', id: 'text-upload' }),
        ` your own UTF-8 text file (at most ${Math.round(limit / 2 ** 20)} MiB): `,
        el('input', { type: 'file', id: 'new-text', accept: '.txt,text/plain',
          onchange: () => { form.querySelector('#text-upload').checked = true; } })),
      el('span', { className: 'field-error', dataset: { for: 'upload' } })),
    el('details', { open: true },
      el('summary', {}, 'settings (changed ones are highlighted; the rest stay the preset\'s)'),
      el('div', { id: 'settings', className: 'settings' })),
    el('div', { className: 'row' },
      el('button', { id: 'start', type: 'submit', className: 'primary' }, 'Start training'),
      el('span', { id: 'form-error', className: 'error' })),
    el('pre', { id: 'form-notes', className: 'notes' }));
  // `invalid` does not bubble: listen as it goes down.
  form.addEventListener('invalid', onInvalid, true);
  return form;
}

export default {
  id: 'runs',
  title: 'Runs',

  async mount(element, shared) {
    app = shared;
    message = el('div', { className: 'error', id: 'runs-error' });
    table = el('table', { id: 'runs-table' },
      el('thead', {}, el('tr', {}, ...['run', 'preset', 'step', 'best val', 'final val (exact)',
        'state', ''].map((h) => el('th', {}, h)))),
      el('tbody'));
    element.append(el('h2', {}, 'Runs'), table, message);
    if (app.api.openRunFiles) element.append(openFiles());
    app.on('runs-changed', refresh);
    const answer = await app.api.presets();
    presets = answer.presets;
    element.append(buildForm(answer.upload_limit));
    form.querySelector('#new-preset').value = answer.default;
    fillSettings(presetByName(answer.default));
    refresh();
  },

  show() {
    refresh();
    clearInterval(refreshTimer);
    // Runs started elsewhere (chargpt train in a terminal) appear within a few seconds.
    refreshTimer = setInterval(() => {
      if (!document.getElementById('view-runs').hidden) refresh();
      else clearInterval(refreshTimer);
    }, 4000);
  },
};
