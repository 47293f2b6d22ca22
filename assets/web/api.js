// The page's API: the same functions over one of two back ends, which the views never tell
// apart. `chargpt serve` answers over HTTP (server.js); the static site (`bash web/build.sh`)
// says so in a <meta name="chargpt-backend" content="tab"> and runs the engine in this tab,
// compiled to WebAssembly, in Web Workers (tab/backend.js). Both answer every call with the
// same JSON, made by the same library code (chargpt::page).
//
// Besides the API table of docs/serve.md: `backend` ({kind, label, ...}) says which one runs,
// and the tab's back end adds `downloadRun(name)` (a run's files as a zip that `chargpt eval`,
// `sample` and `train --resume` take) and `openRunFiles(files)` (a run directory's files into
// the page); the server's leaves them out.

export { ApiError } from './api-error.js';

const tab = document.querySelector('meta[name="chargpt-backend"]')?.content === 'tab';
const impl = tab ? await import('./tab/backend.js') : await import('./server.js');

export const {
  backend, runs, presets, metrics, startRun, stopRun, resumeRun, deleteRun, sample, follow,
  upload, inspectNext, inspectAttention, inspectSurprise, inspectEmbeddings, inspectHead,
  runModel, presetModel, probes,
} = impl;
export const downloadRun = impl.downloadRun ?? null;
export const openRunFiles = impl.openRunFiles ?? null;
export const runFiles = impl.runFiles ?? null;
export const training = impl.training ?? null;
