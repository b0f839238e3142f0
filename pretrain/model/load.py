"""Any checkpoint of this project -> its model, tokenizer and parameters on one device (for the tools).

Pretraining checkpoints and imported ones hold a LanguageModel ({'encoder', 'mlm_head', ...}, and
'sentence_head' with mlm.sentence_task nsp or sop); fine-tuned ones a Classifier ({'encoder', 'head'}),
described by the meta item's 'classifier' entry (its 'outputs', heads.OUTPUTS, is 'sequence' where absent: checkpoints
written before per-token heads). The architecture comes from the meta alone
(config.from_checkpoint_meta), so checkpoints written before the architecture fields load too.
"""
import dataclasses
from typing import Any

import jax
from flax import nnx

from pretrain.data.tokenizers import tokenizer_from_meta
from pretrain.model.config import ModelConfig, from_checkpoint_meta
from pretrain.model.heads import Classifier, LanguageModel
from pretrain.runtime import checkpoint as checkpoint_lib


@dataclasses.dataclass
class LoadedCheckpoint:
  model_cfg: ModelConfig
  tokenizer: Any
  params: dict  # the pure-dict param tree, on one device
  meta: dict
  step_dir: str
  classifier: dict | None  # {'task', 'num_labels', 'labels', 'pooling', 'is_regression', 'outputs'}; None for LMs

  def build(self, params: dict | None = None) -> nnx.Module:
    """The model with `params` (default: the checkpoint's), ready to call (no dropout key: deterministic)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: model_builder(self.model_cfg, self.classifier)(0)))
    return nnx.merge(graphdef, self.params if params is None else params)


def model_builder(model_cfg: ModelConfig, classifier: dict | None):
  """seed -> a fresh model of the checkpoint's kind."""
  if classifier is None:
    return lambda seed: LanguageModel(model_cfg, nnx.Rngs(seed))
  return lambda seed: Classifier(model_cfg, classifier['num_labels'], nnx.Rngs(seed), classifier['pooling'],
                                 outputs=classifier_outputs(classifier))


def classifier_outputs(classifier: dict | None) -> str | None:
  """What a fine-tuned head predicts (heads.OUTPUTS): 'sequence' for a meta written before 'outputs'; None for
  language models."""
  return None if classifier is None else classifier.get('outputs', 'sequence')


def load_checkpoint(checkpoint: str, field: str = '--checkpoint') -> LoadedCheckpoint:
  """Reads a workdir, its checkpoints/ dir or a step dir; errors name `field`."""
  step_dir, meta = checkpoint_lib.read_checked_meta(checkpoint, field)
  model_cfg = from_checkpoint_meta(meta)
  classifier = meta.get('classifier')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: model_builder(model_cfg, classifier)(0)), nnx.Param))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
  params = checkpoint_lib.restore_params(step_dir, abstract)
  return LoadedCheckpoint(model_cfg, tokenizer_from_meta(meta), params, meta, str(step_dir), classifier)


def flatten(params: dict) -> dict[str, Any]:
  """{'encoder': {'token_embed': x}} -> {'encoder/token_embed': x}."""
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def unflatten(flat: dict[str, Any]) -> dict:
  tree: dict = {}
  for path, leaf in flat.items():
    node = tree
    *parents, last = path.split('/')
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = leaf
  return tree
