"""The models one server answers for: found from the command line, loaded once with the library's loader, each with
its name, context length, token limit and batching engine."""

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import TemplateError

from ..chat.session import chat_prompt_ids
from ..errors import UsageError
from ..loading import load_model
from .engine import MAX_BATCH_SIZE, BatchEngine
from .errors import APIError

logger = logging.getLogger(__name__)


def model_entries(model_paths: list[str], models_dir: str | None) -> list[tuple[str, Path]]:
    """(name, directory) for each `--model_path [NAME=]DIR` and each final_model under `--models_dir`. An unnamed
    `outputs/pretrain-tiny/final_model` is served as `pretrain-tiny`, any other directory by its own name."""
    entries = []
    for spec in model_paths:
        name, sep, path = spec.partition("=")
        if not sep or Path(spec).exists():
            name, path = "", spec
        resolved = Path(path).resolve()
        entries.append((name or (resolved.parent if resolved.name == "final_model" else resolved).name, Path(path)))
    if models_dir:
        root = Path(models_dir)
        if not root.is_dir():
            raise UsageError(f"--models_dir {models_dir}: no such directory")
        found = sorted(p for p in root.rglob("final_model") if (p / "config.json").is_file())
        if not found:
            raise UsageError(f"--models_dir {models_dir}: no final_model directory (with a config.json) under it")
        for path in found:
            relative = path.parent.relative_to(root).as_posix()
            entries.append((root.resolve().name if relative == "." else relative, path))
    if not entries:
        raise UsageError("no model to serve: pass --model_path DIR (repeatable) or --models_dir DIR")
    seen = {}
    for name, path in entries:
        if name in seen:
            raise UsageError(
                f"two models are both named {name!r} ({seen[name]} and {path}): name one with --model_path NAME=DIR"
            )
        seen[name] = path
    return entries


def run_mode(path: Path) -> str | None:
    """ "pretrain" or "sft" for a directory train.py wrote (its run_arguments.json, in the run directory above a
    final_model or checkpoint), "sft" for a LoRA adapter, None when unknown."""
    if (path / "adapter_config.json").is_file():
        return "sft"
    for run_dir in (path, path.parent):
        arguments = run_dir / "run_arguments.json"
        if arguments.is_file():
            try:
                return json.loads(arguments.read_text(encoding="utf-8"))["training"]["mode"]
            except (ValueError, KeyError, TypeError):
                return None
    return None


def longest_token_bytes(tokenizer) -> int:
    """The most UTF-8 bytes one token stands for (a prompt of B bytes has at least B / this many tokens). A byte-level
    BPE vocabulary writes each byte as one character."""
    byte_level = type(tokenizer.backend_tokenizer.decoder).__name__ == "ByteLevel"
    sizes = (len(piece) if byte_level else len(piece.encode("utf-8")) for piece in tokenizer.get_vocab())
    return max(sizes, default=1) or 1


@dataclass
class ServedModel:
    """A model the server answers for. `engine` is anything with `submit_all(list[GenerationRequest])`,
    `retry_after()` and `close()`; `mode` is what the chat page opens it in: "chat" or "completion"."""

    name: str
    tokenizer: object
    engine: object
    context_length: int
    max_tokens_limit: int
    mode: str = "chat"
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        self.bytes_per_token = longest_token_bytes(self.tokenizer)
        self.vocab_size = len(self.tokenizer)

    def check_text_length(self, texts: list[str], param: str) -> None:
        """Before tokenizing: a prompt with more bytes than the context could hold even at the longest token is
        refused at once (tokenizing megabytes would only confirm it)."""
        size = sum(len(t.encode("utf-8")) for t in texts)
        if size > self.context_length * self.bytes_per_token:
            message = (
                f"This model's maximum context length is {self.context_length} tokens; the prompt has {size} bytes, "
                f"at least {size // self.bytes_per_token} tokens."
            )
            raise APIError(400, message, param, "context_length_exceeded")

    def token_prompt(self, ids: list[int], param: str) -> list[int]:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise APIError(400, f"Token id {bad[0]} is not in the vocabulary (0..{self.vocab_size - 1}).", param)
        return ids

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, f"Model '{self.name}' has no chat template: use /v1/completions.", "messages")
        try:
            return chat_prompt_ids(self.tokenizer, messages)
        except TemplateError as err:
            raise APIError(400, f"The messages do not fit the chat template: {err}.", "messages") from None

    def text_prompt(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def check_max_tokens(self, requested: int | None) -> None:
        if requested is not None and requested > self.max_tokens_limit:
            message = (
                f"max_tokens is {requested}, above this server's limit of {self.max_tokens_limit} for '{self.name}'."
            )
            raise APIError(400, message, "max_tokens", "invalid_value")

    def max_new_tokens(self, prompt_tokens: int, requested: int | None, prompt_param: str) -> int:
        """The tokens to generate (after `check_max_tokens`); a 400 naming the parameter when the request cannot
        fit."""
        if prompt_tokens == 0:
            raise APIError(400, "The prompt is empty.", prompt_param, "invalid_value")
        room = self.context_length - prompt_tokens
        if room < 1 or (requested is not None and requested > room):
            asked = requested or 1
            message = (
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{prompt_tokens + asked} tokens ({prompt_tokens} in the prompt, {asked} for the completion)."
            )
            raise APIError(400, message, prompt_param, "context_length_exceeded")
        return requested if requested is not None else min(room, self.max_tokens_limit)

    def card(self) -> dict:
        """The model's `/v1/models` entry (OpenAI's fields, plus vLLM's max_model_len)."""
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "moai-llm",
            "max_model_len": self.context_length,
            "max_tokens_limit": self.max_tokens_limit,
            "mode": self.mode,
        }


class ModelRegistry:
    def __init__(self, models: list[ServedModel]):
        self.models = {m.name: m for m in models}

    def get(self, name: str | None) -> ServedModel:
        """The model named (or the only one served); a 400 or 404 naming the models served otherwise."""
        if name is None and len(self.models) == 1:
            return next(iter(self.models.values()))
        served = ", ".join(self.models)
        if name is None:
            message = f"Missing required parameter: 'model' (one of: {served})."
            raise APIError(400, message, "model", "missing_required_parameter")
        if name not in self.models:
            raise APIError(404, f"The model '{name}' does not exist (served: {served}).", "model", "model_not_found")
        return self.models[name]

    def close(self) -> None:
        for served in self.models.values():
            served.engine.close()


def load_models(
    entries: list[tuple[str, Path]],
    max_batch_size: int = MAX_BATCH_SIZE,
    max_tokens: int = 4096,
    device: str | None = None,
    max_prefill_tokens: int = 4096,
    max_waiting: int = 256,
) -> ModelRegistry:
    """Load every model (a UsageError names a bad directory) and start its engine."""
    served = []
    for name, path in entries:
        model, tokenizer = load_model(str(path), device=device)
        engine = BatchEngine(model, tokenizer, max_batch_size, name, max_prefill_tokens, max_waiting)
        mode = run_mode(Path(path)) or ("sft" if getattr(tokenizer, "chat_template", None) else "pretrain")
        page = "chat" if mode == "sft" else "completion"
        limit = min(max_tokens, engine.context_length)
        served.append(ServedModel(name, tokenizer, engine, engine.context_length, limit, page))
        logger.info(
            "serving %s from %s (context %d, batch up to %d)", name, path, engine.context_length, engine.max_batch_size
        )
    return ModelRegistry(served)
