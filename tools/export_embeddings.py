"""A checkpoint's input token embeddings as a word2vec text file (gensim, fastText and most tools read it).

  python -m tools.export_embeddings --checkpoint runs/mlm --out /tmp/mlm.vec

Any checkpoint (bert, gpt2, fine-tuned). The first line is "N D"; then one line per id of the tokenizer
(rows past its vocabulary, padding of model.vocab_size, are left out): the piece, then D floats. word2vec
text splits on spaces, so whitespace and control characters in a piece are written as <0x20>-style escapes
(<U+3000> beyond Latin-1), and a piece that maps to an earlier one gets the suffix <id:N>. The file is
written beside --out and renamed into place when complete. Exit status 2 on bad input.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import unicodedata
from collections.abc import Sequence

import numpy as np

from pretrain.runtime.cli import ArgumentParser, tool_main
from pretrain.runtime.errors import require
from pretrain.model import load as model_load


def _escape(ch: str) -> str:
  if ch.isspace() or unicodedata.category(ch).startswith(('C', 'Z')):
    return f'<0x{ord(ch):02X}>' if ord(ch) < 0x100 else f'<U+{ord(ch):04X}>'
  return ch


def word_names(tokenizer) -> list[str]:
  """One whitespace-free, unique name per id of the tokenizer."""
  names, seen = [], set()
  for i in range(tokenizer.vocab_size):
    escaped = ''.join(_escape(ch) for ch in tokenizer.id_to_piece(i) or '')  # HF vocabs may have gaps
    name = escaped or f'<id:{i}>'
    if name in seen:
      name = f'{escaped}<id:{i}>'
    while name in seen:  # only if a piece is spelled like an escaped one
      name += '_'
    seen.add(name)
    names.append(name)
  return names


def write_word2vec(path: str | os.PathLike, names: Sequence[str], vectors_nd: np.ndarray) -> None:
  """Streams the text format to a temporary file beside path, then renames it into place."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'{path.name}.tmp.{os.getpid()}')
  try:
    with open(tmp, 'w', encoding='utf-8', newline='\n') as f:
      f.write(f'{len(names)} {vectors_nd.shape[1]}\n')
      for name, row in zip(names, vectors_nd.tolist()):
        f.write(name + ' ' + ' '.join('%.9g' % x for x in row) + '\n')  # %.9g: float32 round-trips exactly
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def export_embeddings(checkpoint: str, out: str) -> dict:
  """Writes `out`; returns {'rows', 'dim', 'path'}."""
  require(not pathlib.Path(out).is_dir(), f'--out: {out} is a directory; name the file to write')
  loaded = model_load.load_checkpoint(checkpoint)
  tok = loaded.tokenizer
  table_vd = np.asarray(loaded.params['encoder']['token_embed'], np.float32)
  require(tok.vocab_size <= table_vd.shape[0], f'--checkpoint: its tokenizer has {tok.vocab_size} tokens, more '
          f'than the {table_vd.shape[0]} rows of its embedding')
  write_word2vec(out, word_names(tok), table_vd[:tok.vocab_size])
  return {'rows': tok.vocab_size, 'dim': table_vd.shape[1], 'path': str(out)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = ArgumentParser(prog='python -m tools.export_embeddings',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', required=True, help='a workdir, its checkpoints/ dir or a step dir')
  parser.add_argument('--out', required=True, help='the word2vec text file to write (e.g. embeddings.vec)')
  return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
  summary = export_embeddings(args.checkpoint, args.out)
  print(f"wrote {summary['path']}: {summary['rows']} rows x {summary['dim']} dims (word2vec text)")
  return summary


def main(argv: Sequence[str] | None = None) -> int:
  return tool_main(parse_args, run, argv)


if __name__ == '__main__':
  sys.exit(main())
