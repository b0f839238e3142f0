"""A synthetic corpus that depends on nothing but this code: pseudo-words with Zipf-like frequencies."""
import pathlib
import random

_CONSONANTS = 'bdfgklmnprstvz'
_VOWELS = 'aeiou'


def _words(rng: random.Random, count: int) -> list[str]:
  words = []
  while len(words) < count:
    word = ''.join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 4)))
    if word not in words:
      words.append(word)
  return words


def write_synthetic_corpus(directory, documents: int = 240, seed: int = 0) -> str:
  """Writes DIR/doc-NNN.txt (sentences of pseudo-words, a few lines each); returns the `text:` source."""
  rng = random.Random(seed)
  vocabulary = _words(rng, 1500)
  weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for d in range(documents):
    lines = []
    for _ in range(rng.randint(1, 6)):
      sentence = rng.choices(vocabulary, weights, k=rng.randint(4, 18))
      lines.append(sentence[0].capitalize() + ' ' + ' '.join(sentence[1:]) + rng.choice('.!?'))
    (directory / f'doc-{d:03d}.txt').write_text('\n'.join(lines) + '\n')
  return f'text:{directory}/*.txt'
