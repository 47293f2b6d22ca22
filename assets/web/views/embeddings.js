// Embeddings: each character's learned vector (a row of token_embedding.weight, C numbers)
// projected on the two directions along which the vectors differ most (their first two
// principal components), and how alike the position vectors are (cosine similarity of every
// pair of rows of position_embedding.weight). After training, characters that behave alike sit
// together: vowels, capitals, punctuation; neighbouring positions have similar vectors.

import { el, clear } from './util.js';
import {
  runHeader, followRun, asker, drawScatter, drawCosine, RARE_MIN, RARE_SHARE,
} from './look.js';

let app;
let header;
let follow;
let scatter;
let cosine;
let tokensNote;
let rareNote;
let error;
let ask;

function fetchNow() {
  return ask((run) => app.api.inspectEmbeddings(run), (got) => {
    const rare = drawScatter(scatter, got.vocab, got.points, got.explained, { counts: got.counts });
    rareNote.textContent = rare
      ? `${rare} rare characters (fewer than ${RARE_MIN} in the text, or under ${100 * RARE_SHARE}% of it) are dots, `
        + 'labelled on hover: seen so seldom, their embeddings barely moved from where they started.'
      : '';
    scatter.dataset.step = String(got.step);
    tokensNote.textContent = got.tied
      ? 'Each character\'s row of token_embedding.weight, centred and projected on the two directions of greatest variance. Characters the model treats alike end up close. Tied embeddings: lm_head scores each character with this same row, so it also says which characters the model predicts alike.'
      : 'Each character\'s row of token_embedding.weight, centred and projected on the two directions of greatest variance. Characters the model treats alike end up close.';
    cosine.dataset.positions = got.positions;
    if (got.position_cosine) {
      drawCosine(cosine, got.position_cosine, got.block_size);
    } else if (got.positions === 'rope') {
      cosine.replaceChildren(el('p', { className: 'muted' }, 'This model has no position embeddings to compare: with RoPE (position = rope) no vector is added for a position; instead every head turns its queries and keys by an angle proportional to their position, so that a score depends only on how far apart the two characters are. The One head view shows the query before and after the turn.'));
    } else {
      cosine.replaceChildren(el('p', { className: 'muted' }, 'This model has no position embeddings: a bigram sees only the current character.'));
    }
  });
}

const view = {
  id: 'embeddings',
  title: 'Embeddings',
  mount(element, shared) {
    app = shared;
    header = runHeader(app, 'emb');
    scatter = el('div', { id: 'emb-scatter' });
    cosine = el('div', { id: 'emb-cosine' });
    tokensNote = el('p', { className: 'muted small', id: 'emb-tokens-note' });
    rareNote = el('p', { className: 'muted small', id: 'emb-rare-note' });
    error = el('div', { id: 'emb-error', className: 'error' });
    ask = asker(app, header, error, () => {
      clear(scatter);
      delete scatter.dataset.step;
      rareNote.textContent = '';
      clear(cosine);
      tokensNote.textContent = '';
    });
    element.append(
      el('h2', {}, 'The characters as the model sees them'),
      header.element, error,
      el('div', { className: 'two-columns' },
        el('div', {},
          el('h3', {}, 'token embeddings on their first two principal components'),
          tokensNote,
          scatter,
          rareNote),
        el('div', {},
          el('h3', {}, 'position embeddings: cosine similarity'),
          el('p', { className: 'muted small' }, 'Row i, column j: how alike the vectors of positions i and j are. A bright diagonal band means nearby positions look alike.'),
          cosine)));
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
