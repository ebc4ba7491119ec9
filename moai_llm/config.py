"""The old tool's import path, `from moai_llm.config import MoaiConfig`; the class lives in configuration_moai.py.

transformers' layout (`configuration_<model>.py` next to `modeling_<model>.py`) is what `save_pretrained` ships as
remote code, so the class stays there and this module only re-exports it.
"""

from .configuration_moai import MoaiConfig

__all__ = ["MoaiConfig"]
