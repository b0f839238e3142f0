"""Small CoNLL and SQuAD directories made of real English: sentences of the built-in corpus (the docstrings and
reference text shipped with Python), with entities and answers planted so that a test can derive every tag
and every answer.

NER: a sentence gets a place name (LOC, one or two words, some non-ASCII) and a year (DATE) at random word
positions; every other word is O. SQuAD: the context is a sentence with a planted place and year; the question
asks for one of them ('In which year ...?', 'Where ...?'); v2.0 adds questions whose answer was not planted.
"""
import json
import pathlib
import random

from pretrain.data.sources import stdlib_docs

PLACES = ('Zürich', 'São Paulo', 'Kraków', 'New York', 'Reykjavík', 'Berlin', 'Montréal', 'Oslo', 'Tōkyō',
          'Buenos Aires', 'Dvořák Hall', 'Cairo', 'Lagos', 'Ōsaka', 'Lima')
WORDS_PER_SENTENCE = (6, 24)


def corpus_sentences(count: int, seed: int = 0) -> list[list[str]]:
  """`count` sentences of the built-in corpus as words (6 to 24 words, letters and punctuation only)."""
  rng = random.Random(seed)
  sentences = []
  for document in stdlib_docs():
    for text in document.replace('\n', ' ').split('. '):
      words = text.split()
      if WORDS_PER_SENTENCE[0] <= len(words) <= WORDS_PER_SENTENCE[1] and all(w.isascii() and not any(
          c.isdigit() for c in w) for w in words):
        sentences.append(words)
  rng.shuffle(sentences)
  return sentences[:count]


def _plant(rng: random.Random, words: list[str]) -> tuple[list[str], list[str], str, str]:
  """The sentence with a place and a year planted; its IOB2 tags; the place; the year."""
  place, year = rng.choice(PLACES), str(rng.randrange(1800, 2030))
  words, tags = list(words), ['O'] * len(words)
  at = sorted(rng.sample(range(len(words) + 1), 2), reverse=True)  # between original words: never inside the other
  for position, (planted, kind) in zip(at, rng.sample([(place.split(), 'LOC'), ([year], 'DATE')], 2)):
    words[position:position] = ['in', *planted]
    tags[position:position] = ['O', f'B-{kind}', *[f'I-{kind}'] * (len(planted) - 1)]
  return words, tags, place, year


def write_conll(root: pathlib.Path, train: int = 160, dev: int = 40, seed: int = 0) -> dict:
  """root/{train,dev,test}.txt in the CoNLL-2003 layout (IOB1 in train, as the original files); returns the
  IOB2 gold tags {split: [[tag, ...], ...]}."""
  rng = random.Random(seed)
  sentences = corpus_sentences(train + 2 * dev, seed)
  splits = {'train': sentences[:train], 'dev': sentences[train:train + dev], 'test': sentences[train + dev:]}
  root.mkdir(parents=True, exist_ok=True)
  gold = {}
  for split, chosen in splits.items():
    lines, gold[split] = ['-DOCSTART- -X- -X- O', ''], []
    for words in chosen:
      words, tags, _, _ = _plant(rng, words)
      gold[split].append(tags)
      written = [t.replace('B-', 'I-') for t in tags] if split == 'train' else tags  # IOB1: no B- needed here
      lines += [f'{w} X _ {t}' for w, t in zip(words, written)] + ['']
    (root / f'{split}.txt').write_text('\n'.join(lines), encoding='utf-8')
  return gold


def write_squad(root: pathlib.Path, version: str = '1.1', train: int = 160, dev: int = 40,
                seed: int = 0) -> None:
  """root/train-vX.json and dev-vX.json; questions ask for the planted place or year of their context; v2.0:
  a quarter ask for what was not planted (impossible)."""
  rng = random.Random(seed)
  sentences = corpus_sentences(train + dev, seed + 1)
  root.mkdir(parents=True, exist_ok=True)
  for split, chosen in (('train', sentences[:train]), ('dev', sentences[train:])):
    articles = []
    for n, words in enumerate(chosen):
      words, _, place, year = _plant(rng, words)
      impossible = version == '2.0' and rng.random() < 0.25
      if impossible:  # the planted year is taken out: the year question has no answer
        words = [w for w in words if w != year]
      context = ' '.join(words)
      asks_year = impossible or rng.random() < 0.5
      answer = year if asks_year else place
      question = 'In which year did it happen?' if asks_year else 'Where did it happen?'
      qa = {'id': f'{split}-{n}', 'question': question, 'answers': [] if impossible else [
          {'text': answer, 'answer_start': context.index(f'in {answer}') + 3}]}
      if version == '2.0':
        qa['is_impossible'] = impossible
      articles.append({'title': f'{split} {n}', 'paragraphs': [{'context': context, 'qas': [qa]}]})
    (root / f'{split}-v{version}.json').write_text(json.dumps({'version': version, 'data': articles}),
                                                     encoding='utf-8')
