"""Tokenizer training, extension and evaluation on HuggingFace `tokenizers` (byte-level BPE by default)."""

from ..loading import load_tokenizer  # its home is moai_llm.loading; kept for `from moai_llm.tokenizer import`
from .train import CHAT_TEMPLATE, SPECIAL_TOKENS

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "load_tokenizer"]
