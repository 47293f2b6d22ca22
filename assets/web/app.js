// The page: one tab per view, and what the views share.
//
// A view is a module whose default export is
//   { id, title, mount(element, app), show?() }
// `mount` builds the view once inside its element; `show` runs each time its tab opens.
// To add a view, write such a module in views/ and add it to VIEWS below: nothing else changes.
//
// `app` is what the views share: the selected run (`app.run`), the server (`app.api`), and
// events on `app.bus`:
//   'run-selected'  (name)       a run was picked (in the Runs table, or after starting one)
//   'runs-changed'  ()           a run was started, stopped, resumed, deleted or finished
//   'history'       ({name, metrics, steps, samples})  what the selected run's files hold
//   'live:TYPE'     (data)       its live events while it trains: live:start, live:step (an
//                                array of steps), live:eval, live:note, live:saved, live:exact,
//                                live:finished, live:error, live:idle

import * as api from './api.js';
import runs from './views/runs.js';
import training from './views/training.js';
import compare from './views/compare.js';
import sample from './views/sample.js';
import next from './views/next.js';
import attention from './views/attention.js';
import surprise from './views/surprise.js';
import embeddings from './views/embeddings.js';
import head from './views/head.js';
import model from './views/model.js';
import replay from './views/replay.js';

const VIEWS = [runs, training, compare, sample, next, attention, surprise, embeddings, head,
  model, replay];

const app = {
  api,
  run: null,
  bus: new EventTarget(),
  stopFollowing: null,

  on(type, handler) {
    this.bus.addEventListener(type, (event) => handler(event.detail));
  },

  emit(type, detail) {
    this.bus.dispatchEvent(new CustomEvent(type, { detail }));
  },

  // Picks a run: every view hears of it, and its history and live events start to flow.
  select(name) {
    this.run = name;
    document.getElementById('current-run').textContent = name ? `run: ${name}` : '';
    this.emit('run-selected', name);
    return this.watch();
  },

  // Reads the selected run's history from its files, then follows its live events from the step
  // after the last one the files hold. Called again after the run is started or resumed.
  async watch() {
    if (this.stopFollowing) this.stopFollowing();
    this.stopFollowing = null;
    const name = this.run;
    if (!name) return;
    const history = await api.metrics(name);
    if (name !== this.run) return;
    this.emit('history', { name, ...history });
    const steps = history.steps;
    const after = steps.length ? steps[steps.length - 1][0] : null;
    this.stopFollowing = api.follow(name, after, (type, data) => {
      if (name !== this.run) return;
      this.emit(`live:${type}`, data);
      if (type === 'finished' || type === 'error') this.emit('runs-changed');
    });
  },

  // Opens the tab of view `id`.
  show(id) {
    for (const view of VIEWS) {
      const active = view.id === id;
      view.element.hidden = !active;
      view.tab.setAttribute('aria-selected', String(active));
      if (active && view.show) view.show();
    }
    history.replaceState(null, '', `#${id}`);
  },
};

function build() {
  const tabs = document.getElementById('tabs');
  const main = document.getElementById('views');
  for (const view of VIEWS) {
    view.tab = document.createElement('button');
    view.tab.textContent = view.title;
    view.tab.id = `tab-${view.id}`;
    view.tab.addEventListener('click', () => app.show(view.id));
    tabs.append(view.tab);
    view.element = document.createElement('section');
    view.element.id = `view-${view.id}`;
    view.element.className = 'view';
    main.append(view.element);
    view.mount(view.element, app);
  }
  const wanted = location.hash.slice(1);
  app.show(VIEWS.some((v) => v.id === wanted) ? wanted : VIEWS[0].id);
}

// The header says where the engine runs (`chargpt serve`, or this tab with its workers) and,
// while the selected run trains, its speed.
function showBackend() {
  const spot = document.getElementById('backend');
  const b = api.backend;
  const base = b.kind === 'tab'
    ? `${b.label} · up to ${b.workers} worker${b.workers === 1 ? '' : 's'} (${b.cores} cores)`
    : b.label;
  spot.textContent = base;
  let last = 0;
  app.on('live:step', (steps) => {
    const now = performance.now();
    if (!steps.length || now - last < 500) return;
    last = now;
    const p = steps[steps.length - 1];
    const running = b.kind === 'tab' && api.training ? api.training(app.run) : null;
    const workers = running
      ? ` · ${running.workers} worker${running.workers === 1 ? '' : 's'}, ${running.shards} shard${running.shards === 1 ? '' : 's'}`
      : '';
    spot.textContent = `${b.label}${workers} · ${Math.round(p.tokens_per_s).toLocaleString()} tokens/s`;
  });
  for (const type of ['live:finished', 'live:error', 'live:idle', 'run-selected']) {
    app.on(type, () => { spot.textContent = base; });
  }
}

// For the browser tests and for anyone curious in the console.
window.chargpt = app;
build();
showBackend();
