"""Trains a lossless SentencePiece tokenizer on a text source.

  python -m tools.train_tokenizer --source builtin:stdlib-docs --vocab_size 8000 --out /tmp/spm.model

Point `data.tokenizer` at the result to reuse it across runs. Unlike `build_data`, which trains on the
train split only, this trains on every document of the source. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from pretrain.data import sources
from pretrain.runtime.cli import ArgumentParser, tool_main
from pretrain.runtime.errors import require
from pretrain.data.tokenizer import train_sentencepiece


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = ArgumentParser(prog='python -m tools.train_tokenizer', description=__doc__.splitlines()[0])
  parser.add_argument('--source', required=True, help=f'one of the schemes {", ".join(sources.SCHEMES)}, '
                      'e.g. builtin:stdlib-docs, text:/data/*.txt, jsonl:/data/*.jsonl')
  parser.add_argument('--vocab_size', type=int, required=True, help='number of pieces, e.g. 8000')
  parser.add_argument('--out', required=True, help='output .model file')
  parser.add_argument('--max_doc_chars', type=int, default=100_000, help='longer documents are split')
  parser.add_argument('--seed', type=int, default=0, help='seed of the line sample on large corpora')
  return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
  require(args.vocab_size > 0, f'--vocab_size: must be positive, got {args.vocab_size}')  # before reading the corpus
  stats = sources.SourceStats()
  started = time.perf_counter()
  docs = list(sources.read_documents(args.source, max_doc_chars=args.max_doc_chars, stats=stats, field='--source'))
  counts = ' '.join(f'{k}={v}' for k, v in stats.as_dict().items())
  tokenizer = train_sentencepiece(docs, args.vocab_size, args.out, vocab_field='--vocab_size', seed=args.seed)
  print(f'wrote {args.out}: vocab_size={tokenizer.vocab_size} {counts} '
        f'in {time.perf_counter() - started:.1f}s')


def main(argv: Sequence[str] | None = None) -> int:
  return tool_main(parse_args, run, argv)


if __name__ == '__main__':
  sys.exit(main())
