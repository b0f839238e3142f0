"""Per-device memory of a train step: exact for the state (from its shardings), estimated for activations.

The parameters, optimizer state and batch per device come from the shard shape of every abstract leaf
(exact). Gradients are float32 and laid out like the parameters. Activations are estimated from the
architecture (its norms, MLP kind, query and key/value head widths, rotary positions, local windows): what the
scanned block keeps for the backward pass under its remat policy (counted on the compiled HLO of the block), plus
the largest working set of the step (one layer's recomputed forward and backward, the logits and their gradient, the
gathered embedding table). With train.loss_chunk_tokens the logits exist for one chunk of tokens at a time.
"""
import dataclasses
import math

import jax
import numpy as np

from pretrain.model.config import GATED_MLPS, ModelConfig
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


def _kv_heads_axes_size(mesh_shape: dict[str, int], rules) -> int:
  """Devices the sharding rules split 'kv_heads' over on this mesh."""
  entry = dict(rules).get('kv_heads')
  axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
  return math.prod(mesh_shape[axis] for axis in axes)


def kv_heads_replicated(cfg: ModelConfig, mesh_shape: dict[str, int], rules) -> bool:
  """The mesh does not divide model.num_kv_heads: every device holds all key/value heads (their projections and
  activations), pretrain.runtime.sharding.REPLICATED_WHEN_INDIVISIBLE."""
  return cfg.num_kv_heads % _kv_heads_axes_size(mesh_shape, rules) != 0


def kv_heads_split(cfg: ModelConfig, mesh_shape: dict[str, int], rules) -> int:
  """Devices the key/value heads split over (1 where replicated)."""
  return 1 if kv_heads_replicated(cfg, mesh_shape, rules) else _kv_heads_axes_size(mesh_shape, rules)


@dataclasses.dataclass(frozen=True)
class _Widths:
  """Per-token widths of one layer's arrays on one device (heads and the MLP split over tensor)."""
  d: int  # embed
  q: int  # queries and the attention output: num_heads * head_dim / tensor
  kv: int  # keys, values: num_kv_heads * head_dim / their split (whole where replicated)
  f: int  # each MLP hidden layer: mlp_dim / tensor
  scores: int  # attention logits: num_heads / tensor * seq_len
  rotary: int  # the rotation angles' cos and sin (rotary positions only)


def _widths(cfg: ModelConfig, seq_len: int, tensor: int, kv_split: int) -> _Widths:
  return _Widths(d=cfg.hidden_size, q=cfg.num_heads * cfg.head_dim // tensor,
                 kv=cfg.num_kv_heads * cfg.head_dim // kv_split, f=cfg.mlp_dim // tensor,
                 scores=cfg.num_heads // tensor * seq_len, rotary=2 * cfg.head_dim if cfg.positions == 'rotary' else 0)


# MLP hidden-layer arrays (f wide) the backward pass reads, by model.mlp: erf GELU four (its input and erf
# intermediates), tanh GELU six, SwiGLU six (gate, up, three of SiLU's intermediates, their product), GeGLU six
# (the gate, which is erf GELU's input, three erf intermediates, up, their product; measured like SwiGLU).
_MLP_ARRAYS = {'gelu': 4, 'gelu_tanh': 6, 'swiglu': 6, 'geglu': 6}


def layer_intermediate_bytes(cfg: ModelConfig, seq_len: int, tensor: int, kv_split: int) -> int:
  """Bytes per token of everything one block's forward pass produces that its backward pass reads.

  Measured on the compiled block (remat 'none'): six d-wide float32 arrays around the norms (three each, LayerNorm
  or RMSNorm), two d-wide in the compute dtype, two dropout masks, q/k/v/context, the rotary cos and sin (float32),
  the MLP's hidden arrays (_MLP_ARRAYS), the attention logits (float32) and probabilities. Compiled over the
  layers this is 0.93x of the XLA CPU figure for gpt2 and for llama (with and without grouped-query attention).
  With local layers (model.local_window; the scanned block is the same for every layer) each layer also keeps its
  window's masks: measured (6 + heads / 2) bytes per key and token (modernbert, 4 and 8 heads at seq 128).
  """
  w = _widths(cfg, seq_len, tensor, kv_split)
  s = np.dtype(cfg.compute_dtype).itemsize
  window_masks = 6 * seq_len + w.scores // 2 if cfg.has_local_layers else 0
  return (w.d * (6 * F32 + 2 * s + 2) + 2 * (w.q + w.kv) * s + w.rotary * F32 + _MLP_ARRAYS[cfg.mlp] * w.f * s
          + w.scores * (F32 + s) + window_masks)


def saved_bytes_per_layer_token(cfg: ModelConfig, seq_len: int, tensor: int, kv_split: int) -> int:
  """Bytes per token and layer kept for the backward pass under cfg.remat_policy."""
  w = _widths(cfg, seq_len, tensor, kv_split)
  s = np.dtype(cfg.compute_dtype).itemsize
  # The projections' outputs: q, k, v, out, the MLP's input layers (two when gated) and its output layer.
  projections = (2 * w.d + w.q + 2 * w.kv + (2 if cfg.mlp in GATED_MLPS else 1) * w.f) * s
  return {
      'none': layer_intermediate_bytes(cfg, seq_len, tensor, kv_split),
      'full': w.d * s,  # the block's input
      'dots_with_no_batch_dims': projections,
      'dots_saveable': projections + w.q * s + w.scores * F32,  # ... and the q.k logits (float32), context
  }[cfg.remat_policy]


def activation_bytes(cfg: ModelConfig, seq_len: int, local_batch: int, predicted_per_sequence: int,
                     mesh_shape: dict[str, int], kv_split: int, loss_chunk_tokens: int = 0) -> tuple[int, int]:
  """(activations kept for the backward pass, peak working set) per device, estimated.

  local_batch: sequences per device at a time (batch_size / microbatches / (data * fsdp));
  predicted_per_sequence: tokens per sequence that reach the output layer (clm: seq_len; mlm: max_predictions);
  kv_split: devices the key/value heads split over (kv_heads_split);
  loss_chunk_tokens: tokens per device whose logits exist at a time (objectives.chunked_cross_entropy; 0: all).
  """
  tensor = mesh_shape['tensor']
  tokens = local_batch * seq_len
  s = np.dtype(cfg.compute_dtype).itemsize
  d, v = cfg.hidden_size, cfg.vocab_size
  activations = cfg.num_layers * tokens * saved_bytes_per_layer_token(cfg, seq_len, tensor, kv_split)
  activations += local_batch * seq_len * seq_len  # the attention mask, shared by the layers
  # One layer in the backward pass: its recomputed forward (under remat) plus the gradients flowing back, and
  # those of the attention probabilities and logits (as large as the forward's: most of it at long sequences).
  w = _widths(cfg, seq_len, tensor, kv_split)
  recompute = 0 if cfg.remat_policy == 'none' else layer_intermediate_bytes(cfg, seq_len, tensor, kv_split)
  layer_backward = tokens * (recompute + 2 * d * F32 + w.scores * (F32 + s))
  # The output layer: the logits and their gradient in float32, plus the logits in a narrower compute dtype; of
  # one chunk of tokens when chunked (the backward pass recomputes a chunk's logits: measured the same two copies).
  predicted = local_batch * predicted_per_sequence
  predicted = min(predicted, loss_chunk_tokens) if loss_chunk_tokens else predicted
  logits = predicted * (v // tensor) * (2 * F32 + (s if s < F32 else 0))
  # The token embedding is used whole: a sharded table is gathered, and its gradients (from the lookup and from
  # a tied output layer) are built whole before they are reduced (measured: about 3 tables; 1 unsharded). An
  # untied output layer (llama) measures the same: its gathered weight and gradient take the tied one's place.
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
  activations, temporaries = activation_bytes(settings.model, seq_len, local_batch, predicted, mesh_shape,
                                              kv_heads_split(settings.model, mesh_shape, settings.sharding_rules),
                                              settings.train.loss_chunk_tokens)
  return MemoryEstimate(
      params=params,
      optimizer=sharded_bytes({k: v for k, v in abstract_state.items() if k != 'params'}),
      gradients=params * (2 if microbatches > 1 else 1),
      batch=sharded_bytes(batch_abstract),
      activations=activations,
      temporaries=temporaries)
