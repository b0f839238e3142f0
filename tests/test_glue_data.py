"""Reading the official GLUE directory layout: every task's train/dev/test files, labels and malformed rows."""
import dataclasses

import numpy as np
import pytest

from finetune import data
from finetune.tasks import TASKS
from pretrain.runtime.errors import ConfigError

# Header and two rows per file, as the standard GLUE download script writes them.
FILES = {
    'CoLA/train.tsv': ["gj04\t1\t\tOur friends won't buy this analysis.", "gj04\t0\t*\tThey drank the pub."],
    'CoLA/test.tsv': ['index\tsentence', '0\tBill whistled past the house.'],
    'SST-2/dev.tsv': ['sentence\tlabel', "it 's a charming journey . \t1", 'unflinchingly bleak \t0'],
    'MRPC/dev.tsv': ['Quality\t#1 ID\t#2 ID\t#1 String\t#2 String', '1\t1\t2\tHe said .\tHe stated .',
                     '0\t3\t4\tA cat .\tA dog .'],
    'STS-B/dev.tsv': ['index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore',
                      '0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man plays.\tA man is playing.\t5.000',
                      '1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA cat.\tA plane.\t0.250'],
    'QQP/train.tsv': ['id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate', '1\t1\t2\tHow?\tWhy?\t0',
                      '2\t3\t4\tbroken line without enough columns', '3\t5\t6\tWhat is AI?\tDefine AI?\t1'],
    'QQP/test.tsv': ['id\tquestion1\tquestion2', '0\tWho?\tWhom?'],
    'MNLI/dev_matched.tsv': [
        'index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t'
        'sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label',
        '0\t1\t1e\tslate\t(a)\t(b)\t(A)\t(B)\tThe cat sat.\tA cat sat.\tentailment\tentailment\tentailment'
        '\tentailment\tentailment\tentailment',
        '1\t2\t2n\tslate\t(a)\t(b)\t(A)\t(B)\tIt rained.\tNo rain.\tcontradiction\tneutral\tcontradiction'
        '\tcontradiction\tcontradiction\tcontradiction'],
    'QNLI/dev.tsv': ['index\tquestion\tsentence\tlabel', '0\tWho ran?\tBob ran.\tentailment',
                     '1\tWho sang?\tBob ran.\tnot_entailment'],
    'diagnostic/diagnostic.tsv': ['index\tsentence1\tsentence2', '0\tThe cat sat.\tThe cat did not sit.'],
}


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  path = tmp_path_factory.mktemp('glue')
  for name, lines in FILES.items():
    (path / name).parent.mkdir(parents=True, exist_ok=True)
    (path / name).write_text('\n'.join(lines) + '\n')
  return path


def test_single_sentence_tasks_with_and_without_header(root):
  cola = data.read_split(root, TASKS['cola'], 'train.tsv', with_labels=True)
  assert cola.texts == [("Our friends won't buy this analysis.",), ('They drank the pub.',)]
  np.testing.assert_array_equal(cola.labels, [1, 0])
  cola_test = data.read_split(root, TASKS['cola'], 'test.tsv', with_labels=False)
  assert cola_test.texts == [('Bill whistled past the house.',)] and cola_test.labels is None
  assert cola_test.indices == ['0']
  sst2 = data.read_split(root, TASKS['sst2'], 'dev.tsv', with_labels=True)
  np.testing.assert_array_equal(sst2.labels, [1, 0])


def test_pair_tasks_classes_and_regression(root):
  mrpc = data.read_split(root, TASKS['mrpc'], 'dev.tsv', with_labels=True)
  assert mrpc.texts[0] == ('He said .', 'He stated .') and list(mrpc.labels) == [1, 0]
  stsb = data.read_split(root, TASKS['stsb'], 'dev.tsv', with_labels=True)
  assert stsb.labels.dtype == np.float32 and list(stsb.labels) == [5.0, 0.25]
  mnli = data.read_split(root, TASKS['mnli'], TASKS['mnli'].dev_files['dev_matched'], with_labels=True)
  assert mnli.texts[1] == ('It rained.', 'No rain.')
  assert [TASKS['mnli'].labels[i] for i in mnli.labels] == ['entailment', 'contradiction']
  qnli = data.read_split(root, TASKS['qnli'], 'dev.tsv', with_labels=True)
  assert list(qnli.labels) == [0, 1]
  ax = data.read_split(root, TASKS['ax'], 'diagnostic.tsv', with_labels=False)
  assert ax.indices == ['0'] and ax.texts == [('The cat sat.', 'The cat did not sit.')]


def test_malformed_rows_are_skipped_and_reported_by_line_up_to_a_fraction(root, caplog):
  qqp = data.read_split(root, TASKS['qqp'], 'train.tsv', with_labels=True, max_malformed_fraction=0.5)
  assert qqp.skipped == 1 and qqp.texts == [('How?', 'Why?'), ('What is AI?', 'Define AI?')]
  assert 'QQP/train.tsv: 1 malformed rows, expected 6 tab-separated fields: line 3 (4 fields)' in caplog.text
  with pytest.raises(ConfigError, match=r'QQP/train\.tsv: 1 malformed rows, .*line 3 \(4 fields\) \(more than '
                                        r'data\.max_malformed_fraction=0\.001\)'):
    data.read_split(root, TASKS['qqp'], 'train.tsv', with_labels=True)
  qqp_test = data.read_split(root, TASKS['qqp'], 'test.tsv', with_labels=False)
  assert qqp_test.indices == ['0']


def test_a_label_outside_the_task_set_names_file_and_line(tmp_path):
  (tmp_path / 'RTE').mkdir()
  (tmp_path / 'RTE' / 'dev.tsv').write_text('index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n'
                                            '1\tC.\tD.\tcontradiction\n')
  with pytest.raises(ConfigError, match=r"RTE/dev\.tsv:3: label 'contradiction' is not one of rte labels"):
    data.read_split(tmp_path, TASKS['rte'], 'dev.tsv', with_labels=True)
  (tmp_path / 'STS-B').mkdir()
  (tmp_path / 'STS-B' / 'dev.tsv').write_text('sentence1\tsentence2\tscore\nA.\tB.\tfive\n')
  with pytest.raises(ConfigError, match=r"STS-B/dev\.tsv:2: label 'five' is not a number"):
    data.read_split(tmp_path, TASKS['stsb'], 'dev.tsv', with_labels=True)


def test_a_file_with_the_wrong_columns_is_an_error(tmp_path):
  (tmp_path / 'CoLA').mkdir()
  (tmp_path / 'CoLA' / 'train.tsv').write_text('1\tA sentence without source columns.\n' * 3)
  with pytest.raises(ConfigError, match=r'CoLA/train\.tsv: 3 malformed rows, expected 4 tab-separated fields: '
                                        r'line 1 \(2 fields\), line 2'):
    data.read_split(tmp_path, TASKS['cola'], 'train.tsv', with_labels=True)


def test_missing_files_and_columns_are_named(root, tmp_path):
  with pytest.raises(ConfigError, match=r'RTE/dev\.tsv: missing'):
    data.read_split(root, TASKS['rte'], 'dev.tsv', with_labels=True)
  with pytest.raises(ConfigError, match=r"no column 'question' in the header"):
    data.read_split(root, dataclasses.replace(TASKS['qnli'], directory='SST-2'), 'dev.tsv', with_labels=True)
  with pytest.raises(ConfigError, match=r"data\.source: expected 'glue_dir:PATH'"):
    data.glue_dir('tfds:glue/sst2')
  with pytest.raises(ConfigError, match='does not exist'):
    data.glue_dir(f'glue_dir:{tmp_path}/nope')
  assert data.glue_dir(f'glue_dir:{root}') == root


def test_every_task_is_in_the_table():
  assert set(TASKS) == {'cola', 'sst2', 'mrpc', 'stsb', 'qqp', 'mnli', 'qnli', 'rte', 'wnli', 'ax'}
  assert TASKS['stsb'].is_regression and TASKS['mnli'].num_labels == 3
  assert set(TASKS['mnli'].dev_files) == {'dev_matched', 'dev_mismatched'}
