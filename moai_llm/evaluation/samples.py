"""Generation samples: answers to a list of prompts with the chat code's generation (chat template when present)."""

import logging
from pathlib import Path

from tqdm.auto import tqdm

from ..chat.generation import SamplingParams, StopFlag, stream_answer
from ..chat.session import ChatSession
from .suites import EvalUsageError

logger = logging.getLogger(__name__)
DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time,",
    "Explain in one sentence why the sky is blue.",
    "대한민국의 수도는",
)


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file; an unreadable or empty file is an EvalUsageError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise EvalUsageError(f"--prompts {path}: cannot be read ({reason})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise EvalUsageError(f"--prompts {path}: no prompts (one per line)")
    return prompts


def generate_samples(model, tokenizer, prompts: list[str], params: SamplingParams) -> list[dict]:
    """[{"prompt", "text", "tokens", "seconds", "tokens_per_second"}], one prompt at a time for exact counts.

    With a chat template each prompt is one user turn (as chat.py sends it); without one, plain continuation.
    """
    context = getattr(model.config, "max_position_embeddings", 2048)
    session = ChatSession(tokenizer, context, params)
    samples = []
    for prompt in tqdm(prompts, desc="samples", unit="prompt"):
        one_shot = session.one_shot_prompt(prompt)
        text, tokens, seconds = stream_answer(
            model, tokenizer, one_shot.ids, session.sampling(one_shot), StopFlag(), lambda piece: None
        )
        samples.append(
            {
                "prompt": prompt,
                "text": text,
                "tokens": tokens,
                "seconds": round(seconds, 4),
                "tokens_per_second": round(tokens / max(seconds, 1e-9), 2),
            }
        )
    total_tokens = sum(s["tokens"] for s in samples)
    total_seconds = sum(s["seconds"] for s in samples)
    logger.info(
        "samples: %d answers, %d tokens, %.1f tokens/s (%s)",
        len(samples),
        total_tokens,
        total_tokens / max(total_seconds, 1e-9),
        "chat template" if not session.raw else "plain continuation",
    )
    return samples
