"""The peers a user would pick instead of us, run on the same model size, batch and sequence length:

  hf-flax   Hugging Face FlaxBertForMaskedLM / FlaxGPT2LMHeadModel / FlaxLlamaForCausalLM (transformers 4.57.6 is
            the last release with Flax models), one jitted train step with donated buffers, as the Hugging Face
            Flax examples do;
  hf-torch  Hugging Face PyTorch BertForMaskedLM / GPT2LMHeadModel / LlamaForCausalLM, eager, with torch's fused
            scaled_dot_product_attention ('sdpa'), on CUDA when there is one.

Each gets our config's architecture (pretrain.model.hf_config.to_hf_config: the same dropout, GELU, tied or untied
head, kv heads, head width, rope base), compute dtype (HF Flax `dtype=`, torch autocast) and optimizer (AdamW,
clipping at train.grad_clip_norm), and inputs masked ahead on the host (MLM: mask_prob of the tokens replaced by
[MASK]; untimed). As in their examples, the peers compute the output layer on every position, also MLM's unmasked
ones. Model FLOPs are the same count for every system (ours: pretrain.model.flops), so the ratio of their MFU is
the ratio of their tokens/s.
Llama: Hugging Face's Llama has no dropout but on the attention probabilities, so model.dropout_rate > 0 costs
only us (set --config.model.dropout_rate=0 for the same work). FlaxLlamaForCausalLM always has an untied head
and rope base 10000, which cost what ours cost; it derives the head width from hidden_size / num_heads, so a
model.head_dim other than that cannot run on it (PeerUnavailable).

A peer that cannot run here raises PeerUnavailable with the reason (a missing package, say).
"""
import numpy as np

from pretrain.runtime import accelerators
from pretrain.runtime.errors import ConfigError
from pretrain.model.config import ModelConfig
from tools.benchmark.step import synthetic_batch
from tools.benchmark.timing import StepTiming, time_steps
from pretrain.model.hf_config import MASKED_LM, hf_preset, to_hf_config
from pretrain.settings import PretrainSettings

PEERS = ('hf-flax', 'hf-torch')
LAST_FLAX_TRANSFORMERS = '4.57.6'
IGNORED = -100  # Hugging Face's label for positions without a loss


class PeerUnavailable(ConfigError):
  """This peer cannot run in this environment; the message says why and how to fix it (one line, exit 2)."""


def masked_inputs(settings: PretrainSettings, mask_id: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """(input ids, labels) [batch, seq]: MLM replaces mask_prob of the tokens (at least one per row) by mask_id and
  labels only those; CLM's labels are the tokens (the models shift them)."""
  tokens = synthetic_batch(settings)['tokens']
  if settings.objective == 'clm':
    return tokens, tokens.copy()
  rng = np.random.default_rng(1)
  masked = rng.random(tokens.shape) < settings.mlm.mask_prob
  masked[:, 0] |= ~masked.any(axis=1)
  return np.where(masked, mask_id, tokens), np.where(masked, tokens, IGNORED)


def _transformers(need_flax: bool):
  try:
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise PeerUnavailable(f'transformers is not installed ({e}): pip install "transformers=={LAST_FLAX_TRANSFORMERS}"')
  if need_flax and not hasattr(transformers, 'FlaxBertForMaskedLM'):
    raise PeerUnavailable(f'transformers {transformers.__version__} has no Flax models (the last release with them is '
                          f'{LAST_FLAX_TRANSFORMERS}): pip install "transformers=={LAST_FLAX_TRANSFORMERS}"')
  return transformers


def _hf_config(transformers, model_cfg: ModelConfig):
  fields = to_hf_config(model_cfg, MASKED_LM[hf_preset(model_cfg, '--config')], pad_id=0, cls_id=1, sep_id=2)
  return transformers.AutoConfig.for_model(**fields, attn_implementation='sdpa')  # the torch peer's attention


def hf_model(settings: PretrainSettings, flax: bool):
  """Our config's preset as its Hugging Face class (hf_config.MASKED_LM), the Flax one (in the compute dtype)
  or the PyTorch one (float32 weights, sdpa attention); fresh weights from settings.seed."""
  transformers = _transformers(need_flax=flax)
  model_cfg = settings.model
  preset = hf_preset(model_cfg, '--config')
  config = _hf_config(transformers, model_cfg)
  if not flax:
    import torch  # pylint: disable=g-import-not-at-top
    torch.manual_seed(settings.seed)
    return getattr(transformers, MASKED_LM[preset])(config)
  if preset == 'llama' and model_cfg.head_dim * model_cfg.num_heads != model_cfg.hidden_size:
    raise PeerUnavailable(f'model.head_dim: FlaxLlamaForCausalLM has heads of hidden_size / num_heads = '
                          f'{model_cfg.hidden_size // model_cfg.num_heads}, not {model_cfg.head_dim}')
  return getattr(transformers, 'Flax' + MASKED_LM[preset])(config, seed=settings.seed, dtype=model_cfg.compute_dtype)


def measure_hf_flax(settings: PretrainSettings, flops_per_step: float, steps: int, warmup: int,
                    accelerator_name: str | None) -> StepTiming:
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from pretrain import optim  # pylint: disable=g-import-not-at-top
  from tools.benchmark.step import peak_memory_bytes  # pylint: disable=g-import-not-at-top

  accelerator = accelerators.detect_or_get(accelerator_name, jax.devices()[0].device_kind)
  model = hf_model(settings, flax=True)
  optimizer = optim.make_optimizer(settings.train.optimizer)
  inputs, labels = (jnp.asarray(a) for a in masked_inputs(settings))
  if settings.objective == 'clm':  # predict token t+1 at position t
    labels = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORED)], axis=1)

  def loss_fn(params, dropout_rng):
    logits = model(inputs, params=params, dropout_rng=dropout_rng, train=True).logits
    weights = (labels != IGNORED).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.maximum(labels, 0))
    return jnp.sum(losses * weights) / jnp.sum(weights)

  def train_step(params, opt_state, step):
    loss, grads = jax.value_and_grad(loss_fn)(params, jax.random.fold_in(jax.random.key(settings.seed), step))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = model.params
  opt_state = optimizer.init(params)
  start = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, 0).compile()
  compile_s = time.perf_counter() - start
  step = 0

  def run_step():
    nonlocal params, opt_state, step
    params, opt_state, loss = compiled(params, opt_state, step)
    step += 1
    loss.block_until_ready()

  seconds = time_steps(run_step, steps, warmup)
  return StepTiming('hf-flax', seconds, inputs.size, flops_per_step, 1, accelerator, compile_s,
                    peak_memory_bytes(compiled))


def measure_hf_torch(settings: PretrainSettings, flops_per_step: float, steps: int, warmup: int,
                     accelerator_name: str | None) -> StepTiming:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise PeerUnavailable(f'torch is not installed ({e}): pip install torch') from None
  import contextlib  # pylint: disable=g-import-not-at-top

  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  accelerator = accelerators.detect_or_get(accelerator_name,
                                           torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu')
  model_cfg = settings.model
  model = hf_model(settings, flax=False).to(device).train()
  train = settings.train
  optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, betas=(train.b1, train.b2),
                                eps=train.eps, weight_decay=train.weight_decay)
  inputs, labels = (torch.from_numpy(a.astype(np.int64)).to(device) for a in masked_inputs(settings))
  autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if model_cfg.dtype == 'bfloat16' else
              torch.autocast(device.type, dtype=torch.float16) if model_cfg.dtype == 'float16' else
              contextlib.nullcontext())

  def run_step():
    with autocast:
      loss = model(input_ids=inputs, labels=labels).loss
    loss.backward()
    if train.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss.item()  # waits for the step

  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  seconds = time_steps(run_step, steps, warmup)
  peak = torch.cuda.max_memory_allocated() if device.type == 'cuda' else None
  return StepTiming('hf-torch', seconds, inputs.numel(), flops_per_step, 1, accelerator, None, peak)


MEASURE = {'hf-flax': measure_hf_flax, 'hf-torch': measure_hf_torch}
