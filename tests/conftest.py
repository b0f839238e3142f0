"""Tests run on 8 fake CPU devices; the flag must be set before jax is imported anywhere.

Two tiers: `python -m pytest -m "not slow"` (the fast tier, while working) and the whole suite (README's test
command, what CI runs). Expensive material is made once per session and shared: the built-in corpus and the
tokenizers trained on it (one FLAX_PRETRAIN_CACHE for the session), and tiny pretraining checkpoints
(`checkpoints`, tests/checkpoint_fixtures.py). Which test covers which README claim: tests/README.md.
"""
import atexit
import os
import pathlib
import shutil
import tempfile

# The 8 fake devices are threads on (in CI) 2 cores: when the machine is busy a collective can wait for its
# threads longer than XLA's 40 s default, which aborts the process; give it 10 minutes.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
                           ' --xla_cpu_collective_call_terminate_timeout_seconds=600'
                           ' --xla_cpu_collective_timeout_seconds=600'
                           # LLVM at -O0: a third less compile time for the tiny programs, which run slightly slower
                           ' --xla_backend_optimization_level=0').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Most tests compile the same tiny programs (and every restart of a killed run compiles its program again): one
# persistent XLA compilation cache for the session, which the tests' subprocesses inherit. A hit returns the
# executable the same program compiled to before, so results do not change; compiling is most of a tiny run's time.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='flax-pretrain-tests-xla-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '-1'

import pytest  # noqa: E402

from tests.checkpoint_fixtures import CheckpointFactory  # noqa: E402


def _session_root(tmp_path_factory) -> pathlib.Path:
  """One folder for the whole run: under pytest-xdist (`-n 2`) every worker is a session of its own, and the
  workers share their basetemp's parent."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(autouse=True, scope='session')
def shared_cache(tmp_path_factory):
  """One corpus/tokenizer cache (FLAX_PRETRAIN_CACHE) for the whole run, never ~/.cache: the built-in
  corpus is extracted, and a tokenizer trained on it, once (the cache's writes are atomic renames, so two
  workers at worst both make the same file). Subprocesses inherit it through the environment."""
  path = _session_root(tmp_path_factory) / 'shared_cache'
  path.mkdir(exist_ok=True)
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('FLAX_PRETRAIN_CACHE', str(path))
    yield path


@pytest.fixture
def empty_cache(tmp_path_factory, monkeypatch):
  """An empty cache of its own, for a test that counts what gets cached."""
  path = tmp_path_factory.mktemp('empty_cache')
  monkeypatch.setenv('FLAX_PRETRAIN_CACHE', str(path))
  return path


@pytest.fixture(scope='session')
def checkpoints(tmp_path_factory, shared_cache) -> CheckpointFactory:
  """checkpoints(kind, steps=..., learning_rate=...) -> the workdir of a tiny pretraining run, made once per
  run (by whichever worker asks first; the other waits on its lock). Read only: a test that writes into a workdir
  copies it first."""
  del shared_cache  # the factory's runs use (and fill) the session cache
  root = _session_root(tmp_path_factory) / 'checkpoints'
  root.mkdir(exist_ok=True)
  return CheckpointFactory(root)


# The full suite only (marked `slow`; the fast tier is `pytest -m "not slow"`): node-id prefixes, each with the
# fast test that covers the same README claim (tests/README.md has the whole map).
SLOW = {
    'test_train.py::test_pretraining_learns_and_leaves_a_checkpoint_that_restores[llama]': '[mlm]',
    'test_train.py::test_the_command_trains_the_tiny_model': 'test_llama_model, test_modernbert_model (all); '
                                                             'test_pretraining_learns_...[mlm]',
    'test_sharding.py::test_sharded_training_equals_one_device[llama-data+fsdp+tensor]': '[llama-tensor]',
    'test_llama_conversion.py::test_finetuned_llama_exports_as_sequence_classification[stsb]': '[sst2]',
    'test_plan.py::test_planned_activations_per_layer_are_near_the_compiled_steps_for_llama[none]':
        '[dots_with_no_batch_dims]',
    'test_plan.py::test_llama_plan_says_when_the_kv_heads_are_replicated[2]': '[1]',
    'test_plan.py::test_planned_activations_per_layer_are_near_the_compiled_steps_for_modernbert':
        'test_planned_activations_..._for_llama[dots_with_no_batch_dims]',
    'test_plan.py::test_modernbert_plan_names_its_mlp': 'test_llama_plan_says_when_the_kv_heads_are_replicated[1]',
    'test_flops.py::test_flops_agree_with_xla_cost_analysis_of_the_compiled_step[modernbert]': '[mlm]',
    'test_modernbert_conversion.py::test_finetuned_modernbert_exports_as_sequence_classification[cls]': '[mean]',
    'test_modernbert_conversion.py::test_export_of_our_pretrained_modernbert': 'test_round_trips_give_back_...',
    'test_modernbert_finetune.py::test_the_pooled_transform_starts': 'test_modernbert_model: the classifier ...',
    'test_finetune.py::test_a_run_uses_the_auto_learning_rate': 'test_the_default_learning_rate_follows_the_...',
    'test_kill_resume.py::test_ten_random_sigkills': 'test_two_random_sigkills_...',
    'test_finetune.py::test_glue_script_runs_every_task': 'test_glue_script_on_two_tasks_...',
    'test_finetune.py::test_a_gpt2_step_dir_from_scratch': 'test_model: pooling; test_pre_redesign: fine-tunes',
    'test_finetune.py::test_finetuning_learns_a_learnable_task': 'test_cli_finetunes_sst2_...',
    'test_multiprocess.py::test_two_processes_train_like_one': 'test_multihost_faults: process 0 dies',
    'test_multiprocess.py::test_one_process_checkpoint_resumes': 'test_incomplete_cluster_flags_...',
    'test_multihost_faults.py::test_a_killed_process_stops': 'test_the_watchdog_condemns_a_silent_peer_...',
    'test_checkpoint_faults.py::test_a_failed_checkpoint_write': 'test_an_unwritable_workdir_is_rejected_...',
    'test_checkpoint_faults.py::test_when_no_checkpoint_restores': 'test_torn_and_truncated_checkpoints_...',
    'test_checkpoint_faults.py::test_tools_skip_a_step': 'test_torn_and_truncated_checkpoints_...',
    'test_minilm.py::test_finetuning_from_minilm': 'test_minilm_hidden_states_match_...',
    'test_train.py::test_cli_trains_the_clm_config': 'test_kill_resume: two SIGKILLs end bit-identical',
    'test_train.py::test_resume_continues_exactly': 'test_kill_resume: two SIGKILLs end bit-identical',
    'test_train.py::test_pretraining_learns_and_leaves_a_checkpoint_that_restores[clm]': '[mlm]',
    'test_train.py::test_resume_onto_another_mesh': 'test_finetune: test_cli_finetunes_sst2_... on (2, 2, 2)',
    'test_hf_import.py::test_imported_checkpoint_continues': 'test_minilm_hidden_states_match_...',
    'test_hf_conversion.py::test_export_matches_transformers_logits_and_tokenizer[init-': '[trained-...]',
    'test_hf_import.py::test_import_matches_transformers_logits[30-False-': '[0-True-...]',
    'test_sharding.py::test_sharded_training_equals_one_device[mlm-data]': '[mlm-data+fsdp+tensor]',
    'test_sharding.py::test_sharded_training_equals_one_device[mlm-fsdp]': '[mlm-data+fsdp+tensor]',
    'test_sharding.py::test_sharded_training_equals_one_device[mlm-tensor]': '[mlm-data+fsdp+tensor]',
    'test_sharding.py::test_sharded_training_equals_one_device[clm-': '[mlm-data+fsdp+tensor]',
    'test_sharding.py::test_gradient_accumulation_equals_one_step_on_the_whole_batch[mlm]': '[clm]',
    'test_bad_data.py::test_train_tokenizer_counts': 'test_sources: bad files are skipped and counted',
    'test_bad_data.py::test_pretrain_cli_skips': 'test_sources: bad files are skipped and counted',
    'test_bad_data.py::test_prepare_data_counts': 'test_sources: bad files are skipped and counted',
    'test_bad_settings.py::test_bad_setting_exits_2': 'test_train: test_cli_bad_input_exits_2_with_one_line',
    'test_sentence_pairs.py::test_pretraining_with_a_sentence_task': 'test_export_as_bert_for_pretraining_...',
    'test_sentence_pairs.py::test_sentence_task_gradient_accumulation': 'test_sharding: accumulation [clm]',
    'test_sentence_pairs.py::test_continued_pretraining_from_an_mlm_only': 'test_export_as_bert_for_...',
    'test_benchmark.py::test_figures_follow_from_the_median_step_and_the_flop_counter[clm]': '[mlm]',
    'test_nonfinite.py::test_a_nan_init_checkpoint': 'test_bad_steps_are_skipped_counted_...',
    'test_nonfinite.py::test_k_bad_steps_in_a_row': 'test_bad_steps_are_skipped_counted_...',
    'test_nonfinite.py::test_a_non_finite_step_changes_nothing': 'test_bad_steps_are_skipped_counted_...',
    'test_pre_redesign.py::test_an_old_pretraining_workdir': 'test_an_old_checkpoint_fine_tunes',
    'test_pre_redesign.py::test_per_step_losses_equal_the_pre_redesign_code[clm]': '[mlm]',
    'test_hf_conversion.py::test_export_matches_transformers_logits_and_tokenizer[trained-clm]': '[trained-mlm]',
    'test_plan.py::test_planned_state_is_the_real_states': 'test_cli_on_another_device_count_suggests_a_mesh...',
    'test_bench_input.py::test_stall_writes_checkpoints': 'test_benchmark: test_input_mode_reports_the_pipeline...',
    'test_multihost_faults.py::test_sigterm_to_one_process': 'test_kill_resume: test_sigterm_checkpoints_the_...',
    'test_multihost_faults.py::test_when_one_process_cannot_read': 'test_restore_errors: test_when_another_process_...',
    'test_nonfinite.py::test_a_non_finite_last_step': 'test_bad_steps_are_skipped_...: checkpoints after skipped steps',
    'test_loop_records.py::test_resuming_with_a_changed_schedule': 'test_schedule_change_names_only_the_...',
    'test_data_fingerprint.py::test_resuming_on_a_changed_corpus': 'test_iterator_state_resumes_only_on_the_same_rows',
    'test_finetune_faults.py::test_glue_rerun_after_more_pretraining': 'test_finetune: test_glue_script_on_two_...',
    'test_finetune_faults.py::test_glue_reruns_a_preempted_run': 'test_sigterm_keeps_the_best_finished_epoch_...',
    'test_attention_impl.py::test_pallas_gpu_equals_the_reference_in_interpret_mode[False-1]': '[True-2]',
    'test_attention_impl.py::test_splash_equals_the_reference_in_interpret_mode[True-True-1]': '[False-True-2]',
    'test_attention_impl.py::test_splash_equals_the_reference_in_interpret_mode[True-False-2]': '[False-True-2]',
    'test_attention_impl.py::test_the_whole_model_gives_the_reference_logits[modernbert-splash]': '[llama-...]',
    'test_attention_impl.py::test_a_training_run_rejects_splash_on_cpu': 'test_unsupported_combinations_name_...',
    'test_profiling.py::test_cli_writes_a_trace_of_the_profile_steps': 'test_the_trace_spans_the_steps_in_range',
    'test_token_heads_export.py::test_encoder_token_heads_export_and_match_transformers[modernbert': '[mlm-*]',
    'test_token_heads_export.py::test_decoder_token_heads_export': 'test_encoder_token_heads_export_...[mlm-*]',
    'test_token_tasks.py::test_ner_from_minilm': 'test_every_preset_fine_tunes_on_ner_and_squad[mlm], conll (all)',
    'test_token_tasks.py::test_squad_v2_from_minilm': 'test_every_preset_fine_tunes_on_ner_and_squad[mlm], squad (all)',
    'test_token_tasks.py::test_every_preset_fine_tunes_on_ner_and_squad[modernbert]': '[mlm]',
    'test_token_tasks.py::test_every_preset_fine_tunes_on_ner_and_squad[llama]': '[mlm]',
    'test_token_tasks.py::test_every_preset_fine_tunes_on_ner_and_squad[clm]': '[mlm]',
}


def _is_slow(nodeid: str) -> bool:
  return any(nodeid.removeprefix('tests/').startswith(prefix) for prefix in SLOW)


def pytest_collection_modifyitems(items):
  for prefix in SLOW:  # a renamed test must not silently move into the fast tier
    file, name = prefix.split('::')
    source = (pathlib.Path(__file__).parent / file).read_text()
    assert f'def {name.split("[")[0]}' in source, f'conftest.SLOW: {prefix} names no test'
  for item in items:
    if _is_slow(item.nodeid):
      item.add_marker(pytest.mark.slow)
