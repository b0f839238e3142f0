"""GLUE fine-tuning from pretraining checkpoints: tasks.py (the task table), data.py and tfds_glue.py (readers),
features.py (tokenising), checks.py, steps.py, train.py (run), metrics.py, outputs.py, glue.py (the benchmark over
tasks and seeds). The model is pretrain.model.heads.Classifier; the state layout comes from pretrain.trainer."""
