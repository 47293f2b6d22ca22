// A helper worker: a replica of the leader's trainer that runs shard k of every step and takes
// the step the leader ends (see web/src/training.rs).
//
// From the leader: {op: 'init', k, shards, config, model, optimizer, tokens} -> {op: 'ready'}
//                  {op: 'pass'}  -> {op: 'shard', loss, grad}   (the gradient's buffer moved)
//                  {op: 'apply', sum, loss}                    (no answer)
//                  {op: 'follow', settings}                    (no answer: the leader's steps
//                                                               and dropout from the next step)

import init, { Replica } from '../pkg/chargpt_web.js';

let replica = null;
let k = 0;

onmessage = async (e) => {
  const m = e.data;
  try {
    if (m.op === 'init') {
      await init();
      k = m.k;
      replica = new Replica(m.config, m.model, m.optimizer, m.tokens, m.shards);
      postMessage({ op: 'ready' });
    } else if (m.op === 'pass') {
      const loss = replica.pass(k);
      const grad = replica.gradient(k);
      postMessage({ op: 'shard', loss, grad }, [grad.buffer]);
    } else if (m.op === 'apply') {
      replica.apply(m.sum, m.loss);
    } else if (m.op === 'follow') {
      replica.follow(m.settings);
    }
  } catch (error) {
    postMessage({ op: 'failed', error: typeof error === 'string' ? error : String(error) });
  }
};
