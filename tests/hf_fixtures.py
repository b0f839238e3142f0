"""Shared by the conversion tests: the parity tolerance, logits from either side, and tiny trained transformers
models (BERT with a WordPiece vocabulary, GPT-2, Llama and ModernBERT with byte-level BPE ones) saved as Hugging Face
directories."""
import copy
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from pretrain.model import load as model_load
from tests.checkpoint_fixtures import TRAINED

# max |logit difference| in float32. Measured on trained weights: 3.3e-6 (export) and ~1e-6 (import); an erf GELU
# where a tanh one belongs (or the reverse) moves the logits by 7e-5 to 8e-5. ModernBERT (test_modernbert_conversion.py,
# sequences longer than the local window, padded and packed): import 2.4e-6 to 2.9e-6, export of ours 2.4e-6 to
# 3.3e-6, classifiers <= 1.5e-7 (logits up to 0.6). Llama classifiers <= 3e-8 (logits up to 1).
# Llama's language-model logits sit at the float32 noise floor (the trained residual stream reaches |x| ~ 4000), and
# transformers' own float32 run moves with the CPU's kernels: on an AVX-512 machine it was 2.75e-5 from its float64
# run on random tokens, where ours was 4.0e-6. So those tests compare both with transformers in float64
# (near_exact): ours within TOLERANCE of it, or no further than 1.5x transformers' float32 run is. Measured there,
# ours / transformers' float32 from float64: import 4.0e-6 / 3.7e-6 (random), 7.4e-6 / 5.9e-6 (text); tied, head_dim
# 32: 6.0e-6 / 1.4e-5 (random), 1.42e-5 / 1.49e-5 (text).
TOLERANCE = 1e-5
NOISE_RATIO = 1.5
TEXTS = ['def f(x):\n    return x * 2  # double it', 'Héllo wörld ✓ 漢字 and\ttabs', 'The quick brown fox.']
HF_CLASSES = {'mlm': transformers.BertForMaskedLM, 'clm': transformers.GPT2LMHeadModel}


def our_logits(checkpoint, ids, **kwargs):
  return logits_of(model_load.load_checkpoint(str(checkpoint)), ids, **kwargs)


def hf_logits(model, ids, **kwargs):
  with torch.no_grad():
    return model(torch.tensor(ids), **{k: torch.tensor(v) for k, v in kwargs.items()}).logits.numpy()


def float64_gaps(ours, model, ids, where=Ellipsis, **kwargs) -> tuple[float, float]:
  """(max |ours - transformers in float64|, max |transformers in float32 - in float64|) at `where`: how far our
  float32 logits are from the exact ones, and how far transformers' own float32 run is. model: float32."""
  exact = hf_logits(copy.deepcopy(model).double(), ids, **kwargs)
  return np.abs(ours - exact)[where].max(), np.abs(hf_logits(model, ids, **kwargs) - exact)[where].max()


def near_exact(gaps: tuple[float, float]) -> bool:
  """float64_gaps within the tolerance: TOLERANCE, or NOISE_RATIO x transformers' own float32 gap if larger."""
  ours, theirs = gaps
  return ours <= max(TOLERANCE, NOISE_RATIO * theirs)


def logits_of(loaded, ids, cfg=None, flat=None, **kwargs):
  """A loaded LanguageModel checkpoint's logits, with another config (cfg) or other flat params (flat) if given."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: model_load.model_builder(cfg or loaded.model_cfg, None)(0)))
  params = loaded.params if flat is None else model_load.unflatten({k: jnp.asarray(v) for k, v in flat.items()})
  return np.asarray(nnx.merge(graphdef, params)(jnp.asarray(ids), **{k: jnp.asarray(v) for k, v in kwargs.items()}))


def padded(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded ids [rows, longest] and the real-token mask (1 real, 0 padding) of token rows."""
  length = max(len(r) for r in rows)
  ids = np.array([r + [pad_id] * (length - len(r)) for r in rows])
  return ids, np.array([[1] * len(r) + [0] * (length - len(r)) for r in rows])


WORDS = 'the cat dog sat on a mat and ran under red blue tree house saw it'.split()


def bert_dir(path: pathlib.Path, train_steps: int, safetensors: bool = True) -> pathlib.Path:
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *WORDS, *'bcdefghijklmnopqrstuvwxyz.,!?',
           *(f'##{c}' for c in 'abcdefghijklmnopqrstuvwxyz')]
  path.mkdir(parents=True)
  (path / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  (path / 'tokenizer_config.json').write_text(json.dumps({'do_lower_case': True}))
  config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(config)
  _train(model, len(vocab), train_steps, token_types=True)
  _save(model, path, safetensors)
  return path


def _save(model, path: pathlib.Path, safetensors: bool) -> None:
  """model.safetensors, or pytorch_model.bin as older checkpoints (and transformers 4 by request) wrote."""
  model.save_pretrained(path)
  if not safetensors:
    torch.save(model.state_dict(), path / 'pytorch_model.bin')
    (path / 'model.safetensors').unlink()


def gpt2_dir(path: pathlib.Path, train_steps: int, safetensors: bool = True) -> pathlib.Path:
  import tokenizers  # pylint: disable=import-outside-toplevel
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([' '.join(WORDS)] * 20 + TEXTS, vocab_size=300, special_tokens=['<|endoftext|>'])
  path.mkdir(parents=True)
  bpe.save_model(str(path))  # vocab.json + merges.txt, as GPT-2 checkpoints ship them
  config = transformers.GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2,
                                   n_head=4, bos_token_id=0, eos_token_id=0)
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(config)
  _train(model, bpe.get_vocab_size(), train_steps, token_types=False)
  _save(model, path, safetensors)
  return path


LLAMA_SPECIALS = ('<|begin_of_text|>', '<|end_of_text|>')  # Llama 3's BOS and EOS (ids 0 and 1 here); no pad, no unk


def llama_dir(path: pathlib.Path, train_steps: int, **config) -> pathlib.Path:
  """A Llama 3 style directory as transformers saves it: config.json, model.safetensors, and a byte-level BPE
  tokenizer.json (BOS added by its post-processor) with no tokenizer.model. Grouped-query attention (4 heads,
  2 kv heads), an untied head and RMSNorm eps 1e-5 unless `config` (LlamaConfig fields) says otherwise."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=list(LLAMA_SPECIALS),
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  corpus = stdlib_text()
  bpe.train_from_iterator([corpus] + TEXTS, trainer)
  bos = LLAMA_SPECIALS[0]
  bpe.post_processor = tokenizers.processors.TemplateProcessing(single=f'{bos} $A', pair=f'{bos} $A {bos}:1 $B:1',
                                                                special_tokens=[(bos, 0)])
  transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos,
                                       eos_token=LLAMA_SPECIALS[1]).save_pretrained(path)
  config = transformers.LlamaConfig(**{**dict(
      vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
      tie_word_embeddings=False, bos_token_id=0, eos_token_id=1), **config})
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config)
  _train(model, bpe.get_vocab_size(), train_steps, token_types=False, text_ids=bpe.encode(corpus).ids)
  model.save_pretrained(path)
  return path


MODERNBERT_SPECIALS = ('[UNK]', '[CLS]', '[SEP]', '[PAD]', '[MASK]')  # after the BPE vocabulary, as ModernBERT's


def modernbert_dir(path: pathlib.Path, train_steps: int, learning_rate: float = 1e-2, **config) -> pathlib.Path:
  """A ModernBERT directory as transformers saves it: config.json, model.safetensors (no decoder.weight: tied),
  and a byte-level BPE tokenizer.json whose special tokens follow the vocabulary ([MASK] strips the space before
  it) and whose post-processor wraps [CLS] a [SEP]. 4 layers, global every 3rd (0 and 3 global, 1 and 2 local) with
  a 16-token local window, the released model's rotary bases (global 160000, local 10000), a model vocabulary
  padded past the tokenizer's (as ModernBERT's 50368 > 50285); trained `train_steps` AdamW steps of masked LM on
  Python source, 32-token windows (longer than the local window)."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=400,
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  corpus = stdlib_text()
  bpe.train_from_iterator([corpus] + TEXTS, trainer)
  bpe.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False, lstrip=t == '[MASK]')
                          for t in MODERNBERT_SPECIALS])
  unk, cls, sep, pad, mask = (bpe.token_to_id(t) for t in MODERNBERT_SPECIALS)
  bpe.post_processor = tokenizers.processors.TemplateProcessing(
      single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B [SEP]', special_tokens=[('[CLS]', cls), ('[SEP]', sep)])
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe, unk_token='[UNK]', cls_token='[CLS]', sep_token='[SEP]', pad_token='[PAD]',
      mask_token='[MASK]', model_input_names=['input_ids', 'attention_mask']).save_pretrained(path)
  vocab_size = -(-bpe.get_vocab_size() // 64) * 64
  config = transformers.ModernBertConfig(**{**dict(
      vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
      max_position_embeddings=256, local_attention=32, global_attn_every_n_layers=3, pad_token_id=pad,
      bos_token_id=cls, eos_token_id=sep, cls_token_id=cls, sep_token_id=sep, classifier_pooling='mean'), **config})
  torch.manual_seed(0)
  model = transformers.ModernBertForMaskedLM(config)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # as _train: tiny matrices
  try:
    _mlm_steps(model, train_steps, learning_rate, 2 * config.local_attention,
               bpe.encode(corpus, add_special_tokens=False).ids, (mask, cls, sep))
  finally:
    torch.set_num_threads(threads)
  model.eval()
  model.save_pretrained(path)
  return path


def _mlm_steps(model, steps: int, learning_rate: float, length: int, text_ids: list[int],
               mask_cls_sep: tuple[int, int, int]) -> None:
  """Masked-LM AdamW steps on [CLS] window [SEP] rows (`length` tokens) of text_ids: 30% of the tokens masked and
  predicted."""
  mask_id, cls_id, sep_id = mask_cls_sep
  optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
  generator = torch.Generator().manual_seed(1)
  text = torch.tensor(text_ids)
  for _ in range(steps):
    starts = torch.randint(0, len(text) - length, (4, 1), generator=generator)
    ids = torch.cat([torch.full((4, 1), cls_id), text[starts + torch.arange(length - 2)],
                     torch.full((4, 1), sep_id)], 1)
    masked = torch.rand(ids.shape, generator=generator) < 0.3
    masked[:, [0, -1]] = False
    loss = model(torch.where(masked, mask_id, ids), labels=torch.where(masked, ids, -100)).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def stdlib_text() -> str:
  """Real text that every machine has: the Python sources of the standard library's json package."""
  return ''.join(p.read_text(encoding='utf-8') for p in sorted(pathlib.Path(json.__file__).parent.glob('*.py')))


def _train(model, vocab_size: int, steps: int, token_types: bool, text_ids: list[int] | None = None) -> None:
  """Real optimizer steps at a high learning rate, so the weights are far from their initialisation: on random
  tokens, or on windows of text_ids (then the model learns to predict, and its logits spread out). On one
  thread: for these tiny matrices torch's threads only wait on each other (20x slower on a busy 2-core machine)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    _steps(model, vocab_size, steps, token_types, text_ids)
  finally:
    torch.set_num_threads(threads)
  model.eval()


def _steps(model, vocab_size: int, steps: int, token_types: bool, text_ids: list[int] | None) -> None:
  optimizer = torch.optim.AdamW(model.parameters(), lr=TRAINED['learning_rate'])
  generator = torch.Generator().manual_seed(1)
  text = torch.tensor(text_ids) if text_ids is not None else None
  for _ in range(steps):
    if text is None:
      ids = torch.randint(0, vocab_size, (4, 16), generator=generator)
    else:
      starts = torch.randint(0, len(text) - 16, (4, 1), generator=generator)
      ids = text[starts + torch.arange(16)]
    extra = {'token_type_ids': torch.randint(0, 2, (4, 16), generator=generator)} if token_types else {}
    loss = model(ids, labels=ids, **extra).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
