"""Fine-tuning a modernbert checkpoint: the classifier's pooled transform starts as the pretrained MLM head's
transform (as ModernBertForSequenceClassification.from_pretrained loads `head` from a ModernBertForMaskedLM), and
from scratch it does not."""
import numpy as np

from configs import finetune_glue
from finetune import train
from pretrain.model.load import flatten, load_checkpoint
from tests.glue_fixtures import write_glue_dir


def test_the_pooled_transform_starts_from_the_mlm_heads(checkpoints, tmp_path):
  pretrained = checkpoints.trained('modernbert')
  mlm = flatten(load_checkpoint(str(pretrained)).params)
  glue = write_glue_dir(tmp_path / 'glue')
  for from_scratch in (False, True):
    config = finetune_glue.get_config('task=sst2')
    config.init_checkpoint, config.from_scratch, config.data.source = str(pretrained), from_scratch, f'glue_dir:{glue}'
    config.train.batch_size, config.train.epochs, config.data.max_length = 8, 1, 32
    config.train.learning_rate = 1e-9  # the saved parameters are the restored ones, to float32 precision
    workdir = tmp_path / f'run-{from_scratch}'
    train.run(config, str(workdir))
    tuned = flatten(load_checkpoint(str(workdir)).params)
    for name in ('transform/kernel', 'norm/scale'):
      same = np.allclose(tuned[f'pooled_transform/{name}'], mlm[f'mlm_head/{name}'], atol=1e-6)
      assert same != from_scratch, (name, from_scratch)
    assert np.allclose(tuned['encoder/token_embed'], mlm['encoder/token_embed'], atol=1e-6) != from_scratch
