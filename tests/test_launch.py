"""tools.launch: the gcloud commands (TPU) and the batch script (SLURM) it prints or runs, its refusals, and the
job configs (configs/*_wiki.py) with the launch commands in their docstrings."""
import importlib
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from configs import jobs
from pretrain.runtime import sharding
from pretrain.settings import PretrainSettings
from tools.launch import cli as launch

ROOT = pathlib.Path(__file__).resolve().parents[1]
JOB_CONFIGS = ('bert_base_wiki', 'bert_large_wiki', 'gpt2_small_wiki', 'gpt2_medium_wiki', 'gpt2_large_wiki',
               'decoder_1b_wiki', 'llama_1b_wiki', 'modernbert_base_wiki')
CONFIGS = ROOT / 'configs'
TPU = ['tpu', '--config', f'{CONFIGS}/bert_large_wiki.py:data=/shared/wiki-128', '--workdir', '/shared/runs/x',
       '--tpu', 'my-tpu', '--zone', 'us-central2-b', '--accelerator_type', 'v4-32']
SLURM = ['slurm', '--config', f'{CONFIGS}/gpt2_large_wiki.py:data=/shared/wiki 1024', '--workdir', '/shared/runs/x',
         '--nodes', '2', '--gpus_per_node', '8']
# An override whose value needs quoting on every shell it passes through.
OVERRIDES = ['--config.train.steps=1000', "--config.data.tokenizer=/data/it's here/wiki.model"]


def launch_out(capsys, argv):
  """Runs main(argv); returns (exit status, stdout, stderr)."""
  status = launch.main(argv)
  out, err = capsys.readouterr()
  return status, out, err


def run_cli(argv, path_dirs, tmp_path):
  """`python -m tools.launch ARGV` with PATH = path_dirs (fake gcloud/sbatch), in tmp_path."""
  env = {**os.environ, 'PATH': os.pathsep.join(map(str, path_dirs)), 'PYTHONPATH': str(ROOT)}
  return subprocess.run([sys.executable, '-m', 'tools.launch', *argv], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=120, check=False)


def fake_program(bin_dir: pathlib.Path, name: str, fail_if: str = '') -> pathlib.Path:
  """An executable `name` that appends its argv (and $A) as a JSON line to bin_dir/calls.jsonl, and exits 1
  when fail_if occurs in its arguments."""
  bin_dir.mkdir(exist_ok=True)
  path = bin_dir / name
  path.write_text(f'#!{sys.executable}\nimport json, os, sys\n'
                  f'open({str(bin_dir / "calls.jsonl")!r}, "a").write(json.dumps(sys.argv[1:] + '
                  f'[os.environ.get("A")]) + "\\n")\n'
                  f'sys.exit(1 if {fail_if!r} and {fail_if!r} in " ".join(sys.argv[1:]) else 0)\n')
  path.chmod(0o755)
  return bin_dir / 'calls.jsonl'


def dry_run_commands(out: str) -> list[list[str]]:
  return [shlex.split(line) for line in out.splitlines() if line and not line.startswith('#')]


def remote_words(command: list[str]) -> list[str]:
  """The words of the shell line that gcloud ssh runs on the workers."""
  return shlex.split(command[command.index('--command') + 1])


def test_tpu_dry_run_ships_the_config_and_starts_pretrain_on_every_worker(capsys):
  argv = [*TPU, '--env', 'A=x y', '--env', 'B=1', '--copy_repo', '--setup', '--dry-run', '--', *OVERRIDES]
  status, out, _ = launch_out(capsys, argv)
  assert status == 0
  commands = dry_run_commands(out)
  assert [c[:5] for c in commands] == [['gcloud', 'compute', 'tpus', 'tpu-vm', verb]
                                       for verb in ('ssh', 'scp', 'scp', 'ssh', 'ssh')]
  for command in commands:
    assert '--worker=all' in command and '--zone=us-central2-b' in command and 'my-tpu' in ' '.join(command)
  assert f'{ROOT}/pretrain' in commands[1] and 'my-tpu:flax-pretrain' in commands[1]  # --copy_repo
  assert commands[2][6:8] == [f'{ROOT}/configs/bert_large_wiki.py', 'my-tpu:flax-pretrain/configs/bert_large_wiki.py']
  setup = remote_words(commands[3])
  assert 'scripts/setup_env.sh' in setup and 'jax[tpu]' in setup
  words = remote_words(commands[4])
  assert words[:2] == ['cd', 'flax-pretrain'] and ['export', 'A=x y', 'B=1'] == words[3:6]
  python = words[words.index('exec') + 1:]
  assert python == ['.venv/bin/python', '-m', 'pretrain', '--config',
                    'configs/bert_large_wiki.py:data=/shared/wiki-128', '--workdir', '/shared/runs/x', *OVERRIDES]
  # The summary: v4-32 is 16 chips on 4 hosts, data-parallel.
  assert 'mesh data=16 fsdp=1 tensor=1 on 16 devices, 4 processes' in out


def test_tpu_without_copy_or_setup_ships_only_the_config_even_from_outside_the_repo(capsys, tmp_path):
  own = tmp_path / 'my_job.py'
  own.write_text('from configs import pretrain_clm\n\ndef get_config(arg=None):\n'
                 '  return pretrain_clm.get_config(arg)\n')
  argv = ['tpu', '--config', f'{own}:gpt2-small', '--workdir', '/shared/run', '--tpu', 't', '--zone', 'z',
          '--devices', '8', '--repo_dir', '/opt/fp', '--dry-run']
  status, out, _ = launch_out(capsys, argv)
  assert status == 0
  commands = dry_run_commands(out)
  assert [c[4] for c in commands] == ['ssh', 'scp', 'ssh']
  assert remote_words(commands[0]) == ['mkdir', '-p', '/opt/fp', '/opt/fp/launch_configs']
  assert [str(own), 't:/opt/fp/launch_configs/my_job.py'] == commands[1][6:8]
  words = remote_words(commands[2])
  assert words[words.index('--config') + 1] == 'launch_configs/my_job.py:gpt2-small'


@pytest.mark.parametrize('accelerator, devices, hosts', [
    ('v4-8', 4, 1), ('v4-32', 16, 4), ('v5p-128', 64, 16), ('v5litepod-256', 256, 64), ('v5e-256', 256, 64),
    ('v6e-8', 8, 1), ('v3-8', 8, 1), ('v3-32', 32, 4)])
def test_tpu_accelerator_type_sets_the_device_and_host_count(capsys, accelerator, devices, hosts):
  argv = ['tpu', '--config', f'{CONFIGS}/pretrain_mlm.py:size=tiny', '--workdir', '/mnt/shared/run', '--tpu', 't',
          '--zone', 'z', '--accelerator_type', accelerator, '--dry-run', '--', '--config.train.batch_size=1024']
  status, out, err = launch_out(capsys, argv)
  assert status == 0
  assert f'mesh data={devices} fsdp=1 tensor=1 on {devices} devices, {hosts} processes' in out
  # A local path on a slice of several hosts is only right on shared storage: said, not refused.
  assert ('warning: --workdir /mnt/shared/run is a local path on each worker' in err) == (hosts > 1)


def test_tpu_runs_the_steps_in_order_and_stops_at_the_first_failure(tmp_path):
  calls = fake_program(tmp_path / 'bin', 'gcloud', fail_if='scp')
  result = run_cli([*TPU, '--', '--config.train.steps=10'], [tmp_path / 'bin'], tmp_path)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == ('error: step 2/3 (ship the config file) failed with exit status '
                                                    '1; the later steps were not run')
  ran = [json.loads(line) for line in calls.read_text().splitlines()]
  assert [c[3] for c in ran] == ['ssh', 'scp']  # the training step never ran

  calls.unlink()
  fake_program(tmp_path / 'bin', 'gcloud')
  result = run_cli([*TPU, '--', '--config.train.steps=10'], [tmp_path / 'bin'], tmp_path)
  assert result.returncode == 0, result.stderr
  ran = [json.loads(line) for line in calls.read_text().splitlines()]
  assert [c[3] for c in ran] == ['ssh', 'scp', 'ssh']
  assert remote_words(ran[2])[-1] == '--config.train.steps=10'


def test_slurm_script_starts_one_process_per_gpu_with_the_exact_arguments(capsys, tmp_path):
  status, out, _ = launch_out(capsys, [*SLURM, '--env', 'A=x y', '--time', '2-00:00:00', '--partition', 'gpu',
                                       '--sbatch=--exclusive', '--dry-run', '--', *OVERRIDES])
  assert status == 0
  options = re.findall(r'^#SBATCH (\S+)$', out, re.M)
  assert options == ['--job-name=gpt2_large_wiki', '--nodes=2', '--ntasks-per-node=8', '--gpus-per-node=8',
                     '--output=%x-%j.out', '--partition=gpu', '--time=2-00:00:00', '--exclusive']
  assert 'local_device_ids=[SLURM_LOCALID]' in out  # the documented choice
  script = tmp_path / 'job.sbatch'
  script.write_text(out)
  assert subprocess.run(['bash', '-n', str(script)], check=False).returncode == 0
  # Run the script with a fake srun: it must get the whole command, every word intact, and the environment.
  calls = fake_program(tmp_path / 'bin', 'srun')
  result = subprocess.run(['bash', str(script)], env={'PATH': f'{tmp_path / "bin"}:/usr/bin:/bin'},
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  (srun_argv,) = [json.loads(line) for line in calls.read_text().splitlines()]
  assert srun_argv == ['--gpu-bind=none', '--kill-on-bad-exit=1', 'python', '-m', 'pretrain', '--config',
                       f'{ROOT}/configs/gpt2_large_wiki.py:data=/shared/wiki 1024', '--workdir', '/shared/runs/x',
                       *OVERRIDES, 'x y']


def test_slurm_writes_the_script_and_submits_it(tmp_path):
  calls = fake_program(tmp_path / 'bin', 'sbatch')
  result = run_cli([*SLURM, '--out', 'jobs/large.sbatch'], [tmp_path / 'bin'], tmp_path)
  assert result.returncode == 0, result.stderr
  written = tmp_path / 'jobs' / 'large.sbatch'
  assert json.loads(calls.read_text()) == ['jobs/large.sbatch', None]
  assert '#SBATCH --nodes=2' in written.read_text()
  assert [p.name for p in written.parent.iterdir()] == ['large.sbatch']  # no temporary file left

  result = run_cli(SLURM, [tmp_path / 'empty'], tmp_path)  # no sbatch on PATH
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith('error: sbatch: not found on PATH; gpt2_large_wiki.sbatch')
  assert (tmp_path / 'gpt2_large_wiki.sbatch').is_file()


@pytest.mark.parametrize('argv, line', [
    ([*TPU[:-1], 'v9-8'], '--accelerator_type: '),
    ([*TPU[:-1], 'v4-6'], '--accelerator_type: v4-6: the size must be a multiple'),
    ([*TPU, '--', '--config.train.stepz=5'], '--config.train.stepz: no such config field (did you mean '
                                             '--config.train.steps?)'),
    ([*TPU, '--', '--config.train.steps=many'], '--config.train.steps=many: '),
    ([*TPU, '--', 'train.steps=5'], "overrides: 'train.steps=5' is not --config.FIELD=VALUE"),
    ([*TPU[:2], f'{CONFIGS}/bert_large_wiki.py:dta=x', *TPU[3:]], f'--config={CONFIGS}/bert_large_wiki.py:dta=x: '
                                                                   "config arg: 'dta=x' is not data=DIR"),
    ([*TPU[:2], 'configs/nope.py', *TPU[3:]], '--config: configs/nope.py: no such file'),
    ([*TPU, '--', '--config.train.batch_size=200'], 'train.batch_size: 200 / train.microbatches 1 = 200 rows'),
    ([*TPU, '--', '--config.mesh.data=3'], 'mesh: data*fsdp*tensor = 3*1*1 = 3 does not match the 16 available'),
    ([*TPU, '--', '--config.mesh.data=-1', '--config.mesh.tensor=4'], 'model.vocab_size: 30522 is not divisible'),
    ([*TPU, '--', '--config.model.num_heads=5'], 'model.num_heads: 5 does not divide'),
    ([*TPU[:4], 'runs/x', *TPU[5:]], "--workdir: 'runs/x' is a relative path, but the job runs on 4 hosts"),
    ([*TPU, '--env', 'NO_VALUE'], "--env: 'NO_VALUE' is not KEY=VALUE"),
    ([*TPU, '--tpu', 'a b'], "--tpu: 'a b' is not a name"),
    ([*SLURM, '--time', '5h'], "--time: '5h' is not HH:MM:SS"),
    ([*SLURM, '--partition', 'a b'], "--partition: 'a b' must be one word"),
    ([*SLURM[:6], '0', *SLURM[7:]], '--nodes: must be >= 1'),
    ([*SLURM[:4], 'runs/x', *SLURM[5:]], "--workdir: 'runs/x' is a relative path, but the job runs on 2 hosts"),
    ([*SLURM[:8], '3'], 'model.hidden_size: 1280 is not divisible by the mesh axes fsdp (6 devices)'),
    ([*SLURM, '--', '--config.mesh.tensor=4', '--config.train.batch_size=72'],
     'train.batch_size: 72 is not divisible by the process count 16'),
])
def test_bad_input_is_one_line_naming_the_flag_and_exit_2(capsys, argv, line):
  split = argv.index('--') if '--' in argv else len(argv)
  status, out, err = launch_out(capsys, [*argv[:split], '--dry-run', *argv[split:]])
  assert status == 2 and out == ''
  assert len(err.strip().splitlines()) == 1 and err.startswith(f'error: {line}'), err


@pytest.mark.parametrize('tensor, replicated', [(4, False), (8, True)])
def test_kv_heads_the_mesh_does_not_divide_are_replicated_and_the_summary_says_so(capsys, tensor, replicated):
  # llama-1b: 32 heads, MLP 5632 and 4 kv heads; tensor 8 splits the heads and the MLP but not the kv heads.
  argv = ['slurm', '--config', f'{CONFIGS}/llama_1b_wiki.py:data=/shared/wiki', '--workdir', '/shared/runs/x',
          '--nodes', '2', '--gpus_per_node', '8', '--dry-run', '--', '--config.mesh.fsdp=-1',
          f'--config.mesh.tensor={tensor}']
  status, out, err = launch_out(capsys, argv)
  assert status == 0, err
  assert f'mesh data=1 fsdp={16 // tensor} tensor={tensor} on 16 devices' in out
  assert ('the 4 kv heads are replicated (the mesh does not divide them)' in out) == replicated


def test_missing_flag_and_missing_gcloud_exit_2_naming_them(capsys, monkeypatch, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    launch.main([arg for arg in TPU if arg not in ('--zone', 'us-central2-b')])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].endswith('the following arguments are required: --zone')
  monkeypatch.setenv('PATH', str(tmp_path))
  status, out, err = launch_out(capsys, TPU)
  assert (status, out) == (2, '') and err.strip().splitlines()[-1].startswith('error: gcloud: not found on PATH')


def docstring_launch_argv(module) -> list[str]:
  """The `python -m tools.launch ...` command of a config's docstring, as argv for launch.main."""
  text = module.__doc__.replace('\\\n', ' ')
  (line,) = [line for line in text.splitlines() if line.strip().startswith('python -m tools.launch')]
  return shlex.split(line)[3:]


@pytest.mark.parametrize('name', JOB_CONFIGS)
def test_job_config_validates_and_its_documented_launch_command_is_accepted(capsys, monkeypatch, name):
  module = importlib.import_module(f'configs.{name}')
  config = module.get_config()
  PretrainSettings.from_config(config)
  assert config.data.source.startswith('prepared:/YOUR_SHARED_DIR/')  # a placeholder that says what is missing
  assert module.get_config('data=/d/wiki').data.source == 'prepared:/d/wiki'
  assert config.model.dtype == 'bfloat16' and config.model.remat_policy != 'none'

  monkeypatch.chdir(ROOT)  # the documented commands run from the repository
  argv = docstring_launch_argv(module)
  assert argv[2] == f'configs/{name}.py:' + argv[2].split(':', 1)[1]
  status, out, err = launch_out(capsys, [*argv, '--dry-run'])
  assert status == 0, err
  # The documented shape is the one the config was set up for: the mesh resolves on it and each device runs at
  # most jobs.MAX_TOKENS_PER_DEVICE tokens at once, with no more microbatches than that needs.
  devices = int(re.search(r' on (\d+) devices', out).group(1))
  assert sharding.resolve_mesh_shape(config.mesh, devices)
  assert int(re.search(r'(\d+) tokens per device at once', out).group(1)) <= jobs.MAX_TOKENS_PER_DEVICE
  assert config.train.microbatches == jobs.microbatches_for(config.train.batch_size, config.data.seq_len, devices)


def test_every_job_config_is_tested():
  documented = sorted(p.stem for p in (ROOT / 'configs').glob('*.py') if 'python -m tools.launch' in p.read_text())
  assert documented == sorted(JOB_CONFIGS)
