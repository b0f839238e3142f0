"""`python -m tools.launch tpu|slurm`: a pretraining job on a Cloud TPU slice (gcloud) or a SLURM cluster.

cli.py (the command), check.py (what is checked before anything is submitted), tpu.py and slurm.py (the commands
and the batch script).
"""
