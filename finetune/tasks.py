"""The GLUE task table: files of the official GLUE directory layout, columns, labels, metrics, submissions.

The layout is what the standard GLUE download script writes (`SST-2/train.tsv`, `MNLI/dev_matched.tsv`,
...). Columns are named by the files' header row; CoLA's train/dev files have none, so its columns are
positions. `labels` None marks regression (STS-B).
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Task:
  name: str  # as users type it: sst2, mnli, ...
  directory: str  # GLUE_DIR/<directory>/
  text_columns: tuple[str | int, ...]  # one (single sentence) or two (pair) columns
  label_column: str | int | None
  labels: tuple[str, ...] | None  # class names as written in the files; None = regression
  metrics: tuple[str, ...]  # the first one is the task's headline metric
  dev_files: dict[str, str]  # result key -> file, e.g. {'dev_matched': 'dev_matched.tsv'}
  test_files: dict[str, str]  # leaderboard submission name -> file, e.g. {'MNLI-m': 'test_matched.tsv'}
  test_text_columns: tuple[str | int, ...] | None = None  # when test files name them differently
  headerless_train_dev: bool = False  # CoLA: train/dev rows are (source, label, original label, sentence)
  headerless_width: int = 4
  predicts_also: tuple[str, ...] = ()  # tasks with test files only, predicted by this task's model (mnli: ax)

  @property
  def is_regression(self) -> bool:
    return self.labels is None

  @property
  def num_labels(self) -> int:
    return 1 if self.labels is None else len(self.labels)


NLI3 = ('contradiction', 'entailment', 'neutral')
NLI2 = ('entailment', 'not_entailment')
DEV = {'dev': 'dev.tsv'}

TASKS = {t.name: t for t in (
    Task('cola', 'CoLA', (3,), 1, ('0', '1'), ('matthews_corrcoef', 'accuracy'), DEV, {'CoLA': 'test.tsv'},
         test_text_columns=('sentence',), headerless_train_dev=True),
    Task('sst2', 'SST-2', ('sentence',), 'label', ('0', '1'), ('accuracy',), DEV, {'SST-2': 'test.tsv'}),
    Task('mrpc', 'MRPC', ('#1 String', '#2 String'), 'Quality', ('0', '1'), ('f1', 'accuracy'), DEV,
         {'MRPC': 'test.tsv'}),
    Task('stsb', 'STS-B', ('sentence1', 'sentence2'), 'score', None, ('pearson', 'spearman'), DEV,
         {'STS-B': 'test.tsv'}),
    Task('qqp', 'QQP', ('question1', 'question2'), 'is_duplicate', ('0', '1'), ('f1', 'accuracy'), DEV,
         {'QQP': 'test.tsv'}),
    Task('mnli', 'MNLI', ('sentence1', 'sentence2'), 'gold_label', NLI3, ('accuracy',),
         {'dev_matched': 'dev_matched.tsv', 'dev_mismatched': 'dev_mismatched.tsv'},
         {'MNLI-m': 'test_matched.tsv', 'MNLI-mm': 'test_mismatched.tsv'}, predicts_also=('ax',)),
    Task('qnli', 'QNLI', ('question', 'sentence'), 'label', NLI2, ('accuracy',), DEV, {'QNLI': 'test.tsv'}),
    Task('rte', 'RTE', ('sentence1', 'sentence2'), 'label', NLI2, ('accuracy',), DEV, {'RTE': 'test.tsv'}),
    Task('wnli', 'WNLI', ('sentence1', 'sentence2'), 'label', ('0', '1'), ('accuracy',), DEV,
         {'WNLI': 'test.tsv'}),
    # The diagnostic set: predictions only, from an MNLI model (no training or dev data of its own).
    Task('ax', 'diagnostic', ('sentence1', 'sentence2'), None, NLI3, (), {}, {'AX': 'diagnostic.tsv'}),
)}
