"""The model in one place: config.py (ModelConfig: the architecture as fields, with roles), presets.py (bert,
gpt2), layers.py, attention.py, transformer.py, heads.py (LanguageModel, Classifier), flops.py, hf_config.py
(config.json both ways), load.py (any checkpoint -> model)."""
