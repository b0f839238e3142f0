"""`python -m tools.benchmark`: the real train step's speed, MFU and memory, beside the Hugging Face peers.

cli.py (the command), step.py (ours), peers.py (HF Flax and PyTorch), pipeline.py (input pipeline and
checkpoint stall), timing.py (how every system is timed).
"""
