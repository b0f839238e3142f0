"""SentencePiece tokenizer: lossless round trips, special ids, serialisation, clear errors."""

import io
import pickle

import pytest
import sentencepiece as spm
from pydoc_data import topics

from pretrain.runtime.errors import ConfigError
from pretrain.data.tokenizer import Tokenizer, train_sentencepiece

TEXTS = [
    'Hello, world!',
    'line one\nline two\n\nafter a blank line\n',
    '\tindented with a tab\n    and four spaces\t\ttwo tabs',
    'Windows line end\r\nand a lone \r carriage return',
    'non-ASCII: café, naïve, Straße, 中文字符, Ελληνικά, emoji 🙂👍',
    '  leading and trailing spaces  ',
    'many     inner      spaces',
    'digits 1234567890 and 3.14159',
    'specials as text: <s> </s> <pad> <unk> [MASK] [CLS]',
    '\n\n\n',
    '',
]


@pytest.fixture(scope='module')
def corpus() -> list[str]:
  return [topics.topics[k] for k in sorted(topics.topics)[:40]]


@pytest.fixture(scope='module')
def tok(corpus, tmp_path_factory) -> Tokenizer:
  return train_sentencepiece(corpus, 600, tmp_path_factory.mktemp('tok') / 'spm.model')


def test_special_ids_are_fixed(tok):
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.special_ids == (0, 1, 2, 3, 4)
  assert tok.vocab_size == 600
  assert [tok.id_to_piece(i) for i in range(5)] == ['<pad>', '<unk>', '<s>', '</s>', '[MASK]']


@pytest.mark.parametrize('text', TEXTS)
def test_round_trip_is_lossless(tok, text):
  assert tok.decode(tok.encode(text)) == text


def test_round_trip_of_whole_documents(tok, corpus):
  held_out = [topics.topics[k] for k in sorted(topics.topics)[40:60]]
  for doc in corpus[:5] + held_out:
    assert tok.decode(tok.encode(doc)) == doc
  assert tok.encode_batch(held_out) == [tok.encode(d) for d in held_out]


def test_encode_never_produces_special_ids(tok, corpus):
  for text in TEXTS + corpus:
    assert not set(tok.encode(text)) & set(tok.special_ids), text[:50]


def test_decode_drops_cls_sep_pad(tok):
  text = 'some text\nwith a newline'
  assert tok.decode([tok.cls_id, *tok.encode(text), tok.sep_id, tok.pad_id, tok.pad_id]) == text


def test_digits_are_split(tok):
  assert [tok.id_to_piece(i) for i in tok.encode('2024')] == ['2', '0', '2', '4']


def test_bytes_file_and_pickle_round_trips(tok, tmp_path):
  text = TEXTS[4]
  assert Tokenizer.from_bytes(tok.to_bytes()).encode(text) == tok.encode(text)
  tok.save(tmp_path / 'sub' / 'copy.model')
  assert Tokenizer.from_file(tmp_path / 'sub' / 'copy.model').to_bytes() == tok.to_bytes()
  assert pickle.loads(pickle.dumps(tok)).encode(text) == tok.encode(text)


def test_training_is_deterministic(corpus):
  assert train_sentencepiece(corpus[:10], 400).to_bytes() == train_sentencepiece(corpus[:10], 400).to_bytes()


def test_training_writes_out_path(corpus, tmp_path):
  out = tmp_path / 'out.model'
  tok = train_sentencepiece(corpus[:10], 400, out)
  assert Tokenizer.from_file(out).to_bytes() == tok.to_bytes()


def test_vocab_too_large_names_the_field(corpus):
  with pytest.raises(ConfigError, match=r'^model\.vocab_size: 100000 is too large .*at most \d+') as e:
    train_sentencepiece(corpus[:3], 100_000)
  assert '\n' not in str(e.value)


def test_vocab_too_small_names_the_field(corpus):
  with pytest.raises(ConfigError, match=r'^--vocab_size: 50 is too small'):
    train_sentencepiece(corpus[:3], 50, vocab_field='--vocab_size')


def test_no_text_to_train_on():
  with pytest.raises(ConfigError, match='no non-blank lines'):
    train_sentencepiece(['', '  \n '], 400)


def test_bad_or_missing_model_file_names_the_file(tmp_path):
  bad = tmp_path / 'bad.model'
  bad.write_bytes(b'not a model')
  with pytest.raises(ConfigError, match=f'^{bad}: not a SentencePiece model'):
    Tokenizer.from_file(bad)
  with pytest.raises(ConfigError, match='missing.model: cannot read'):
    Tokenizer.from_file(tmp_path / 'missing.model')


def _foreign_model(corpus, **kwargs) -> bytes:
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus[:10]), model_writer=buf, vocab_size=300,
                                 minloglevel=2, **kwargs)
  return buf.getvalue()


def test_foreign_model_without_mask_or_pad_falls_back_to_unk(corpus, tmp_path):
  tok = Tokenizer.from_bytes(_foreign_model(corpus))  # sentencepiece defaults: no pad, no [MASK]
  assert tok.mask_id == tok.unk_id and tok.pad_id == tok.unk_id
  assert tok.special_ids == (tok.unk_id, tok.cls_id, tok.sep_id)


def test_foreign_model_without_bos_is_rejected(corpus, tmp_path):
  path = tmp_path / 'nobos.model'
  path.write_bytes(_foreign_model(corpus, bos_id=-1))
  with pytest.raises(ConfigError, match=f'^{path}: .*no BOS'):
    Tokenizer.from_file(path)


def test_train_tokenizer_tool(tmp_path, capsys):
  from tools import train_tokenizer  # pylint: disable=g-import-not-at-top
  (tmp_path / 'doc.txt').write_text('\n\n'.join(topics.topics[k] for k in sorted(topics.topics)[:10]))
  out = tmp_path / 'spm.model'
  assert train_tokenizer.main(['--source', f'text:{tmp_path}/*.txt', '--vocab_size', '400', '--out', str(out)]) == 0
  assert Tokenizer.from_file(out).vocab_size == 400 and 'vocab_size=400' in capsys.readouterr().out
  assert train_tokenizer.main(['--source', 'nope:x', '--vocab_size', '400', '--out', str(out)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --source: unknown source 'nope:x'") and err.count('\n') == 1
  assert train_tokenizer.main(['--source', f'text:{tmp_path}/*.txt', '--vocab_size', '99999', '--out', 'x']) == 2
  assert capsys.readouterr().err.startswith('error: --vocab_size: 99999 is too large')
