"""Serve models over the OpenAI API, with a web chat page: a FastAPI app over a continuous-batching engine.

python serve.py --model_path outputs/pretrain-tiny/final_model     # then open http://127.0.0.1:8000/
"""

from .app import build_app
from .engine import MAX_BATCH_SIZE, BatchEngine, Failed, Finished, GenerationRequest, PromptLogprobs, TextDelta
from .registry import ModelRegistry, ServedModel, load_models, model_entries

__all__ = [
    "MAX_BATCH_SIZE",
    "BatchEngine",
    "Failed",
    "Finished",
    "GenerationRequest",
    "ModelRegistry",
    "PromptLogprobs",
    "ServedModel",
    "TextDelta",
    "build_app",
    "load_models",
    "model_entries",
]
