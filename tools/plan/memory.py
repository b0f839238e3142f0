"""Per-device memory of a train step: exact for the state (from its shardings), estimated for activations.

The parameters, optimizer state and batch per device come from the shard shape of every abstract leaf
(exact). Gradients are float32 and laid out like the parameters. Activations are estimated from the
architecture: what the scanned block keeps for the backward pass under its remat policy (counted on the
compiled HLO of the block), plus the largest working set of the step (one layer's recomputed forward and
backward, the logits and their gradient, the gathered embedding table).
"""
import dataclasses
import math

import jax
import numpy as np

from pretrain.model.config import ModelConfig
from pretrain.settings import PretrainSettings

F32 = 4


def sharded_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs carrying NamedShardings."""
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
             for leaf in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """Bytes per device, by kind."""
  params: int
  optimizer: int
  gradients: int
  batch: int
  activations: int  # kept from the forward pass for the backward pass, all layers
  temporaries: int  # the largest working set on top of that

  @property
  def total(self) -> int:
    return sum(dataclasses.asdict(self).values())

  def as_dict(self) -> dict[str, int]:
    return {**dataclasses.asdict(self), 'total': self.total}


def _widths(cfg: ModelConfig, seq_len: int, tensor: int) -> tuple[int, int, int, int]:
  """Per-token widths on one device: embed d, heads d/t, mlp f/t, attention scores (n/t)*T."""
  return cfg.hidden_size, cfg.hidden_size // tensor, cfg.mlp_dim // tensor, cfg.num_heads // tensor * seq_len


def layer_intermediate_bytes(cfg: ModelConfig, seq_len: int, tensor: int) -> int:
  """Bytes per token of everything one block's forward pass produces that its backward pass reads.

  Measured on the compiled block (remat 'none'): six d-wide float32 arrays around the LayerNorms, two
  d-wide in the compute dtype, two dropout masks, q/k/v/context, the MLP's hidden layer and GELU
  intermediates (tanh GELU keeps six, erf GELU four), the attention logits (float32) and probabilities.
  """
  d, h, f, scores = _widths(cfg, seq_len, tensor)
  s = np.dtype(cfg.compute_dtype).itemsize
  gelu_arrays = 6 if cfg.mlp == 'gelu_tanh' else 4
  return d * (6 * F32 + 2 * s + 2) + 4 * h * s + gelu_arrays * f * s + scores * (F32 + s)


def saved_bytes_per_layer_token(cfg: ModelConfig, seq_len: int, tensor: int) -> int:
  """Bytes per token and layer kept for the backward pass under cfg.remat_policy."""
  d, h, f, scores = _widths(cfg, seq_len, tensor)
  s = np.dtype(cfg.compute_dtype).itemsize
  return {
      'none': layer_intermediate_bytes(cfg, seq_len, tensor),
      'full': d * s,  # the block's input
      'dots_with_no_batch_dims': (2 * d + 3 * h + f) * s,  # the projections' outputs
      'dots_saveable': (2 * d + 4 * h + f) * s + scores * F32,  # ... and q.k logits (float32), context
  }[cfg.remat_policy]


def activation_bytes(cfg: ModelConfig, seq_len: int, local_batch: int, predicted_per_sequence: int,
                     mesh_shape: dict[str, int]) -> tuple[int, int]:
  """(activations kept for the backward pass, peak working set) per device, estimated.

  local_batch: sequences per device at a time (batch_size / microbatches / (data * fsdp));
  predicted_per_sequence: tokens per sequence that reach the output layer (clm: seq_len; mlm: max_predictions).
  """
  tensor = mesh_shape['tensor']
  tokens = local_batch * seq_len
  s = np.dtype(cfg.compute_dtype).itemsize
  d, v = cfg.hidden_size, cfg.vocab_size
  activations = cfg.num_layers * tokens * saved_bytes_per_layer_token(cfg, seq_len, tensor)
  activations += local_batch * seq_len * seq_len  # the attention mask, shared by the layers
  # One layer in the backward pass: its recomputed forward (under remat) plus the gradients flowing back.
  recompute = 0 if cfg.remat_policy == 'none' else tokens * layer_intermediate_bytes(cfg, seq_len, tensor)
  layer_backward = recompute + tokens * 2 * d * F32
  # The output layer: the logits and their gradient in float32, plus the logits in a narrower compute dtype.
  logits = local_batch * predicted_per_sequence * (v // tensor) * (2 * F32 + (s if s < F32 else 0))
  # The token embedding is used whole: a sharded table is gathered, and its gradients (from the lookup and from
  # the tied output layer) are built whole before they are reduced (measured: about 3 tables; 1 unsharded).
  embedding = v * d * F32 * (3 if mesh_shape['fsdp'] * tensor > 1 else 1)
  return activations, max(layer_backward, logits) + embedding


def estimate_memory(settings: PretrainSettings, abstract_state: dict, batch_abstract: dict,
                    mesh_shape: dict[str, int]) -> MemoryEstimate:
  """Per-device bytes of the train step: state and batch exact from their shardings, activations estimated.

  With train.microbatches k > 1 the activations are those of one microbatch (batch_size / k rows), and the
  gradients are held twice (the running sum and the microbatch's).
  """
  microbatches, seq_len = settings.train.microbatches, settings.data.seq_len
  local_batch = settings.train.batch_size // microbatches // (mesh_shape['data'] * mesh_shape['fsdp'])
  params = sharded_bytes(abstract_state['params'])
  predicted = settings.build_objective().predicted_per_sequence(seq_len)
  activations, temporaries = activation_bytes(settings.model, seq_len, local_batch, predicted, mesh_shape)
  return MemoryEstimate(
      params=params,
      optimizer=sharded_bytes({k: v for k, v in abstract_state.items() if k != 'params'}),
      gradients=params * (2 if microbatches > 1 else 1),
      batch=sharded_bytes(batch_abstract),
      activations=activations,
      temporaries=temporaries)
