"""Our parameter tree <-> Hugging Face tensor names: one declarative table per architecture (BERT, GPT-2, Llama,
ModernBERT).

A Rule ties one HF tensor to one or more of our parameters through a Transform; '{i}' in an HF name marks a
scanned layer, whose parameters we store stacked on axis 0. Our paths are '/'-joined keys of the pure-dict
param tree (`encoder/blocks/attention/query/kernel`). Transforms:

  Same          the same array
  Linear(n)     torch nn.Linear weight [out, in] <-> our kernel [in..., out...] with n input axes
  Reshape(n)    the same values, flattened to [in, out] (GPT-2 Conv1D weights, n input axes) or, with n=0,
                to a vector (biases)
  Fused(n)      one HF tensor that concatenates several of ours on its last axis (GPT-2's c_attn = q|k|v)
  FusedLinear(n)  one torch nn.Linear weight whose output rows concatenate several of ours (ModernBERT's
                Wqkv = q|k|v, and Wi = gate|up: the first half is activated)

A rule with from_layer > 0 covers only the layers from there on (ModernBERT's layer 0 has no attention norm: HF
holds an Identity there); the layers before it import as ones, the parameter's unused value, and export nothing.
"""
import dataclasses
import math
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Transform(Protocol):
  def to_hf(self, ours: Sequence[np.ndarray]) -> np.ndarray: ...
  def to_ours(self, hf: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]: ...


def _matrix(x, in_dims: int):
  """[in..., out...] -> [prod(in), prod(out)], or a vector when in_dims is 0."""
  return x.reshape(-1) if in_dims == 0 else x.reshape(math.prod(x.shape[:in_dims]), -1)


class Same:
  def to_hf(self, ours):
    return ours[0]

  def to_ours(self, hf, shapes):
    return [hf]


@dataclasses.dataclass(frozen=True)
class Linear:
  in_dims: int = 1

  def to_hf(self, ours):
    return _matrix(ours[0], self.in_dims).T

  def to_ours(self, hf, shapes):
    return [hf.T.reshape(shapes[0])]


@dataclasses.dataclass(frozen=True)
class Reshape:
  in_dims: int = 0

  def to_hf(self, ours):
    return _matrix(ours[0], self.in_dims)

  def to_ours(self, hf, shapes):
    return [hf.reshape(shapes[0])]


@dataclasses.dataclass(frozen=True)
class Fused:
  in_dims: int = 1

  def to_hf(self, ours):
    return jnp.concatenate([_matrix(x, self.in_dims) for x in ours], axis=-1)

  def to_ours(self, hf, shapes):
    return [part.reshape(shape) for part, shape in zip(np.split(hf, len(shapes), axis=-1), shapes)]


@dataclasses.dataclass(frozen=True)
class FusedLinear:
  in_dims: int = 1

  def to_hf(self, ours):
    return Fused(self.in_dims).to_hf(ours).T

  def to_ours(self, hf, shapes):
    return Fused(self.in_dims).to_ours(hf.T, shapes)


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str
  ours: tuple[str, ...]
  transform: Transform = Same()
  from_layer: int = 0  # layered rules: the first layer HF has the tensor for

  @property
  def layered(self) -> bool:
    return '{i}' in self.hf

  def hf_shape(self, our_shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The HF tensor's shape implied by ours (per layer: leading layer axes already dropped)."""
    structs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in our_shapes]
    return tuple(jax.eval_shape(lambda *xs: self.transform.to_hf(xs), *structs).shape)


def dense(hf: str, ours: str, in_dims: int = 1) -> list[Rule]:
  """A torch nn.Linear (weight [out, in], bias) <-> our Dense (kernel, bias)."""
  return [Rule(f'{hf}.weight', (f'{ours}/kernel',), Linear(in_dims)),
          Rule(f'{hf}.bias', (f'{ours}/bias',), Reshape(0))]


def conv1d(hf: str, ours: str, in_dims: int = 1) -> list[Rule]:
  """A GPT-2 Conv1D (weight [in, out], bias) <-> our Dense."""
  return [Rule(f'{hf}.weight', (f'{ours}/kernel',), Reshape(in_dims)),
          Rule(f'{hf}.bias', (f'{ours}/bias',), Reshape(0))]


def norm(hf: str, ours: str, weight: str = 'weight') -> list[Rule]:
  return [Rule(f'{hf}.{weight}', (f'{ours}/scale',)), Rule(f'{hf}.bias', (f'{ours}/bias',))]


_LAYER = 'encoder/blocks'

BERT_ENCODER = [
    Rule('embeddings.word_embeddings.weight', ('encoder/token_embed',)),
    Rule('embeddings.position_embeddings.weight', ('encoder/position_embed',)),
    Rule('embeddings.token_type_embeddings.weight', ('encoder/type_embed',)),
    *norm('embeddings.LayerNorm', 'encoder/embed_norm'),
    *dense('encoder.layer.{i}.attention.self.query', f'{_LAYER}/attention/query'),
    *dense('encoder.layer.{i}.attention.self.key', f'{_LAYER}/attention/key'),
    *dense('encoder.layer.{i}.attention.self.value', f'{_LAYER}/attention/value'),
    *dense('encoder.layer.{i}.attention.output.dense', f'{_LAYER}/attention/out', in_dims=2),
    *norm('encoder.layer.{i}.attention.output.LayerNorm', f'{_LAYER}/attention_norm'),
    *dense('encoder.layer.{i}.intermediate.dense', f'{_LAYER}/mlp/wi'),
    *dense('encoder.layer.{i}.output.dense', f'{_LAYER}/mlp/wo'),
    *norm('encoder.layer.{i}.output.LayerNorm', f'{_LAYER}/mlp_norm'),
]
BERT_POOLER = dense('pooler.dense', 'encoder/pooler')  # BertModel(add_pooling_layer=False) lacks it
# BertForMaskedLM's head; the decoder weight is the word embedding (tied) and is not stored.
BERT_MLM_HEAD = [
    *dense('cls.predictions.transform.dense', 'mlm_head/transform'),
    *norm('cls.predictions.transform.LayerNorm', 'mlm_head/norm'),
    Rule('cls.predictions.bias', ('mlm_head/bias',)),
]
BERT_CLASSIFIER_HEAD = dense('classifier', 'head')  # BertForSequenceClassification, BertForTokenClassification
BERT_QA_HEAD = dense('qa_outputs', 'head')  # BertForQuestionAnswering: start and end logits
# BertForPreTraining's next-sentence head (our nsp / sop head; 2 classes on the pooled [CLS]).
BERT_SENTENCE_HEAD = dense('cls.seq_relationship', 'sentence_head')

GPT2_ENCODER = [
    Rule('wte.weight', ('encoder/token_embed',)),
    Rule('wpe.weight', ('encoder/position_embed',)),
    *norm('h.{i}.ln_1', f'{_LAYER}/attention_norm'),
    Rule('h.{i}.attn.c_attn.weight', tuple(f'{_LAYER}/attention/{p}/kernel' for p in ('query', 'key', 'value')),
         Fused(1)),
    Rule('h.{i}.attn.c_attn.bias', tuple(f'{_LAYER}/attention/{p}/bias' for p in ('query', 'key', 'value')),
         Fused(0)),
    *conv1d('h.{i}.attn.c_proj', f'{_LAYER}/attention/out', in_dims=2),
    *norm('h.{i}.ln_2', f'{_LAYER}/mlp_norm'),
    *conv1d('h.{i}.mlp.c_fc', f'{_LAYER}/mlp/wi'),
    *conv1d('h.{i}.mlp.c_proj', f'{_LAYER}/mlp/wo'),
    *norm('ln_f', 'encoder/final_norm'),
]
GPT2_TOKEN_HEAD = dense('classifier', 'head')  # GPT2ForTokenClassification
GPT2_QA_HEAD = dense('qa_outputs', 'head')  # GPT2ForQuestionAnswering

# LlamaModel (prefix 'model.'): no biases (attention_bias and mlp_bias false), so the bias rules never apply.
LLAMA_ENCODER = [
    Rule('embed_tokens.weight', ('encoder/token_embed',)),
    *norm('layers.{i}.input_layernorm', f'{_LAYER}/attention_norm'),
    *dense('layers.{i}.self_attn.q_proj', f'{_LAYER}/attention/query'),
    *dense('layers.{i}.self_attn.k_proj', f'{_LAYER}/attention/key'),
    *dense('layers.{i}.self_attn.v_proj', f'{_LAYER}/attention/value'),
    *dense('layers.{i}.self_attn.o_proj', f'{_LAYER}/attention/out', in_dims=2),
    *norm('layers.{i}.post_attention_layernorm', f'{_LAYER}/mlp_norm'),
    *dense('layers.{i}.mlp.gate_proj', f'{_LAYER}/mlp/wi_gate'),
    *dense('layers.{i}.mlp.up_proj', f'{_LAYER}/mlp/wi_up'),
    *dense('layers.{i}.mlp.down_proj', f'{_LAYER}/mlp/wo'),
    *norm('norm', 'encoder/final_norm'),
]
LLAMA_LM_HEAD = dense('lm_head', 'lm_head')  # untied only (tie_word_embeddings false); no bias
LLAMA_CLASSIFIER_HEAD = dense('score', 'head')  # LlamaForSequenceClassification: no bias
LLAMA_TOKEN_HEAD = dense('score', 'head')  # LlamaForTokenClassification: with a bias
LLAMA_QA_HEAD = dense('qa_outputs', 'head')  # LlamaForQuestionAnswering (its encoder's prefix: 'transformer.')

# ModernBertModel (prefix 'model.'): no biases (attention_bias, mlp_bias, norm_bias false), so the bias rules never
# apply; layer 0's attn_norm is an Identity.
MODERNBERT_ENCODER = [
    Rule('embeddings.tok_embeddings.weight', ('encoder/token_embed',)),
    *norm('embeddings.norm', 'encoder/embed_norm'),
    *[dataclasses.replace(r, from_layer=1) for r in norm('layers.{i}.attn_norm', f'{_LAYER}/attention_norm')],
    Rule('layers.{i}.attn.Wqkv.weight', tuple(f'{_LAYER}/attention/{p}/kernel' for p in ('query', 'key', 'value')),
         FusedLinear(1)),
    *dense('layers.{i}.attn.Wo', f'{_LAYER}/attention/out', in_dims=2),
    *norm('layers.{i}.mlp_norm', f'{_LAYER}/mlp_norm'),
    Rule('layers.{i}.mlp.Wi.weight', (f'{_LAYER}/mlp/wi_gate/kernel', f'{_LAYER}/mlp/wi_up/kernel'), FusedLinear(1)),
    *dense('layers.{i}.mlp.Wo', f'{_LAYER}/mlp/wo'),
    *norm('final_norm', 'encoder/final_norm'),
]
# ModernBertForMaskedLM's head (head.dense has no bias: classifier_bias false); decoder.weight is the word
# embedding (tied, not stored by save_pretrained).
MODERNBERT_MLM_HEAD = [
    *dense('head.dense', 'mlm_head/transform'),
    *norm('head.norm', 'mlm_head/norm'),
    Rule('decoder.bias', ('mlm_head/bias',)),
]
# ModernBertForSequenceClassification: head.dense/head.norm on the pooled vector (our pooled_transform, the MLM
# head's transform), then classifier (with a bias). ModernBertForTokenClassification and
# ModernBertForQuestionAnswering name theirs the same, applied per token.
MODERNBERT_CLASSIFIER_HEAD = [
    *dense('head.dense', 'pooled_transform/transform'),
    *norm('head.norm', 'pooled_transform/norm'),
    *dense('classifier', 'head'),
]

# HF tensors that carry nothing of ours: buffers, and decoders tied to the word embedding (checked equal, and
# only read as tied when the model ties its head: an untied llama lm_head.weight is LLAMA_LM_HEAD's).
IGNORED_SUFFIXES = ('embeddings.position_ids', '.attn.bias', '.attn.masked_bias', '.rotary_emb.inv_freq')
TIED_DECODERS = ('cls.predictions.decoder.weight', 'lm_head.weight', 'decoder.weight')
BIAS_ALIASES = {'cls.predictions.decoder.bias': 'cls.predictions.bias'}


def to_hf(rules: Sequence[Rule], params: dict[str, np.ndarray], num_layers: int, prefix: str = '') -> dict:
  """Our flat params -> {HF name: array}; rules whose parameters we lack (a gpt2 pooler) are skipped."""
  tensors = {}
  for rule in rules:
    if not all(p in params for p in rule.ours):
      continue
    if rule.layered:
      for i in range(rule.from_layer, num_layers):
        tensors[prefix + rule.hf.format(i=i)] = np.asarray(rule.transform.to_hf([params[p][i] for p in rule.ours]))
    else:
      tensors[prefix + rule.hf] = np.asarray(rule.transform.to_hf([params[p] for p in rule.ours]))
  return tensors


def to_ours(rules: Sequence[Rule], get_tensor, shapes: dict[str, tuple[int, ...]], num_layers: int,
            prefix: str = '') -> dict[str, np.ndarray]:
  """{HF name: array} (through get_tensor(name, expected_shape), which checks) -> our flat params.

  shapes: our parameters' shapes (stacked layers included); rules for parameters we lack are skipped.
  """
  params = {}
  for rule in rules:
    if not all(p in shapes for p in rule.ours):
      continue
    our_shapes = [shapes[p][1:] if rule.layered else shapes[p] for p in rule.ours]
    expected = rule.hf_shape(our_shapes)
    layers = range(num_layers) if rule.layered else [None]
    parts = [[np.ones(s, np.float32) for s in our_shapes] if rule.layered and i < rule.from_layer else
             rule.transform.to_ours(np.asarray(get_tensor(prefix + rule.hf.format(i=i), expected)), our_shapes)
             for i in layers]
    for j, path in enumerate(rule.ours):
      params[path] = np.stack([p[j] for p in parts]) if rule.layered else parts[0][j]
  return params
