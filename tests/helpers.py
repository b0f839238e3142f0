"""Small configs and checks shared by the tests."""
import pathlib

import pytest

from configs import pretrain_clm, pretrain_llama, pretrain_mlm, pretrain_modernbert
from pretrain.runtime.errors import ConfigError
from pretrain.model.config import ModelConfig


# tiny_config's kinds: the config file each one shrinks (mlm: bert, clm: gpt2, llama: llama, objective clm;
# modernbert: modernbert, objective mlm).
CONFIG_FILES = {'mlm': pretrain_mlm, 'clm': pretrain_clm, 'llama': pretrain_llama, 'modernbert': pretrain_modernbert}
# modernbert's local window in tiny_config: 8 tokens either side, so that at seq 32 its local layer (layer 1; layer 0
# is global) sees less than the global one.
TINY_LOCAL_WINDOW = 16


def tiny_config(kind: str = 'mlm', **model_overrides):
  """The real tiny config of `kind` (CONFIG_FILES), shrunk further so a test step compiles and runs in well under a
  second. llama keeps its 2 kv heads for the 4 query heads (grouped-query attention); modernbert a local window of
  TINY_LOCAL_WINDOW tokens."""
  config = CONFIG_FILES[kind].get_config('tiny')
  config.model.num_layers = 2
  config.model.hidden_size = 64
  config.model.num_heads = 4
  config.model.mlp_dim = 128
  config.model.vocab_size = 512
  config.model.max_position_embeddings = 64
  config.data.seq_len = 32
  config.train.batch_size = 8
  config.train.warmup_steps = 2
  if kind == 'modernbert':
    config.model.local_window = TINY_LOCAL_WINDOW
  for key, value in model_overrides.items():
    config.model[key] = value
  return config


ROOT = pathlib.Path(__file__).resolve().parents[1]
MLM_CONFIG = str(ROOT / 'configs' / 'pretrain_mlm.py') + ':size=tiny'
CLM_CONFIG = str(ROOT / 'configs' / 'pretrain_clm.py') + ':size=tiny'
LLAMA_CONFIG = str(ROOT / 'configs' / 'pretrain_llama.py') + ':size=tiny'
MODERNBERT_CONFIG = str(ROOT / 'configs' / 'pretrain_modernbert.py') + ':size=tiny'
# The command-line form of tiny_config's shrinking, for the tools that take --config FILE --config.x=y.
TINY_OVERRIDES = ['--config.model.num_layers=2', '--config.model.hidden_size=64', '--config.model.mlp_dim=128',
                  '--config.model.vocab_size=512', '--config.model.max_position_embeddings=64',
                  '--config.data.seq_len=32', '--config.train.batch_size=8']


def tiny_model_config(kind: str = 'mlm', **overrides) -> ModelConfig:
  return ModelConfig.from_config(tiny_config(kind, **overrides).model)


def data_pipeline(config, **kwargs):
  """pretrain.data.pipeline.build_data for a config, also a data-only one (sections data, model.vocab_size,
  train.batch_size, seed, and mlm when it has one). kwargs: process_index, process_count, tokenizer."""
  from pretrain.data.pipeline import build_data  # pylint: disable=import-outside-toplevel
  from pretrain.data.settings import DataSettings  # pylint: disable=import-outside-toplevel
  sentence_task = config.mlm.sentence_task if 'mlm' in config else 'none'
  return build_data(DataSettings.from_config(config.data), batch_size=config.train.batch_size,
                    vocab_size=config.model.vocab_size, seed=config.seed, sentence_task=sentence_task, **kwargs)


def build_data_error(config, **kwargs) -> str:
  """The one-line ConfigError that data_pipeline(config, **kwargs) raises."""
  with pytest.raises(ConfigError) as e:
    data_pipeline(config, **kwargs)
  assert '\n' not in str(e.value)
  return str(e.value)


def rejected_before_compiling(monkeypatch, config, workdir: pathlib.Path, match: str) -> None:
  """pretrain.train.run(config, workdir) raises a ConfigError matching `match` before it builds a train step."""
  from pretrain import train  # pylint: disable=import-outside-toplevel

  def no_trainer(*args, **kwargs):
    raise AssertionError('built and compiled the train step before rejecting the config')
  monkeypatch.setattr(train, 'make_trainer', no_trainer)
  with pytest.raises(ConfigError, match=match):
    train.run(config, str(workdir))
