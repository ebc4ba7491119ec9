"""MOAI-LLM: Qwen3-style causal language models on HuggingFace Transformers."""

__version__ = "0.1.0"
