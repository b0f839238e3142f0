"""Checkpoint conversion to and from Hugging Face Transformers (PyTorch classes; needs the `hf` extra).

  python -m tools.convert_checkpoint to-hf --checkpoint runs/mlm --out hf/mlm [--verify] [--max_shard_size 5GB]
  python -m tools.convert_checkpoint from-hf --hf path/to/bert --out ckpt/bert [--verify]

to-hf writes config.json, model.safetensors (sharded with an index past --max_shard_size) and tokenizer files:
BertForMaskedLM (bert), GPT2LMHeadModel (gpt2), LlamaForCausalLM (llama), ModernBertForMaskedLM (modernbert) or,
fine-tuned, BertForSequenceClassification / LlamaForSequenceClassification / ModernBertForSequenceClassification,
and for per-token heads (Classifier outputs 'tokens' / 'spans') Bert, ModernBert, Llama or GPT2 ForTokenClassification
/ ForQuestionAnswering.
from-hf imports a BERT, GPT-2, Llama or ModernBERT directory
(safetensors, sharded or not, or pytorch_model.bin) as a checkpoint that finetune and pretrain take as
init_checkpoint.
--verify runs both models on the same tokens and fails (exit 2) if their outputs differ by more than 1e-4.
Bad input is one line `error: ...` and exit status 2; an output directory appears only when complete.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from pretrain.runtime.cli import ArgumentParser, tool_main
from pretrain.runtime.errors import ConfigError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = ArgumentParser(prog='python -m tools.convert_checkpoint', description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest='command', required=True)
  to_hf = commands.add_parser('to-hf', help='our checkpoint -> a Hugging Face model directory')
  to_hf.add_argument('--checkpoint', required=True, help='a workdir, its checkpoints/ dir or a step dir')
  to_hf.add_argument('--out', required=True, help='the HF directory to write (must not exist, or be empty)')
  to_hf.add_argument('--verify', action='store_true', help='load the result with transformers and compare outputs')
  to_hf.add_argument('--max_shard_size', default='5GB',
                     help='largest weight file (5GB, 500MB, 2GiB or bytes); more is split into indexed shards')
  from_hf = commands.add_parser('from-hf', help='a Hugging Face BERT, GPT-2, Llama or ModernBERT directory -> our '
                                'checkpoint')
  from_hf.add_argument('--hf', required=True, help='directory with config.json, weights and tokenizer files')
  from_hf.add_argument('--out', required=True, help='the checkpoint directory to write (must not exist, or be empty)')
  from_hf.add_argument('--seed', type=int, default=0, help='seed of freshly initialised parts (e.g. an MLM head)')
  from_hf.add_argument('--verify', action='store_true', help='compare our outputs with transformers on the source')
  return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
  try:
    return _convert(args)
  except ModuleNotFoundError as e:  # safetensors, torch or transformers: the `hf` extra
    package = (e.name or '').split('.')[0]
    raise ConfigError(f"{args.command}: needs the Python package {package!r} of the `hf` extra (on CPU machines: "
                      "pip install torch==2.13.0 && pip install -e '.[hf]')") from None


def _convert(args: argparse.Namespace) -> dict:
  if args.command == 'to-hf':
    from tools.convert_checkpoint.export import export  # pylint: disable=import-outside-toplevel
    summary = export(args.checkpoint, args.out, args.max_shard_size)
    shards = len(summary['files'])
    print(f"wrote {args.out}: {summary['architecture']}, {summary['tensors']} tensors, "
          f"{summary['parameters']:,} parameters" + (f' in {shards} shards' if shards > 1 else '') +
          f", from {summary['from']}")
    checkpoint, hf_dir = args.checkpoint, args.out
  else:
    from tools.convert_checkpoint.importer import import_hf  # pylint: disable=import-outside-toplevel
    summary = import_hf(args.hf, args.out, args.seed)
    fresh = summary['freshly_initialised']
    print(f"wrote {summary['checkpoint']}: {summary['preset']}, {summary['parameters']:,} parameters, "
          f"tokenizer {summary['tokenizer']}" + (f"; freshly initialised (not in {args.hf}): {', '.join(fresh)}"
                                                  if fresh else ''))
    checkpoint, hf_dir = args.out, args.hf
  if args.verify:
    from tools.convert_checkpoint.verify import verify  # pylint: disable=import-outside-toplevel
    print(verify(checkpoint, hf_dir))
  return summary


def main(argv: Sequence[str] | None = None) -> int:
  return tool_main(parse_args, run, argv)

