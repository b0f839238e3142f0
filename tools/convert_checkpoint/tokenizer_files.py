"""Tokenizer files of a Hugging Face model directory: written on export, read on import.

Export of our SentencePiece tokenizer writes `tokenizer.model` (the SentencePiece proto, unchanged) and a
`tokenizer.json` for the `tokenizers` library that reproduces it: the same unigram pieces and scores with byte
fallback, spaces as '▁', no other normalisation. Control pieces (<s>, </s>, <pad>, [MASK]) become special
tokens; like every HF tokenizer, HF then reads their literal text ("[MASK]") as the special token. The bert
and modernbert presets' post-processor adds [CLS] a [SEP] b [SEP] with token types (modernbert has no token types:
its model ignores them), as our fine-tuning does.

The llama preset's post-processor puts BOS first, as LlamaTokenizerFast does.

Import prefers a SentencePiece `tokenizer.model` that has BOS/EOS (what our export writes), else builds a
HfTokenizer from `tokenizer.json`, or from `vocab.txt` (BERT WordPiece) or `vocab.json` + `merges.txt` (GPT-2).
A Llama's BOS and EOS are the ids its config.json names (bos_token_id, eos_token_id; of a list, the first); a
ModernBERT's CLS, SEP and padding ids those its config.json names (cls_token_id, sep_token_id, pad_token_id; the
mask token comes from the tokenizer files, as ModernBertConfig has no id for it).
"""
import json
import pathlib

import sentencepiece as spm

from pretrain.runtime.errors import ConfigError, require
from pretrain.data.hf_tokenizer import HfTokenizer, import_tokenizers
from pretrain.data.tokenizer import Tokenizer

# HF's names for the roles our tokenizers have; cls/sep double as bos/eos.
ROLE_KEYS = {'pad': ('pad_token',), 'unk': ('unk_token',), 'cls': ('cls_token', 'bos_token'),
             'sep': ('sep_token', 'eos_token'), 'mask': ('mask_token',)}
DEFAULT_SPECIALS = {
    'bert': {'pad': '[PAD]', 'unk': '[UNK]', 'cls': '[CLS]', 'sep': '[SEP]', 'mask': '[MASK]'},
    'gpt2': {'pad': None, 'unk': '<|endoftext|>', 'cls': '<|endoftext|>', 'sep': '<|endoftext|>', 'mask': None},
    'llama': {'pad': None, 'unk': '<unk>', 'cls': '<s>', 'sep': '</s>', 'mask': None},
    'modernbert': {'pad': '[PAD]', 'unk': '[UNK]', 'cls': '[CLS]', 'sep': '[SEP]', 'mask': '[MASK]'},
}
# config.json's token ids that name a role, per preset (they win over the tokenizer files' names).
CONFIG_IDS = {'llama': {'cls': 'bos_token_id', 'sep': 'eos_token_id'},
              'modernbert': {'cls': 'cls_token_id', 'sep': 'sep_token_id', 'pad': 'pad_token_id'}}


def _sentencepiece_json(tokenizer: Tokenizer, preset: str) -> str:
  tk = import_tokenizers()
  sp = spm.SentencePieceProcessor(model_proto=tokenizer.to_bytes())
  vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
  tok = tk.Tokenizer(tk.models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True))
  tok.normalizer = tk.normalizers.Replace(' ', '▁')
  tok.decoder = tk.decoders.Sequence([tk.decoders.Replace('▁', ' '), tk.decoders.ByteFallback(),
                                      tk.decoders.Fuse()])
  controls = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
  tok.add_special_tokens([tk.AddedToken(p, special=True, normalized=False) for p in controls])
  cls, sep = sp.id_to_piece(tokenizer.cls_id), sp.id_to_piece(tokenizer.sep_id)
  if preset in ('bert', 'modernbert'):
    tok.post_processor = tk.processors.TemplateProcessing(
        single=f'{cls} $A {sep}', pair=f'{cls} $A {sep} $B:1 {sep}:1',
        special_tokens=[(cls, tokenizer.cls_id), (sep, tokenizer.sep_id)])
  elif preset == 'llama':
    tok.post_processor = tk.processors.TemplateProcessing(
        single=f'{cls} $A', pair=f'{cls} $A {cls}:1 $B:1', special_tokens=[(cls, tokenizer.cls_id)])
  return tok.to_str()


def special_tokens(tokenizer, pad_id: int | None = None) -> dict[str, str]:
  """HF's special-token names -> tokens, for tokenizer_config.json and special_tokens_map.json; pad_id: the
  padding id config.json states, when it is not the tokenizer's."""
  piece = tokenizer.id_to_piece
  out = {'unk_token': piece(tokenizer.unk_id), 'pad_token': piece(tokenizer.pad_id if pad_id is None else pad_id),
         'cls_token': piece(tokenizer.cls_id), 'sep_token': piece(tokenizer.sep_id),
         'bos_token': piece(tokenizer.cls_id), 'eos_token': piece(tokenizer.sep_id)}
  if tokenizer.mask_id != tokenizer.unk_id:
    out['mask_token'] = piece(tokenizer.mask_id)
  return out


def write_tokenizer_files(tokenizer, out: pathlib.Path, preset: str, max_length: int,
                          pad_id: int | None = None) -> None:
  if isinstance(tokenizer, Tokenizer):
    (out / 'tokenizer.model').write_bytes(tokenizer.to_bytes())
    (out / 'tokenizer.json').write_text(_sentencepiece_json(tokenizer, preset), encoding='utf-8')
  else:
    (out / 'tokenizer.json').write_text(tokenizer.to_json(), encoding='utf-8')
  specials = special_tokens(tokenizer, pad_id)
  (out / 'special_tokens_map.json').write_text(json.dumps(specials, indent=2) + '\n')
  inputs = ['input_ids', 'token_type_ids', 'attention_mask'] if preset == 'bert' else ['input_ids', 'attention_mask']
  config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'model_max_length': max_length,
            'model_input_names': inputs, 'clean_up_tokenization_spaces': False, **specials}
  (out / 'tokenizer_config.json').write_text(json.dumps(config, indent=2) + '\n')


def _token(value) -> str | None:
  return value.get('content') if isinstance(value, dict) else value


def _special_names(hf_dir: pathlib.Path, model_type: str, config_ids: dict[str, int],
                   id_to_token=None) -> dict[str, str | None]:
  """role -> token: config.json's ids (config_ids, via id_to_token), else the tokenizer files' names, else the
  defaults."""
  stated = {}
  for name in ('tokenizer_config.json', 'special_tokens_map.json'):
    if (hf_dir / name).is_file():
      stated.update({k: _token(v) for k, v in json.loads((hf_dir / name).read_text()).items()
                     if k.endswith('_token')})
  specials = dict(DEFAULT_SPECIALS[model_type])
  for role, keys in ROLE_KEYS.items():
    specials[role] = next((stated[k] for k in keys if stated.get(k)), specials[role])
  for role, i in config_ids.items():
    if id_to_token is not None and id_to_token(i) is not None:
      specials[role] = id_to_token(i)
  return specials


def _config_ids(config_json: dict, model_type: str) -> dict[str, int]:
  """role -> the id config.json gives it (CONFIG_IDS[model_type]; of a list, the first)."""
  ids = {role: config_json.get(key) for role, key in CONFIG_IDS.get(model_type, {}).items()}
  ids = {role: (i[0] if isinstance(i, list) and i else i) for role, i in ids.items()}
  return {role: i for role, i in ids.items() if isinstance(i, int)}


def _lowercase(hf_dir: pathlib.Path) -> bool:
  path = hf_dir / 'tokenizer_config.json'
  return bool(json.loads(path.read_text()).get('do_lower_case', True)) if path.is_file() else True


def read_tokenizer(hf_dir: pathlib.Path, model_type: str, config_json: dict | None = None):
  """The tokenizer of an HF model dir, as one of ours (SentencePiece Tokenizer or HfTokenizer); config_json: the
  model's config.json, whose bos/eos ids (llama) name cls and sep."""
  config_ids = _config_ids(config_json or {}, model_type)
  sp_path = hf_dir / 'tokenizer.model'
  if sp_path.is_file():
    try:
      tokenizer = Tokenizer.from_file(sp_path)
    except ConfigError:
      tokenizer = None  # a SentencePiece model without BOS/EOS, or not one: fall through to tokenizer.json
    if tokenizer is not None:
      ours = {'cls': tokenizer.cls_id, 'sep': tokenizer.sep_id, 'pad': tokenizer.pad_id}
      for role, i in config_ids.items():
        require(ours[role] == i, f'{hf_dir / "config.json"}: {CONFIG_IDS[model_type][role]} {i} is not the '
                f'{role} id {ours[role]} of {sp_path}')
      return tokenizer
  tk = import_tokenizers()
  if (hf_dir / 'tokenizer.json').is_file():
    text = (hf_dir / 'tokenizer.json').read_text(encoding='utf-8')
    try:
      id_to_token = tk.Tokenizer.from_str(text).id_to_token
    except Exception:  # pylint: disable=broad-except  # HfTokenizer below names the file
      id_to_token = None
    specials = _special_names(hf_dir, model_type, config_ids, id_to_token)
    return HfTokenizer(text, specials, name=str(hf_dir / 'tokenizer.json'))
  specials = _special_names(hf_dir, model_type, {})
  if model_type == 'bert' and (hf_dir / 'vocab.txt').is_file():
    tok = tk.BertWordPieceTokenizer(str(hf_dir / 'vocab.txt'), lowercase=_lowercase(hf_dir))
  elif model_type == 'gpt2' and (hf_dir / 'vocab.json').is_file() and (hf_dir / 'merges.txt').is_file():
    tok = tk.ByteLevelBPETokenizer(str(hf_dir / 'vocab.json'), str(hf_dir / 'merges.txt'))
  else:
    wanted = {'bert': ', tokenizer.model or vocab.txt', 'gpt2': ', tokenizer.model or vocab.json and merges.txt'}
    wanted = wanted.get(model_type, ' or tokenizer.model')
    raise ConfigError(f'--hf: {hf_dir} has no tokenizer (tokenizer.json{wanted})')
  require(all(t is None or tok.token_to_id(t) is not None for t in specials.values()),
          f'--hf: the tokenizer in {hf_dir} lacks a special token of {specials}')
  return HfTokenizer(tok._tokenizer.to_str(), specials, name=str(hf_dir))  # pylint: disable=protected-access
