"""Generation samples: answers to a list of prompts with the chat code's generation, through the chat template
only where the model was trained with it (a pretraining run never saw ChatML), with every decoding setting
explicit and recorded: a sample is only comparable to another produced the same way."""

import logging
from pathlib import Path

from tqdm.auto import tqdm

from ..chat.generation import SamplingParams, StopFlag, stream_answer
from ..chat.session import ChatSession
from ..errors import UsageError

logger = logging.getLogger(__name__)
DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time,",
    "Explain in one sentence why the sky is blue.",
    "대한민국의 수도는",
)


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file; an unreadable or empty file is a UsageError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise UsageError(f"--prompts {path}: cannot be read ({reason})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"--prompts {path}: no prompts (one per line)")
    return prompts


def use_chat_template(choice: str, run_mode: str | None, tokenizer) -> tuple[bool, str]:
    """(samples through the chat template?, why) for --chat_template auto|on|off.

    auto follows the run that made the model: off for pretraining (it never saw the template), on for SFT; a
    model without a training record uses its tokenizer's template when it has one (as chat.py does)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if choice == "on" and not has_template:
        raise UsageError("--chat_template on: the tokenizer has no chat template")
    if choice != "auto":
        return choice == "on", f"{choice} (--chat_template {choice})"
    if run_mode in ("pretrain", "sft"):
        on = run_mode == "sft" and has_template
        return on, f"{'on' if on else 'off'} (auto: a {run_mode} run)"
    why = f"auto: no training record; tokenizer template: {'yes' if has_template else 'no'}"
    return has_template, f"{'on' if has_template else 'off'} ({why})"


def sample_settings(params: SamplingParams, chat_template: str, decoding: str = "dynamic") -> dict:
    """What produced the samples, as results.json records it (and --compare checks)."""
    return {
        "chat_template": chat_template,
        "decoding": "greedy" if params.greedy else "sampling",
        "temperature": params.temperature,
        "top_k": params.top_k if not params.greedy else None,
        "top_p": params.top_p if not params.greedy else None,
        "repetition_penalty": params.repetition_penalty,
        "max_new_tokens": params.max_new_tokens,
        "seed": params.seed,
        "kv_cache": decoding,
    }


def generate_samples(
    model, tokenizer, prompts: list[str], params: SamplingParams, chat: bool, decoding: str = "dynamic"
) -> list[dict]:
    """[{"prompt", "text", "tokens", "seconds", "tokens_per_second"}], one prompt at a time for exact counts.

    With `chat` each prompt is one user turn (as chat.py sends it); without, plain continuation of the text.
    """
    context = getattr(model.config, "max_position_embeddings", 2048)
    session = ChatSession(tokenizer, context, params, raw=not chat)
    samples = []
    for prompt in tqdm(prompts, desc="samples", unit="prompt"):
        one_shot = session.one_shot_prompt(prompt)
        ids, sampling = one_shot.ids, session.sampling(one_shot)
        text, tokens, seconds = stream_answer(
            model, tokenizer, ids, sampling, StopFlag(), lambda _: None, decoding=decoding
        )
        rate = round(tokens / max(seconds, 1e-9), 2)
        samples.append(dict(prompt=prompt, text=text, tokens=tokens, seconds=round(seconds, 4), tokens_per_second=rate))
    total, elapsed = sum(s["tokens"] for s in samples), max(sum(s["seconds"] for s in samples), 1e-9)
    mode = "plain continuation" if session.raw else "chat template"
    logger.info("samples: %d answers, %d tokens, %.1f tokens/s (%s)", len(samples), total, total / elapsed, mode)
    return samples
