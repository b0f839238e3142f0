"""python -m finetune --config configs/finetune_glue.py:task=sst2 --workdir DIR \
     --config.init_checkpoint=CKPT --config.data.source=glue_dir:PATH [--config.seed=S ...]
(or --config configs/finetune_ner.py with conll:DIR, configs/finetune_squad.py with squad:DIR)"""
from pretrain.runtime.cli import run_config_cli

if __name__ == '__main__':
  run_config_cli('configs/finetune_glue.py:task=sst2',
                 'Directory for results.json, predictions/ and metrics.jsonl.', 'finetune.train:run')
