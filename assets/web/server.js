// The server back end (`chargpt serve`): JSON requests, errors, and the live event stream of a
// training, over HTTP.
//
// Every request carries the token in a cookie the server set when the page was opened with
// ?token=..., so nothing here handles it. Every refusal is JSON {"error": "...", "field": "..."}
// with a 4xx status; `ApiError` keeps the message and the field it is about.

import { ApiError } from './api-error.js';

export const backend = { kind: 'server', label: 'chargpt serve' };

async function answer(response) {
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new ApiError(message, body && body.field, response.status);
  }
  return body;
}

export async function get(path) {
  return answer(await fetch(path));
}

export async function post(path, body = {}) {
  const response = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return answer(response);
}

// A training text file, sent as it is (the server checks that it is UTF-8).
export async function upload(file) {
  const response = await fetch(`/api/uploads?filename=${encodeURIComponent(file.name)}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/octet-stream' },
    body: file,
  });
  return answer(response);
}

export const runs = () => get('/api/runs');
export const presets = () => get('/api/presets');
export const metrics = (name) => get(`/api/runs/${encodeURIComponent(name)}/metrics`);
export const startRun = (request) => post('/api/runs', request);
export const stopRun = (name) => post(`/api/runs/${encodeURIComponent(name)}/stop`);
export const resumeRun = (name, settings = {}) =>
  post(`/api/runs/${encodeURIComponent(name)}/resume`, { settings });
export const deleteRun = (name) => post(`/api/runs/${encodeURIComponent(name)}/delete`);

// Draws a sample and calls onText(chunk) as the characters arrive. `signal` (an AbortSignal)
// stops it.
export async function sample(name, request, onText, signal) {
  const response = await fetch(`/api/runs/${encodeURIComponent(name)}/sample`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(request),
    signal,
  });
  if (!response.ok) return answer(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    onText(decoder.decode(value, { stream: true }));
  }
  onText(decoder.decode());
}

// The live events of a training (server-sent events): `start`, `step` (an array of steps),
// `eval` (with its sample), `note` (a line for the learner), `saved`, `exact`, `finished`, `error`, or a single `idle` for a run
// that is not training. `on(type, data)` receives each; the stream closes itself after the last.
// Returns a function that closes it.
export function follow(name, after, on) {
  const query = after == null ? '' : `?after=${after}`;
  const source = new EventSource(`/api/runs/${encodeURIComponent(name)}/events${query}`);
  const types = ['start', 'step', 'eval', 'note', 'saved', 'exact', 'finished', 'error', 'idle'];
  for (const type of types) {
    source.addEventListener(type, (event) => {
      on(type, JSON.parse(event.data));
      if (type === 'finished' || type === 'error' || type === 'idle') source.close();
    });
  }
  return () => source.close();
}

// Looking inside a run's model (the README's API table): POST with a prompt or text, GET for the
// rest. Every answer says which parameters it looked at: {run, step, live}.
const runPath = (name) => `/api/runs/${encodeURIComponent(name)}`;
export const inspectNext = (name, request) => post(`${runPath(name)}/inspect/next`, request);
export const inspectAttention = (name, request) => post(`${runPath(name)}/inspect/attention`, request);
export const inspectSurprise = (name, request) => post(`${runPath(name)}/inspect/surprise`, request);
export const inspectEmbeddings = (name) => get(`${runPath(name)}/inspect/embeddings`);
export const inspectHead = (name, request) => post(`${runPath(name)}/inspect/head`, request);
export const runModel = (name) => get(`${runPath(name)}/inspect/model`);
export const presetModel = (name) => get(`/api/presets/${encodeURIComponent(name)}/model`);
export const probes = (name, after) =>
  get(`${runPath(name)}/probes${after == null ? '' : `?after=${after}`}`);
