"""Model FLOPs of training, counted from the architecture (the count MFU divides by the hardware's peak).

A matmul with P weights costs 2P FLOPs per token forward and 4P backward (the gradients of its input and of
its weights), so training costs 3x the forward pass. Counted per token, with d = hidden_size,
f = mlp_dim, V = vocab_size, T = seq_len, L = num_layers, n heads and g key/value heads of width h:
- each layer's projections: q and out (2 d n h), k and v (2 d g h: grouped-query attention shrinks them) and
  the MLP (2 d f, or 3 d f when gated: swiglu's or geglu's gate, up and down), on every token;
- attention scores q.k and the weighted sum of v over the keys a query sees: 4 n h FLOPs per key per layer.
  Bidirectional: T keys. Causal (model.causal): (T + 1) / 2 keys on average, the masked half is not counted
  even though a dense kernel computes it. Local layers (model.local_window) count all T keys as global ones do:
  the dense kernel computes every score and the window only masks them (a windowed kernel would do about
  local_window + 1 keys per query);
- the output layer (d V, tied or not) on the predicted tokens only (the objective's count per sequence: every
  token for causal-LM, the K = max_predictions(T, mask_prob) gathered slots for masked-LM), which with
  model.head_transform also pass the head's dense layer (d^2);
- with a sentence head (mlm.sentence_task nsp/sop), the pooler and the 2-way classifier (d^2 + 2 d) once per
  sequence.
Not counted: embedding lookups (gathers), biases, norms, activations, rotary positions, softmax, dropout and the
optimizer update
(O(d) per token or O(params) per step), and rematerialisation (recomputing the forward pass costs hardware
FLOPs, not model FLOPs).
"""
from pretrain.model.config import GATED_MLPS, ModelConfig

TRAIN_TO_FORWARD = 3  # forward 2 FLOPs per weight and token, backward 4


def forward_flops_breakdown(model_cfg: ModelConfig, seq_len: int, predicted_per_sequence: int
                            ) -> dict[str, float]:
  """Forward FLOPs per token by part: 'projections', 'attention', 'head' (output layer, head transform, pooler).

  predicted_per_sequence: the tokens of a sequence that reach the output layer (Objective.predicted_per_sequence).
  """
  d, f, v, t, layers = (model_cfg.hidden_size, model_cfg.mlp_dim, model_cfg.vocab_size, seq_len,
                        model_cfg.num_layers)
  heads, kv_heads, width = model_cfg.num_heads, model_cfg.num_kv_heads, model_cfg.head_dim
  mlp_matrices = 3 if model_cfg.mlp in GATED_MLPS else 2
  keys_per_query = (t + 1) / 2 if model_cfg.causal else t
  head_weights = d * v + (d * d if model_cfg.head_transform else 0)
  head = 2 * head_weights * predicted_per_sequence / t
  if model_cfg.sentence_head:
    head += 2 * (d * d + 2 * d) / t
  return {
      'projections': 2 * layers * (2 * d * heads * width + 2 * d * kv_heads * width + mlp_matrices * d * f),
      'attention': layers * 4 * heads * width * keys_per_query,
      'head': head,
  }


def train_flops_per_token(model_cfg: ModelConfig, seq_len: int, predicted_per_sequence: int) -> float:
  """Forward + backward model FLOPs per input token (see the module docstring for what counts)."""
  return TRAIN_TO_FORWARD * sum(forward_flops_breakdown(model_cfg, seq_len, predicted_per_sequence).values())
