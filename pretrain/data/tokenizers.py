"""The tokenizer a checkpoint carries: SentencePiece (trained here) or Hugging Face `tokenizers` (imported)."""
import base64

from pretrain.data import hf_tokenizer
from pretrain.data.tokenizer import Tokenizer
from pretrain.runtime.errors import ConfigError


def tokenizer_from_meta(meta: dict):
  """The tokenizer a checkpoint's meta holds: SentencePiece, or a Hugging Face one (the `hf` extra)."""
  kind = meta['tokenizer'].get('kind')
  if kind == 'sentencepiece':
    return Tokenizer.from_bytes(base64.b64decode(meta['tokenizer']['model_b64']))
  if kind == hf_tokenizer.KIND:
    return hf_tokenizer.HfTokenizer.from_meta(meta['tokenizer'])
  raise ConfigError(f'checkpoint: unknown tokenizer kind {kind!r} in its meta item')
