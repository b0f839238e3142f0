"""Model FLOPs of training, counted from the architecture (the count MFU divides by the hardware's peak).

A matmul with P weights costs 2P FLOPs per token forward and 4P backward (the gradients of its input and of
its weights), so training costs 3x the forward pass. Counted per token, with d = hidden_size,
f = mlp_dim, V = vocab_size, T = seq_len, L = num_layers:
- each layer's projections: q, k, v and out (4 d^2) and the MLP (2 d f), on every token;
- attention scores q.k and the weighted sum of v over the keys a query sees: 4 d FLOPs per key per layer.
  Bidirectional (bert): T keys. Causal (gpt2): (T + 1) / 2 keys on average, the masked half is not counted
  even though a dense kernel computes it;
- the output layer (the tied embedding, d V) on predicted tokens only: causal-LM every token; masked-LM the
  K = max_predictions(T, mask_prob) slots gathered per sequence (K / T of the tokens), which also pass the
  MLM transform (d^2);
- with a sentence task (mlm.sentence_task nsp/sop), the pooler and the 2-way classifier (d^2 + 2 d) once per
  sequence.
Not counted: embedding lookups (gathers), biases, LayerNorm, GELU, softmax, dropout and the optimizer update
(O(d) per token or O(params) per step), and rematerialisation (recomputing the forward pass costs hardware
FLOPs, not model FLOPs).
"""
from pretrain.model.config import ModelConfig

TRAIN_TO_FORWARD = 3  # forward 2 FLOPs per weight and token, backward 4


def predicted_fraction(seq_len: int, objective: str, mask_prob: float) -> float:
  """The fraction of tokens that reach the output layer: 1 for clm, K / T for mlm.

  K is pretrain.objectives.max_predictions (restated: core imports nothing else of the project; a test keeps
  the two equal).
  """
  if objective == 'clm':
    return 1.0
  return max(1, round(seq_len * mask_prob)) / seq_len


def forward_flops_breakdown(model_cfg: ModelConfig, seq_len: int, objective: str, mask_prob: float = 0.15,
                            sentence_task: str = 'none') -> dict[str, float]:
  """Forward FLOPs per token by part: 'projections', 'attention', 'head' (output layer, MLM transform,
  pooler)."""
  d, f, v, t, layers = (model_cfg.hidden_size, model_cfg.mlp_dim, model_cfg.vocab_size, seq_len,
                        model_cfg.num_layers)
  keys_per_query = (t + 1) / 2 if model_cfg.causal else t
  head_weights = d * v + (d * d if model_cfg.variant == 'bert' else 0)
  head = 2 * head_weights * predicted_fraction(seq_len, objective, mask_prob)
  if sentence_task != 'none':
    head += 2 * (d * d + 2 * d) / t
  return {
      'projections': 2 * layers * (4 * d * d + 2 * d * f),
      'attention': layers * 4 * d * keys_per_query,
      'head': head,
  }


def train_flops_per_token(model_cfg: ModelConfig, seq_len: int, objective: str, mask_prob: float = 0.15,
                          sentence_task: str = 'none') -> float:
  """Forward + backward model FLOPs per input token (see the module docstring for what counts)."""
  return TRAIN_TO_FORWARD * sum(forward_flops_breakdown(model_cfg, seq_len, objective, mask_prob,
                                                        sentence_task).values())


def config_flops_per_token(config, model_cfg: ModelConfig) -> float:
  """train_flops_per_token of a pretraining config (its sequence length, objective and MLM settings)."""
  return train_flops_per_token(model_cfg, config.data.seq_len, config.objective, config.mlm.mask_prob,
                               config.mlm.sentence_task)


def train_flops_per_step(config, model_cfg: ModelConfig) -> float:
  """Model FLOPs of one optimizer step of a pretraining config: per token x batch_size x seq_len."""
  return config_flops_per_token(config, model_cfg) * config.train.batch_size * config.data.seq_len
