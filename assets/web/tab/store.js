// The tab's runs directory: IndexedDB, so that runs survive a reload. A run is one record
//   { name, text: {kind: 'builtin'} | {kind: 'upload', id, filename},
//     files: {model, config, optimizer} (the bytes of its last checkpoint, or null),
//     metrics, steps (metrics.csv and steps.csv as of that checkpoint),
//     samples, probes (samples.txt and probes.jsonl, appended at every evaluation) }
// and an upload is { id, filename, text }.

const DB = 'chargpt';
const VERSION = 1;

let opened = null;

function db() {
  opened ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, VERSION);
    request.onupgradeneeded = () => {
      const d = request.result;
      if (!d.objectStoreNames.contains('runs')) d.createObjectStore('runs', { keyPath: 'name' });
      if (!d.objectStoreNames.contains('uploads')) d.createObjectStore('uploads', { keyPath: 'id' });
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(new Error(
      `this browser keeps no data for the page (IndexedDB: ${request.error?.message}); allow site data, or leave private browsing`));
  });
  return opened;
}

async function transact(store, mode, work) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction(store, mode);
    let result;
    Promise.resolve(work(tx.objectStore(store))).then((r) => { result = r; });
    tx.oncomplete = () => resolve(result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('the browser refused to save (storage full?)'));
  });
}

function asPromise(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export const getRun = (name) => transact('runs', 'readonly', (s) => asPromise(s.get(name)));
export const allRuns = () => transact('runs', 'readonly', (s) => asPromise(s.getAll()));
export const putRun = (run) => transact('runs', 'readwrite', (s) => asPromise(s.put(run)));
export const deleteRun = (name) => transact('runs', 'readwrite', (s) => asPromise(s.delete(name)));

// Changes run `name` by `change(run)` in one transaction (records appended while a training
// saves do not overwrite each other).
export function updateRun(name, change) {
  return transact('runs', 'readwrite', async (s) => {
    const run = await asPromise(s.get(name));
    if (!run) return null;
    change(run);
    await asPromise(s.put(run));
    return run;
  });
}

export const getUpload = (id) => transact('uploads', 'readonly', (s) => asPromise(s.get(id)));
export const putUpload = (upload) =>
  transact('uploads', 'readwrite', (s) => asPromise(s.put(upload)));

export function newRun(name, text) {
  return { name, text, files: null, metrics: '', steps: '', samples: '', probes: '' };
}
