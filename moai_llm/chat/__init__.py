"""Chat with a trained model: loading, sessions with history, streamed and batched generation."""

from ..loading import ChatLoadError
from .generation import DECODINGS, SamplingParams, StopFlag, batch_answers, stream_answer
from .session import ChatSession

__all__ = [
    "DECODINGS",
    "ChatLoadError",
    "ChatSession",
    "SamplingParams",
    "StopFlag",
    "batch_answers",
    "stream_answer",
]
