"""tools.generate, tools.fill_mask and tools.export_embeddings on tiny checkpoints of the real trainer,
checked against Hugging Face transformers (on the exported model) and gensim."""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.model import load as model_load
from tools import export_embeddings
from tools import fill_mask
from tools import generate
from tools.convert_checkpoint.export import export

REPO = pathlib.Path(__file__).resolve().parents[1]
LENGTH = 24  # prompt + new tokens in the generate tests: one KV cache size, so one decode compilation


def _with_hf_export(workdir, tmp_path_factory, name):
  hf_dir = tmp_path_factory.mktemp('hf') / name
  export(str(workdir), str(hf_dir))
  return workdir, model_load.load_checkpoint(str(workdir)), hf_dir


@pytest.fixture(scope='module')
def clm(checkpoints, tmp_path_factory):
  """(workdir, loaded checkpoint, its Hugging Face export) of the session's trained tiny gpt2."""
  return _with_hf_export(checkpoints.trained('clm'), tmp_path_factory, 'clm')


@pytest.fixture(scope='module')
def mlm(checkpoints, tmp_path_factory):
  return _with_hf_export(checkpoints.trained('mlm'), tmp_path_factory, 'mlm')


@pytest.fixture(scope='module')
def gpt2_hf(clm):
  import transformers  # pylint: disable=import-outside-toplevel
  return transformers.GPT2LMHeadModel.from_pretrained(clm[2]).eval()


def prompt_ids(loaded, text: str) -> list[int]:
  return [loaded.tokenizer.cls_id] + loaded.tokenizer.encode(text)


def hf_logits(model, ids: list[int]) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize('text', ['The function returns', 'import os\nx = '])
def test_greedy_matches_transformers(clm, gpt2_hf, text):
  import torch  # pylint: disable=import-outside-toplevel
  _, loaded, _ = clm
  tok = loaded.tokenizer
  ids = prompt_ids(loaded, text)
  ours = generate.generate(loaded, ids, LENGTH - len(ids), stop_id=tok.sep_id)
  theirs = gpt2_hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=LENGTH - len(ids), do_sample=False, eos_token_id=tok.sep_id,
                            pad_token_id=tok.pad_id)[0, len(ids):].tolist()
  assert ours == theirs
  # Decoding stops at stop_id, which ends the new ids.
  assert generate.generate(loaded, ids, LENGTH - len(ids), stop_id=ours[0]) == [ours[0]]


def test_sampling_is_seeded_and_filtered(clm, gpt2_hf):
  _, loaded, _ = clm
  ids = prompt_ids(loaded, 'The function returns')
  n = LENGTH - len(ids)
  sample = lambda **kw: generate.generate(loaded, ids, n, temperature=1.0, **kw)
  first = sample(top_k=5, seed=0)
  assert first == sample(top_k=5, seed=0)
  assert first != sample(top_k=5, seed=1)
  # Every sampled token is among the 5 most likely ones (by transformers) after its prefix.
  logits_tv = hf_logits(gpt2_hf, ids + first)
  for t, token in enumerate(first):
    row_v = logits_tv[len(ids) - 1 + t]
    assert row_v[token] >= np.sort(row_v)[-5] - 1e-4, (t, token)
  # Replaying the sampling on transformers' logits (same filters, same keys) picks the same tokens.
  settings = {'temperature': 0.7, 'top_k': 20, 'top_p': 0.95, 'seed': 4}
  sampled = generate.generate(loaded, ids, n, **settings)
  logits_tv = hf_logits(gpt2_hf, ids + sampled)
  key = jax.random.key(settings['seed'])
  for i, token in enumerate(sampled):
    t = len(ids) - 1 + i
    filtered_v = generate.filter_logits(jnp.asarray(logits_tv[t]) / settings['temperature'],
                                        jnp.int32(settings['top_k']), jnp.float32(settings['top_p']))
    assert int(jax.random.categorical(jax.random.fold_in(key, t), filtered_v)) == token, (i, sampled)
  greedy = generate.generate(loaded, ids, n)
  assert sample(top_k=1, seed=3) == greedy
  assert sample(top_p=1e-6, seed=3) == greedy  # a nucleus of one token
  assert len(set(sample(seed=3))) > 1  # plain sampling is not greedy


def test_filter_logits():
  logits_v = jnp.log(jnp.asarray([0.15, 0.5, 0.05, 0.3]))
  kept = lambda top_k, top_p: np.isfinite(generate.filter_logits(logits_v, jnp.int32(top_k), jnp.float32(top_p)))
  assert kept(0, 1.0).tolist() == [True, True, True, True]
  assert kept(3, 1.0).tolist() == [True, True, False, True]
  assert kept(1, 1.0).tolist() == [False, True, False, False]
  assert kept(0, 0.7).tolist() == [False, True, False, True]  # the fewest tokens reaching 0.7: 0.5 + 0.3
  assert kept(0, 0.5).tolist() == [False, True, False, False]
  assert kept(0, 0.81).tolist() == [True, True, False, True]
  assert kept(2, 0.9).tolist() == [False, True, False, True]  # top-k first, then the nucleus of the rest
  np.testing.assert_array_equal(generate.filter_logits(logits_v, jnp.int32(0), jnp.float32(1.0)), logits_v)


def test_generate_cli(clm, mlm, capsys):
  workdir, loaded, _ = clm
  ids = prompt_ids(loaded, 'The function returns')
  argv = ['--checkpoint', str(workdir), '--prompt', 'The function returns', '--max_new_tokens',
          str(LENGTH - len(ids)), '--temperature', '0.8', '--top_p', '0.9', '--seed', '2']
  assert generate.main(argv) == 0
  out = capsys.readouterr().out
  new_ids = generate.generate(loaded, ids, LENGTH - len(ids), 0.8, 0, 0.9, 2, stop_id=loaded.tokenizer.sep_id)
  assert out == loaded.tokenizer.decode(ids + new_ids) + '\n'
  assert out.startswith('The function returns') and len(out) > len('The function returns\n')
  # Bad flags fail before the checkpoint is read (this one does not exist), naming the flag.
  for flag, value in [('--temperature', '-1'), ('--top_p', '0'), ('--top_p', '1.5'), ('--top_k', '-2')]:
    assert generate.main(['--checkpoint', '/no/such/ckpt', '--prompt', 'x', flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {flag}:') and err.count('\n') == 1, err
  assert generate.main(['--checkpoint', str(workdir), '--prompt', 'x', '--max_new_tokens', '64']) == 2
  assert capsys.readouterr().err.startswith('error: --max_new_tokens:')
  # A bert checkpoint, through `python -m`: exit status 2, one line naming --checkpoint.
  proc = subprocess.run([sys.executable, '-m', 'tools.generate', '--checkpoint', str(mlm[0]), '--prompt', 'x'],
                        cwd=REPO, env={**os.environ, 'PYTHONPATH': str(REPO)}, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith('error: --checkpoint:') and 'gpt2' in errors[0], proc.stderr
  assert proc.stdout == ''


def test_fill_mask_matches_transformers(mlm, capsys):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  workdir, loaded, hf_dir = mlm
  tok = loaded.tokenizer
  text = 'The [MASK] returns a [MASK].'
  assert fill_mask.main(['--checkpoint', str(workdir), '--top_k', '3', text]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [line for line in lines if line.startswith('[MASK]')] == ['[MASK] 1:', '[MASK] 2:']
  assert len(lines) == 2 * (1 + 3)
  ours = fill_mask.fill_mask(loaded, text, top_k=3)
  ids, positions = fill_mask.token_ids(tok, text)
  assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and [ids[p] for p in positions] == [tok.mask_id] * 2
  model = transformers.BertForMaskedLM.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    logits_tv = model(torch.tensor([ids])).logits[0, :, :tok.vocab_size]
  probs_tv = torch.softmax(logits_tv, -1).numpy()
  assert len(ours) == 2
  for rows, position in zip(ours, positions):
    assert len(rows) == 3
    token_ids = [i for i, _, _ in rows]
    np.testing.assert_allclose([p for _, _, p in rows], probs_tv[position, token_ids], atol=1e-4)
    assert abs(rows[0][2] - probs_tv[position].max()) < 1e-4
    assert [piece for _, piece, _ in rows] == [tok.id_to_piece(i) for i in token_ids]
    assert any(f'{rows[0][2]:.4f}' in line and repr(rows[0][1]) in line for line in lines)


def test_fill_mask_errors(clm, mlm, capsys):
  assert fill_mask.main(['--checkpoint', str(mlm[0]), 'no mask here']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: text:') and '[MASK]' in err and err.count('\n') == 1
  assert fill_mask.main(['--checkpoint', str(clm[0]), 'a [MASK]']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: --checkpoint:') and 'causal' in err and err.count('\n') == 1


def test_export_embeddings_reads_in_gensim(clm, tmp_path, capsys):
  from gensim.models import KeyedVectors  # pylint: disable=import-outside-toplevel
  workdir, loaded, _ = clm
  tok = loaded.tokenizer
  out = tmp_path / 'emb.vec'
  assert export_embeddings.main(['--checkpoint', str(workdir), '--out', str(out)]) == 0
  assert capsys.readouterr().out == f'wrote {out}: {tok.vocab_size} rows x 64 dims (word2vec text)\n'
  assert [p.name for p in tmp_path.iterdir()] == ['emb.vec']  # no temporary left behind
  kv = KeyedVectors.load_word2vec_format(str(out), binary=False)
  assert len(kv) == tok.vocab_size and kv.vector_size == loaded.model_cfg.hidden_size
  table_vd = np.asarray(loaded.params['encoder']['token_embed'])
  for i in (tok.cls_id, tok.encode('the')[0], tok.vocab_size - 1):
    np.testing.assert_allclose(kv[tok.id_to_piece(i)], table_vd[i], atol=1e-6)
    assert kv.key_to_index[tok.id_to_piece(i)] == i


def test_word_names_are_unique_and_whitespace_free(tmp_path):
  import tokenizers  # pylint: disable=import-outside-toplevel
  from pretrain.data.hf_tokenizer import HfTokenizer  # pylint: disable=import-outside-toplevel
  pieces = ['[UNK]', '[CLS]', '[SEP]', 'a b', 'a<0x20>b', '\t', '<0x09>', 'x\u3000y', 'Ġok', 'é']
  model = tokenizers.models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token='[UNK]')
  tok = HfTokenizer(tokenizers.Tokenizer(model).to_str(), {'unk': '[UNK]', 'cls': '[CLS]', 'sep': '[SEP]'})
  names = export_embeddings.word_names(tok)
  assert len(names) == len(set(names)) == len(pieces)
  assert not any(ch.isspace() for name in names for ch in name)
  assert names[3] == 'a<0x20>b' and names[4] == 'a<0x20>b<id:4>' and names[5] == '<0x09>'
  assert names[6] == '<0x09><id:6>' and names[7] == 'x<U+3000>y' and names[8:] == ['Ġok', 'é']
  vectors_nd = np.arange(len(pieces) * 2, dtype=np.float32).reshape(-1, 2) / 7
  export_embeddings.write_word2vec(tmp_path / 'w.vec', names, vectors_nd)
  from gensim.models import KeyedVectors  # pylint: disable=import-outside-toplevel
  kv = KeyedVectors.load_word2vec_format(str(tmp_path / 'w.vec'), binary=False)
  assert kv.index_to_key == names
  np.testing.assert_array_equal(kv.vectors, vectors_nd)  # %.9g round-trips float32 exactly
