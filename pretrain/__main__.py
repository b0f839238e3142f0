"""python -m pretrain --config configs/pretrain_mlm.py:size=tiny --workdir DIR [--config.train.steps=N ...]"""
from pretrain.runtime.cli import run_config_cli

if __name__ == '__main__':
  run_config_cli('configs/pretrain_mlm.py:size=tiny',
                 'Directory for checkpoints, metrics.jsonl and TensorBoard logs.', 'pretrain.train:run')
