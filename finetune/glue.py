"""The GLUE benchmark of one checkpoint: every task x seeds, one table, results and a leaderboard submission.

  python -m finetune.glue --checkpoint CKPT --data glue_dir:PATH --workdir DIR [--tasks sst2,mrpc,...]
      [--seeds 3] [--set train.epochs=2] [--set rte:train.learning_rate=3e-5]

Writes DIR/<task>/seed_<s>/ (one `python -m finetune` run each), DIR/glue_results.json, and
DIR/glue_submission.zip: the test predictions of each task's best seed (by dev score) in the leaderboard's
format (SST-2.tsv, MNLI-m.tsv, AX.tsv, ...).

CKPT is resolved once, at the start, to one step directory (the newest step of a workdir), which every run
starts from and glue_results.json records (checkpoint_dir, checkpoint_step), even if pretraining writes newer
steps meanwhile. A rerun reuses a finished run whose config, that step directory included, is unchanged, so
after more pretraining it fine-tunes the new step; a preempted run is not finished and runs again. With
--from_scratch the weights are fresh but the architecture and tokenizer are that step's: it is recorded, and
reuse decided, the same way. SIGTERM stops the run in progress (see finetune/train.py) and then this script,
with exit code 0, before glue_results.json is written: rerun the same command to continue.
"""
import argparse
import json
import pathlib
import sys
import zipfile

import numpy as np
from absl import logging

from finetune.tasks import TASKS
from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime.cli import fail
from pretrain.runtime.errors import ConfigError, JobError
from pretrain.runtime.files import write_atomic
from pretrain.runtime.preemption import PreemptionWatch

TRAINED_TASKS = tuple(name for name, t in TASKS.items() if t.dev_files)
# bert-base-cased dev scores, mean of 5 seeds, from the Hugging Face Flax GLUE example (x100).
BERT_BASE_REFERENCE = {('cola', 'matthews_corrcoef'): 59.0, ('sst2', 'accuracy'): 92.2, ('mrpc', 'f1'): 89.9,
                       ('stsb', 'pearson'): 88.7, ('qqp', 'f1'): 87.6, ('mnli', 'accuracy'): 83.8,
                       ('qnli', 'accuracy'): 90.8, ('rte', 'accuracy'): 64.8}
REFERENCE_SPLITS = ('dev', 'dev_matched')  # MNLI's reference is MNLI-m


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m finetune.glue', description=__doc__.split('\n\n')[0])
  parser.add_argument('--checkpoint', required=True, help='pretraining workdir, its checkpoints/ dir or a step dir')
  parser.add_argument('--data', required=True, help="glue_dir:PATH, or tfds:glue (needs TensorFlow)")
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--tasks', default=','.join(TRAINED_TASKS), help='comma-separated (default: all)')
  parser.add_argument('--seeds', type=int, default=1, help='runs per task, seeds seed..seed+N-1')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--set', action='append', default=[], metavar='[TASK:]FIELD=VALUE',
                      help='config override for every task, or for one (repeatable)')
  parser.add_argument('--from_scratch', action='store_true', help='baseline: random weights, same architecture')
  return parser.parse_args(argv)


def _scoped(spec: str) -> tuple[str | None, str]:
  """'rte:train.epochs=5' -> ('rte', 'train.epochs=5'); 'train.epochs=5' -> (None, 'train.epochs=5')."""
  field = spec.split('=', 1)[0]
  if ':' not in field:
    return None, spec
  scope, _, override = spec.partition(':')
  return scope, override


FLAG_FIELDS = {'task': '--tasks', 'seed': '--seed/--seeds', 'init_checkpoint': '--checkpoint',
               'from_scratch': '--from_scratch', 'data.source': '--data'}


def _override(config, spec: str) -> None:
  field, sep, raw = spec.partition('=')
  if not sep:
    raise ConfigError(f'--set {spec}: expected FIELD=VALUE')
  if field in FLAG_FIELDS:
    raise ConfigError(f'--set {spec}: {field} is set by {FLAG_FIELDS[field]}')
  try:
    parent = config
    *sections, leaf = field.split('.')
    for section in sections:
      parent = parent[section]
    current = parent[leaf]
    parent[leaf] = type(current)(raw) if not isinstance(current, bool) else raw.lower() in ('1', 'true', 'yes')
  except (KeyError, AttributeError):
    raise ConfigError(f'--set {spec}: no config field {field}') from None
  except (TypeError, ValueError):
    raise ConfigError(f'--set {spec}: {raw!r} is not a {type(current).__name__}') from None


def resolve_checkpoint(args) -> pathlib.Path:
  """The step directory --checkpoint names (a workdir's or checkpoints/ dir's newest), resolved once."""
  step_dir, _ = checkpoint_lib.read_checked_meta(args.checkpoint, '--checkpoint')
  return step_dir


def task_configs(args, step_dir: pathlib.Path) -> dict[str, list]:
  """task -> one config per seed from step_dir, every override applied and checked (nothing is compiled yet)."""
  from configs import finetune_glue
  from finetune import checks
  tasks = [t.strip() for t in args.tasks.split(',') if t.strip()]
  unknown = [t for t in tasks if t not in TRAINED_TASKS]
  if unknown:
    raise ConfigError(f'--tasks: {unknown} are not among {TRAINED_TASKS} (AX is predicted by the mnli run)')
  if args.seeds < 1:
    raise ConfigError(f'--seeds: must be at least 1, got {args.seeds}')
  for spec in args.set:
    scope, _ = _scoped(spec)
    if scope is not None and scope not in tasks:
      raise ConfigError(f'--set {spec}: task {scope!r} is not in --tasks')
  configs = {}
  for task in tasks:
    configs[task] = []
    for seed in range(args.seed, args.seed + args.seeds):
      config = finetune_glue.get_config(task)
      config.init_checkpoint, config.seed, config.from_scratch = str(step_dir), seed, args.from_scratch
      config.data.source = f'tfds:glue/{task}' if args.data == 'tfds:glue' else args.data
      for spec in args.set:
        scope, override = _scoped(spec)
        if scope in (None, task):
          _override(config, override)
      checks.validate(config)
      configs[task].append(config)
    checks.load_pretrained(configs[task][0])  # the checkpoint fits this task's settings
  return configs


def _run_once(config, run_dir: pathlib.Path) -> dict:
  """One fine-tuning run, or the results of a finished (not preempted) run of the same config in run_dir.

  config.init_checkpoint is a resolved step directory, so the same config means the same pretraining step."""
  from finetune import train
  config_json = config.to_json(sort_keys=True)
  results_path, config_path = run_dir / 'results.json', run_dir / 'finetune_config.json'
  if results_path.exists() and config_path.exists() and config_path.read_text() == config_json:
    results = json.loads(results_path.read_text())
    if not results.get('preempted'):
      logging.info('%s: reusing the finished run', run_dir)
      return results
  run_dir.mkdir(parents=True, exist_ok=True)
  results_path.unlink(missing_ok=True)
  config_path.write_text(config_json)
  return train.run(config, str(run_dir))


def summarize(runs: dict[str, list[dict]]) -> dict:
  """task -> {'<split>/<metric>': {'mean', 'std', 'values'}} over seeds (x100, as GLUE reports)."""
  summary = {}
  for task, results in runs.items():
    entries = {}
    for split in TASKS[task].dev_files:
      for metric in TASKS[task].metrics:
        values = [100 * r[split][metric] for r in results]
        entries[f'{split}/{metric}'] = {'mean': float(np.mean(values)), 'std': float(np.std(values)),
                                        'values': values}
    summary[task] = entries
  return summary


def table(summary: dict, seeds: int) -> str:
  lines = [f'{"task":<22} {"metric":<18} {"mean":>7} {"± std":>7} {"n":>3} {"BERT-base":>10}']
  for task, entries in summary.items():
    for key, entry in entries.items():
      split, metric = key.split('/')
      label = task if split == 'dev' else f'{task} ({split})'
      reference = BERT_BASE_REFERENCE.get((task, metric)) if split in REFERENCE_SPLITS else None
      lines.append(f'{label:<22} {metric:<18} {entry["mean"]:>7.2f} {entry["std"]:>7.2f} {seeds:>3} '
                   f'{reference if reference is not None else "":>10}')
  return '\n'.join(lines)


def write_submission(workdir: pathlib.Path, runs: dict[str, list[dict]], run_dirs: dict[str, list]) -> list[str]:
  """Zips each task's best-seed test predictions; returns the file names it holds."""
  names = []
  with zipfile.ZipFile(workdir / 'glue_submission.zip.tmp', 'w', zipfile.ZIP_DEFLATED) as archive:
    for task, results in runs.items():
      split, metric = next(iter(TASKS[task].dev_files)), TASKS[task].metrics[0]
      best = int(np.argmax([r[split][metric] for r in results]))
      for path in sorted((run_dirs[task][best] / 'predictions').glob('*.tsv')):
        if not path.stem.startswith('dev'):
          archive.write(path, path.name)
          names.append(path.name)
  (workdir / 'glue_submission.zip.tmp').replace(workdir / 'glue_submission.zip')
  return names


def run_all(configs: dict[str, list], workdir: pathlib.Path) -> tuple[dict, dict] | None:
  """(task -> results per seed, task -> run dirs); None when preempted (finished runs are kept for a rerun)."""
  runs, run_dirs = {}, {}
  total, done = sum(len(c) for c in configs.values()), 0
  with PreemptionWatch() as preemption:  # between runs; each run watches for itself while it trains
    for task, seed_configs in configs.items():
      run_dirs[task] = [workdir / task / f'seed_{c.seed}' for c in seed_configs]
      runs[task] = []
      for config, run_dir in zip(seed_configs, run_dirs[task]):
        done += 1
        if not preemption.signalled:
          logging.info('glue: run %d/%d: %s seed %d', done, total, task, config.seed)
          try:
            runs[task].append(_run_once(config, run_dir))
          except JobError as e:
            raise type(e)(f'{task} seed {config.seed}: {e}') from None
        if preemption.signalled or runs[task][-1].get('preempted'):
          logging.warning('glue: preempted before finishing run %d/%d (%s seed %d); rerun the same command to '
                          'continue', done, total, task, config.seed)
          return None
  return runs, run_dirs


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from pretrain.runtime.metrics_log import quiet_library_logs
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()
  workdir = pathlib.Path(args.workdir).absolute()
  try:
    step_dir = resolve_checkpoint(args)
    configs = task_configs(args, step_dir)
    logging.info('glue: fine-tuning %s', step_dir)
    done = run_all(configs, workdir)
  except ConfigError as e:
    fail(str(e))
  except JobError as e:  # diverged, a failed checkpoint write: the finished runs are kept
    fail(str(e), code=1)
  if done is None:
    return 0
  runs, run_dirs = done
  summary = summarize(runs)
  names = write_submission(workdir, runs, run_dirs)
  expected = sorted(f'{n}.tsv' for t in TASKS.values() for n in t.test_files)
  missing = sorted(set(expected) - set(names))
  output = {'checkpoint': args.checkpoint, 'checkpoint_dir': str(step_dir), 'checkpoint_step': int(step_dir.name),
            'data': args.data, 'seeds': list(range(args.seed, args.seed + args.seeds)),
            'from_scratch': args.from_scratch, 'overrides': args.set, 'tasks': summary,
            'reference_bert_base': {f'{t}/{m}': v for (t, m), v in BERT_BASE_REFERENCE.items()},
            'submission': {'zip': str(workdir / 'glue_submission.zip'), 'files': names, 'missing': missing}}
  write_atomic(workdir / 'glue_results.json', json.dumps(output, indent=2) + '\n')
  print(table(summary, args.seeds))
  print(f'wrote {workdir / "glue_results.json"} and {workdir / "glue_submission.zip"} ({len(names)} files'
        + (f'; the leaderboard also needs {", ".join(missing)})' if missing else ')'))
  return 0


if __name__ == '__main__':
  sys.exit(main())
