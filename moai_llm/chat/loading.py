"""Kept for imports of `ChatLoadError` from here; the model loader is `moai_llm.loading.load_model`."""

from ..loading import ChatLoadError

__all__ = ["ChatLoadError"]
