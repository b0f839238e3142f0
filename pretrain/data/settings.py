"""config.data as a frozen, validated dataclass: what the input pipeline reads besides the batch size, the model's
vocabulary and the seed (build_data's own arguments)."""
import dataclasses

from pretrain.data import sources
from pretrain.runtime.errors import require

PREPARED = 'prepared'  # prepared:DIR, ArrayRecord shards written by tools.prepare_data (pretrain/data/prepared.py)
SOURCE_SCHEMES = (*sources.SCHEMES, PREPARED)


@dataclasses.dataclass(frozen=True)
class DataSettings:
  source: str  # builtin:NAME, text:GLOB, jsonl:GLOB, tfds:NAME[/CONFIG] or prepared:DIR
  seq_len: int  # tokens per packed row
  tokenizer: str = ''  # a SentencePiece .model file; '' trains one on the source (cached)
  eval_fraction: float = 0.02  # documents held out for evaluation, chosen by a hash of their text
  max_doc_chars: int = 100_000  # longer documents are split
  num_workers: int = 0  # grain worker processes reading batches
  allow_source_change: bool = False  # resume on rows other than the checkpoint's (a warning instead of an error)

  def __post_init__(self):
    scheme, sep, _ = str(self.source).partition(':')
    require(sep and scheme in SOURCE_SCHEMES, f'data.source: unknown scheme in {self.source!r} (known: '
            + ', '.join(f'{s}:' for s in SOURCE_SCHEMES) + ')')
    require(self.seq_len >= 2, f'data.seq_len: must be at least 2, got {self.seq_len}')
    require(0 <= self.eval_fraction < 1, f'data.eval_fraction: must be in [0, 1), got {self.eval_fraction}')
    require(self.max_doc_chars >= 1, f'data.max_doc_chars: must be >= 1, got {self.max_doc_chars}')
    require(self.num_workers >= 0, f'data.num_workers: must be >= 0, got {self.num_workers}')
    require(isinstance(self.allow_source_change, bool),
            f'data.allow_source_change: must be true or false, got {self.allow_source_change!r}')

  @property
  def prepared(self) -> bool:
    return self.source.startswith(f'{PREPARED}:')

  @classmethod
  def from_config(cls, data_cfg) -> 'DataSettings':
    """From config.data (a ConfigDict or dict); a missing field is an error naming it."""
    values = {}
    for field in dataclasses.fields(cls):
      require(field.name in data_cfg, f'data.{field.name}: missing from the config')
      values[field.name] = data_cfg[field.name]
    return cls(**values)
