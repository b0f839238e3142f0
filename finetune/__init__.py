"""GLUE fine-tuning from pretraining checkpoints (restores params only, through pretrain.runtime.checkpoint)."""
