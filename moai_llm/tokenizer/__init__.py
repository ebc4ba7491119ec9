"""Tokenizer training, extension and evaluation on HuggingFace `tokenizers` (byte-level BPE by default)."""

from ..loading import SPECIAL_TOKENS, load_tokenizer  # their home is moai_llm.loading; kept for old imports
from .train import CHAT_TEMPLATE

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "load_tokenizer"]
