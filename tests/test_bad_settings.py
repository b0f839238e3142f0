"""Wrong settings at every entry point (pretrain, finetune, tools.*), each run as the real CLI in a subprocess:
exit 2, a last line `error: FIELD: ...` naming the field, flag or file at fault, no traceback, no jit compilation
(JAX_LOG_COMPILES=1) and nothing written that a later correct run would trip over.

The subprocesses inherit conftest's 8 fake CPU devices: the mesh and batch rows count on them.
"""
import os
import re
import subprocess
import sys

import pytest

from pretrain.data.tokenizer import train_sentencepiece
from tests.helpers import ROOT

# What jax 0.10.2 logs for every jit compilation under JAX_LOG_COMPILES=1 (pxla: 'Compiling jit(f) with global
# shapes ...'; dispatch: 'Finished XLA compilation of jit(f) in ... sec').
COMPILE_LOG = re.compile(r'Compiling jit\(|Finished XLA compilation of')

MLM = ['pretrain', '--config', 'configs/pretrain_mlm.py:size=tiny', '--workdir', '{tmp}/run',
       '--config.train.steps=2', '--config.train.eval_batches=1']
CLM = [*MLM[:2], 'configs/pretrain_clm.py:size=tiny', *MLM[3:]]
GLUE = ['finetune', '--config', 'configs/finetune_glue.py:task=sst2', '--workdir', '{tmp}/run',
        '--config.init_checkpoint={tmp}/no-checkpoint', '--config.data.source=glue_dir:{in}/glue',
        '--config.train.max_train_examples=8']
BENCH = ['tools.benchmark', '--config', 'configs/pretrain_mlm.py:size=tiny', '--steps', '1', '--warmup', '0',
         '--config.model.num_layers=1', '--config.model.hidden_size=32', '--config.model.mlp_dim=64']
PLAN = ['tools.plan', '--config', 'configs/pretrain_mlm.py:size=tiny', '--devices', '8']
TPU = ['tools.launch', 'tpu', '--config', 'configs/bert_large_wiki.py:data=/shared/wiki-128', '--workdir',
       '/shared/runs/x', '--tpu', 'my-tpu', '--zone', 'us-central2-b', '--accelerator_type', 'v4-32', '--dry-run']
SLURM = ['tools.launch', 'slurm', '--config', 'configs/gpt2_large_wiki.py:data=/shared/wiki', '--workdir',
         '/shared/runs/x', '--nodes', '2', '--gpus_per_node', '8', '--dry-run']
PREPARE = ['tools.prepare_data', '--source', 'text:{in}/corpus/*.txt', '--tokenizer', '{in}/spm.model',
           '--seq_len', '32', '--workers', '1']
TOKENIZER = ['tools.train_tokenizer', '--source', 'text:{in}/corpus/*.txt', '--vocab_size', '100']

# (id, argv with {tmp} (this test's directory) and {in} (the shared inputs), what the error line must contain)
PRETRAIN_ROWS = [
    ('heads-not-dividing-hidden', [*MLM, '--config.model.num_heads=5'], 'model.num_heads: 5 does not divide'),
    ('mask-prob-above-1', [*MLM, '--config.mlm.mask_prob=1.5'], 'mlm.mask_prob: must be in (0, 1)'),
    ('dropout-2', [*CLM, '--config.model.dropout_rate=2.0'], 'model.dropout_rate: must be in [0, 1)'),
    ('seq-len-over-positions', [*MLM, '--config.data.seq_len=1024'],
     'data.seq_len: 1024 exceeds model.max_position_embeddings 512'),
    ('unknown-objective', [*CLM, '--config.objective=xlm'], "objective: 'xlm' is not one of"),
    ('unknown-source-scheme', [*CLM, '--config.data.source=ftp:corpus'], "data.source: unknown scheme in 'ftp:corpus'"),
    ('glob-matches-nothing', [*CLM, '--config.data.source=text:{tmp}/none/*.txt'],
     'data.source: no files match'),
    ('batch-not-divisible-by-mesh', [*MLM, '--config.train.batch_size=12'],
     'train.batch_size: 12 / train.microbatches 1 = 12 rows per microbatch is not divisible by the data-parallel'),
    ('mesh-not-device-count', [*MLM, '--config.mesh.data=3'], 'mesh: data*fsdp*tensor = 3*1*1 = 3 does not match'),
    ('misspelt-key', [*MLM, '--config.train.stepz=3'], 'stepz'),
    ('missing-config-file', ['pretrain', '--config', 'configs/no_such_config.py', '--workdir', '{tmp}/run'],
     '--config: [Errno 2] No such file or directory'),
    ('negative-learning-rate', [*CLM, '--config.train.learning_rate=-0.001'], 'train.learning_rate: must be positive'),
    ('negative-steps', [*CLM, '--config.train.steps=-5'], 'train.steps: must be positive, got -5'),
    ('steps-not-a-number', [*MLM, '--config.train.steps=abc'], '--config.train.steps=abc'),
    ('heads-not-an-int', [*MLM, '--config.model.num_heads=4.5'], '--config.model.num_heads=4.5'),
    ('sentence-task-with-clm', [*CLM, '--config.mlm.sentence_task=nsp'], "mlm.sentence_task: needs objective 'mlm'"),
    ('unknown-dtype', [*MLM, '--config.model.dtype=float64'], "model.dtype: 'float64' is not one of"),
    ('missing-init-checkpoint', [*CLM, '--config.init_checkpoint={tmp}/no-checkpoint'], 'init_checkpoint: '),
    ('workdir-url', [*CLM[:4], 'gs://bucket/run', *CLM[5:]], '--workdir: gs://bucket/run is a URL'),
]
FINETUNE_ROWS = [
    ('unknown-task', [*GLUE[:2], 'configs/finetune_glue.py:task=glue', *GLUE[3:]], "task: 'glue' is not one of"),
    ('no-init-checkpoint', [*GLUE[:5], *GLUE[6:]], 'init_checkpoint: required'),
    ('init-checkpoint-does-not-exist', GLUE, 'init_checkpoint: '),
    ('unknown-source-scheme', [*GLUE, '--config.data.source=hf:glue/sst2'], "data.source: expected 'glue_dir:PATH'"),
    ('glue-dir-without-the-task', [*GLUE, '--config.data.source=glue_dir:{tmp}'], 'data.source: '),
    ('negative-learning-rate', [*GLUE, '--config.train.learning_rate=-2e-5'], 'train.learning_rate: must be positive'),
    ('zero-batch', [*GLUE, '--config.train.batch_size=0'], 'train.batch_size: must be positive, got 0'),
    ('warmup-fraction-above-1', [*GLUE, '--config.train.warmup_fraction=1.5'], 'train.warmup_fraction: must be in'),
    ('unknown-pooling', [*GLUE, '--config.pooling=max'], "pooling: 'max' is not one of"),
    ('max-length-2', [*GLUE, '--config.data.max_length=2'], 'data.max_length: must be at least 4, got 2'),
    ('dropout-2', [*GLUE, '--config.model.dropout_rate=2.0'], 'model.dropout_rate: must be in [0, 1)'),
    ('unknown-dtype', [*GLUE, '--config.model.dtype=float64'], "model.dtype: 'float64' is not one of"),
    ('misspelt-key', [*GLUE, '--config.train.epochz=2'], 'epochz'),
    ('epochs-not-a-number', [*GLUE, '--config.train.epochs=two'], '--config.train.epochs=two'),
    ('missing-config-file', ['finetune', '--config', 'configs/finetune_nope.py', '--workdir', '{tmp}/run'],
     '--config: [Errno 2] No such file or directory'),
]
TOOL_ROWS = [
    ('benchmark-unknown-accelerator', [*BENCH, '--accelerator', 'tpu9'], "--accelerator: unknown accelerator 'tpu9'"),
    ('benchmark-zero-steps', [*BENCH[:3], '--steps', '0', *BENCH[5:]], '--steps: must be >= 1, got 0'),
    ('benchmark-steps-not-a-number', [*BENCH[:3], '--steps', 'many', *BENCH[5:]], '--steps'),
    ('benchmark-heads-not-dividing-hidden', [*BENCH, '--config.model.num_heads=3'], 'model.num_heads: 3 does not'),
    ('benchmark-mesh-not-device-count', [*BENCH, '--config.mesh.data=3'], 'mesh: data*fsdp*tensor = 3*1*1 = 3'),
    ('plan-zero-devices', [*PLAN[:4], '0'], '--devices: must be >= 1, got 0'),
    ('plan-usable-fraction-above-1', [*PLAN, '--usable_fraction', '1.5'], '--usable_fraction: must be in (0, 1]'),
    ('plan-batch-not-divisible-by-mesh', [*PLAN, '--config.mesh.data=8', '--config.train.batch_size=12'],
     'train.batch_size: 12 / train.microbatches 1'),
    ('plan-misspelt-key', [*PLAN, '--config.model.hiden_size=3'], '--config.model.hiden_size: no such config field'),
    ('launch-unknown-tpu-type', [*TPU[:-2], 'v9-8', '--dry-run'], '--accelerator_type: '),
    ('launch-unknown-flag', [*TPU, '--nodez', '2'], '--nodez'),
    ('launch-zero-nodes', [*SLURM[:7], '0', *SLURM[8:]], '--nodes: must be >= 1'),
    ('launch-bad-time', [*SLURM, '--time', '5h'], "--time: '5h' is not HH:MM:SS"),
    ('prepare-out-is-a-file', [*PREPARE, '--out', '{in}/file.txt'], '--out: '),
    ('prepare-glob-matches-nothing', [*PREPARE[:2], 'text:{tmp}/none/*.txt', *PREPARE[3:], '--out', '{tmp}/out'],
     '--source: no files match'),
    ('prepare-seq-len-1', [*PREPARE[:6], '1', *PREPARE[7:], '--out', '{tmp}/out'], '--seq_len: must be >= 2, got 1'),
    ('tokenizer-vocab-size-0', [*TOKENIZER[:3], '--vocab_size', '0', '--out', '{tmp}/spm.model'],
     '--vocab_size: must be positive, got 0'),
    ('tokenizer-unknown-scheme', [*TOKENIZER[:1], '--source', 'nope:x', *TOKENIZER[3:], '--out', '{tmp}/spm.model'],
     '--source: unknown source'),
    ('convert-missing-checkpoint', ['tools.convert_checkpoint', 'to-hf', '--checkpoint', '{tmp}/none', '--out',
                                    '{tmp}/hf'], '--checkpoint: '),
    ('convert-missing-hf-dir', ['tools.convert_checkpoint', 'from-hf', '--hf', '{tmp}/none', '--out', '{tmp}/ckpt'],
     '--hf: '),
    ('generate-top-p-0', ['tools.generate', '--checkpoint', '{tmp}/none', '--prompt', 'x', '--top_p', '0'],
     '--top_p: must be in (0, 1]'),
    ('generate-missing-checkpoint', ['tools.generate', '--checkpoint', '{tmp}/none', '--prompt', 'x'],
     '--checkpoint: '),
    ('fill-mask-top-k-0', ['tools.fill_mask', '--checkpoint', '{tmp}/none', '--top_k', '0', 'a [MASK]'],
     '--top_k: must be at least 1, got 0'),
    ('export-embeddings-missing-checkpoint', ['tools.export_embeddings', '--checkpoint', '{tmp}/none', '--out',
                                              '{tmp}/e.vec'], '--checkpoint: '),
    ('export-embeddings-out-is-a-dir', ['tools.export_embeddings', '--checkpoint', '{tmp}/none', '--out', '{in}'],
     '--out: '),
]
ROWS = [pytest.param(argv, field, id=f'{family}-{name}')
        for family, rows in (('pretrain', PRETRAIN_ROWS), ('finetune', FINETUNE_ROWS), ('tools', TOOL_ROWS))
        for name, argv, field in rows]


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  """What the rows point at: a corpus, its tokenizer, a GLUE dir with SST-2 and a plain file."""
  root = tmp_path_factory.mktemp('inputs')
  (root / 'corpus').mkdir()
  text = (ROOT / 'README.md').read_text()
  (root / 'corpus' / 'a.txt').write_text(text)
  train_sentencepiece([text], 400, root / 'spm.model')
  (root / 'glue' / 'SST-2').mkdir(parents=True)
  for name in ('train.tsv', 'dev.tsv', 'test.tsv'):
    (root / 'glue' / 'SST-2' / name).write_text('sentence\tlabel\na fine film\t1\n')
  (root / 'file.txt').write_text('not a directory')
  return root


def _cli(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_LOG_COMPILES='1')
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _snapshot(*roots) -> dict:
  """Every file under roots, with its size and modification time."""
  return {p: (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob('*') if p.is_file()}


@pytest.mark.parametrize('argv,field', ROWS)
def test_bad_setting_exits_2_naming_the_field_before_compiling(inputs, tmp_path, argv, field):
  argv = [a.replace('{tmp}', str(tmp_path)).replace('{in}', str(inputs)) for a in argv]
  before = _snapshot(tmp_path, inputs)
  result = _cli('-m', *argv)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert lines and lines[-1].startswith('error: ') and field in lines[-1], result.stderr[-3000:]
  assert [line for line in lines if line.startswith('error: ')] == lines[-1:], result.stderr[-3000:]
  assert not COMPILE_LOG.search(result.stderr), result.stderr[-3000:]
  assert _snapshot(tmp_path, inputs) == before  # nothing written, nothing touched
  assert not list(tmp_path.rglob('checkpoints')) and not (tmp_path / 'out').exists()


# The positive controls: under the same environment, the log set up as the CLIs set it up (absl's app for
# pretrain and finetune; tool_main's for the tools), a jit compilation is logged and COMPILE_LOG sees it.
CONTROLS = {
    'absl-app': ('from absl import app\nfrom pretrain.runtime.metrics_log import quiet_library_logs\n'
                 'def main(_):\n  quiet_library_logs()\n  import jax\n  jax.jit(lambda x: x + 1)(1)\n'
                 'app.run(main)\n'),
    'tool-main': ('import jax\nfrom pretrain.runtime.cli import tool_main\n'
                  'tool_main(lambda _: None, lambda _: jax.jit(lambda x: x + 1)(1), [])\n'),
}


@pytest.mark.parametrize('name', CONTROLS)
def test_a_compilation_is_seen_by_the_same_check(name):
  result = _cli('-c', CONTROLS[name])
  assert result.returncode == 0, result.stderr[-3000:]
  assert COMPILE_LOG.search(result.stderr), result.stderr[-3000:]
