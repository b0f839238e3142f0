"""`python -m tools.convert_checkpoint to-hf|from-hf`: checkpoints to and from Hugging Face Transformers.

cli.py (the command), mapping.py (our parameter tree <-> HF tensor names), export.py, importer.py,
tokenizer_files.py (tokenizers both ways), verify.py (`--verify`: outputs compared with transformers).
"""
