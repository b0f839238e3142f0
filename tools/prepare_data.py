"""Tokenizes a corpus once into packed rows in ArrayRecord shards, for training with data.source='prepared:DIR'.

  python -m tools.prepare_data --source 'text:/data/wiki/*.txt' --tokenizer wiki.model --seq_len 512 \\
      --out /data/wiki-512 [--eval_fraction 0.02] [--records_per_shard R] [--workers W]

The source (any of pretrain/data/sources.py) is streamed in chunks through W tokenizer processes, in order, so
memory stays bounded and the output is deterministic; the rows are bit for bit those the in-memory pipeline packs
(pretrain/data/prepared_writer.py). DIR is written to a temporary directory and renamed into place when
complete; its layout and record format are in pretrain/data/prepared.py. prepared.json: format, version, source,
seq_len, tokenizer ('tokenizer.model', a copy of --tokenizer), vocab_size, token_dtype, eval_fraction,
max_doc_chars, counts (documents, skipped ones by reason, split documents, rows and tokens, shards) and shards
(file names per split). Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from collections.abc import Sequence

from pretrain.data import sources
from pretrain.data.prepared_writer import SHARD_BYTES, WriteOptions, write_prepared
from pretrain.runtime.cli import ArgumentParser, tool_main
from pretrain.runtime.errors import require
from pretrain.runtime.files import check_output_dir


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = ArgumentParser(prog='python -m tools.prepare_data', description=__doc__.splitlines()[0])
  parser.add_argument('--source', required=True, help=f'one of the schemes {", ".join(sources.SCHEMES)}, '
                      'e.g. builtin:stdlib-docs, text:/data/*.txt, jsonl:/data/*.jsonl, tfds:wikipedia/20230601.en')
  parser.add_argument('--tokenizer', required=True, help='SentencePiece .model file (copied into --out)')
  parser.add_argument('--seq_len', type=int, required=True, help='row length: must equal data.seq_len at training')
  parser.add_argument('--out', required=True, help='output directory; must not exist or be empty')
  parser.add_argument('--eval_fraction', type=float, default=0.02, help='share of documents held out, by text hash')
  parser.add_argument('--max_doc_chars', type=int, default=100_000, help='longer documents are split')
  parser.add_argument('--records_per_shard', type=int, default=0,
                      help=f'rows per shard file; 0: about {SHARD_BYTES >> 20} MiB of rows per shard')
  parser.add_argument('--workers', type=int, default=os.cpu_count() or 1, help='tokenizer processes')
  parser.add_argument('--progress_every', type=float, default=10.0, help='seconds between progress lines')
  return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
  """Writes args.out; returns its prepared.json."""
  require(args.seq_len >= 2, f'--seq_len: must be >= 2, got {args.seq_len}')
  require(0 <= args.eval_fraction < 1, f'--eval_fraction: must be in [0, 1), got {args.eval_fraction}')
  require(args.workers >= 1, f'--workers: must be >= 1, got {args.workers}')
  require(args.records_per_shard >= 0, f'--records_per_shard: must be >= 0, got {args.records_per_shard}')
  require(os.path.isfile(args.tokenizer), f"--tokenizer: no such file '{args.tokenizer}'")
  check_output_dir(args.out)
  started = time.perf_counter()
  options = WriteOptions(args.source, args.tokenizer, args.seq_len, args.eval_fraction, args.max_doc_chars,
                         args.records_per_shard, args.workers, args.progress_every)
  manifest = write_prepared(options, args.out)
  size = sum(p.stat().st_size for p in pathlib.Path(args.out).iterdir())
  c = manifest['counts']
  print(f'prepare_data: read {args.source}: ' + ' '.join(f'{k}={c[k]}' for k in sources.SourceStats().as_dict()),
        flush=True)
  print(f'wrote {args.out}: {c["documents"]:,} documents -> {c["train_rows"]:,} train rows '
        f'({c["train_tokens"]:,} tokens, {c["train_shards"]} shards), {c["eval_rows"]:,} eval rows '
        f'({c["eval_tokens"]:,} tokens), {size / 2**20:.1f} MiB in {time.perf_counter() - started:.1f}s', flush=True)
  return manifest


def main(argv: Sequence[str] | None = None) -> int:
  return tool_main(parse_args, run, argv)


if __name__ == '__main__':
  sys.exit(main())
