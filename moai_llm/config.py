"""`from moai_llm.config import MoaiConfig`: the old moai-llm import path (its YaRN example used it).

The class lives in `configuration_moai.py`, the file name transformers expects for remote code.
"""

from .configuration_moai import MoaiConfig

__all__ = ["MoaiConfig"]
