// The inspector worker: answers the inspect/* endpoints and draws samples from the models the
// page loads into it (a run's checkpoint, or a training's parameters at its last evaluation),
// so that looking inside never waits for a training step, nor slows one.
//
// From the page: {op: 'load', run, config, model, live, text}        -> {id, ok}
//                {op: 'answer', id, run, endpoint, body}            -> {id, answer} | {id, error}
//                {op: 'sample', id, run, body}  -> {id, chunk}..., then {id, done} | {id, error}
//                {op: 'forget', run}

import init, { Inspector } from '../pkg/chargpt_web.js';

const ready = init().then(() => new Inspector());

onmessage = async (e) => {
  const m = e.data;
  const inspector = await ready;
  const fail = (error) => postMessage({ id: m.id, error: typeof error === 'string' ? error : String(error) });
  try {
    if (m.op === 'load') {
      inspector.load(m.run, m.config, m.model, m.live, m.text ?? undefined);
      postMessage({ id: m.id, ok: true });
    } else if (m.op === 'answer') {
      postMessage({ id: m.id, answer: inspector.answer(m.run, m.endpoint, m.body) });
    } else if (m.op === 'sample') {
      inspector.sample(m.run, m.body, (chunk) => postMessage({ id: m.id, chunk }));
      postMessage({ id: m.id, done: true });
    } else if (m.op === 'forget') {
      inspector.forget(m.run);
    }
  } catch (error) {
    fail(error);
  }
};
