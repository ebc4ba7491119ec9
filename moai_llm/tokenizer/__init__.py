"""Tokenizer training, extension and evaluation on HuggingFace `tokenizers` (byte-level BPE by default); loading a
tokenizer is `moai_llm.loading.load_tokenizer`."""
