"""Chat with a trained model: loading, sessions with history, streamed and batched generation."""

from .generation import SamplingParams, StopFlag, batch_answers, stream_answer
from .loading import ChatLoadError, load_for_chat
from .session import ChatSession, Prompt

__all__ = [
    "ChatLoadError",
    "ChatSession",
    "Prompt",
    "SamplingParams",
    "StopFlag",
    "batch_answers",
    "load_for_chat",
    "stream_answer",
]
