"""OpenAI request bodies, validated strictly: a wrong type is a 400, never coerced. OpenAI's own fields are
accepted at every value the server can honour (those it does not use are logged, once per field), and refused with
a 400 naming the field at values it cannot honour; a field OpenAI does not have is refused."""

import logging
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..chat.generation import SamplingParams
from .errors import APIError

logger = logging.getLogger(__name__)

MAX_STOP_CHARS = 256  # per stop string: the held-back check runs on the engine thread for every token
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat (its legacy completions allow 5)
MAX_PROMPTS = 128  # prompts in one /v1/completions request
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
_logged_fields: set[str] = set()


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    IGNORED: ClassVar[tuple[str, ...]] = ()  # OpenAI fields accepted and not used
    ONLY: ClassVar[dict[str, tuple[tuple, str]]] = {}  # OpenAI fields honoured at these values only: (values, why)

    @field_validator("*")
    @classmethod
    def _honoured(cls, value, info: ValidationInfo):
        rule = cls.ONLY.get(info.field_name)
        if rule is not None and value not in rule[0]:
            raise ValueError(rule[1])
        return value

    @model_validator(mode="after")
    def _log_ignored(self):
        """Accepted fields the server does not use: logged at info the first time each is seen, then at debug."""
        for name in [n for n in self.IGNORED if n in self.model_fields_set]:
            level = logging.DEBUG if name in _logged_fields else logging.INFO
            _logged_fields.add(name)
            logger.log(level, "request field %s=%r accepted and ignored", name, getattr(self, name))
        return self


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict] | None = None
    function_call: dict | None = None
    refusal: str | None = None
    audio: dict | None = None
    IGNORED = ("name", "refusal")
    ONLY = {
        "tool_calls": ((None, []), "tool calls are not supported (only an empty list)"),
        "function_call": ((None,), "not supported (only null)"),
        "audio": ((None,), "not supported (only null)"),
    }

    def as_template_input(self) -> dict:
        content = self.content or ""
        text = content if isinstance(content, str) else "".join(part.text for part in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool | None = None  # vLLM's
    include_obfuscation: bool | None = None  # OpenAI's padding against length side channels: nothing to pad here
    IGNORED = ("continuous_usage_stats", "include_obfuscation")


class ResponseFormat(_Strict):
    type: Literal["text"]  # json_object / json_schema would need constrained decoding


class _Generation(_Strict):
    """Fields shared by chat and text completions. Extensions (vLLM's names): top_k, repetition_penalty, ignore_eos."""

    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = Field(None)  # validated into a list
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool | None = False
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # OpenAI's end-user id for abuse monitoring
    store: bool | None = None  # nothing is stored
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    IGNORED = ("user", "store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier")
    ONLY = {
        "n": ((None, 1), "only n=1 is supported"),
        "presence_penalty": ((None, 0), "not supported (use repetition_penalty)"),
        "frequency_penalty": ((None, 0), "not supported (use repetition_penalty)"),
        "logit_bias": ((None, {}), "not supported (only an empty object)"),
    }

    @field_validator("stop")
    @classmethod
    def _stop(cls, value) -> list[str]:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return stops

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling(self, max_new_tokens: int) -> SamplingParams:
        """OpenAI's defaults (temperature 1, top_p 1, no top-k, no repetition penalty); temperature 0 is greedy."""
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0),
            repetition_penalty=self.repetition_penalty or 1.0,
            max_new_tokens=max_new_tokens,
            seed=self.seed,
        )


class ChatCompletionRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict] | None = None
    function_call: str | dict | None = None
    modalities: list[str] | None = None
    IGNORED = (*_Generation.IGNORED, "parallel_tool_calls", "response_format")
    ONLY = {
        **_Generation.ONLY,
        "tools": ((None, []), "tools are not supported (only an empty list)"),
        "functions": ((None, []), "tools are not supported (only an empty list)"),
        "tool_choice": ((None, "none", "auto"), "only 'none' is supported (no tools)"),
        "function_call": ((None, "none", "auto"), "only 'none' is supported (no tools)"),
        "modalities": ((None, ["text"]), "only ['text'] is supported"),
    }

    def check(self) -> None:
        """Rules across fields (a 400 naming one of them)."""
        for i, message in enumerate(self.messages):
            if message.content is None and message.role != "assistant":
                raise APIError(
                    400, f"A {message.role} message needs content.", f"messages.{i}.content", "invalid_value"
                )
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true.", "top_logprobs", "invalid_value")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_k(self) -> int | None:
        """None: no log-probabilities; k: the chosen token's and the k most likely ones per position."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]  # validated into a list of prompts
    max_tokens: int | None = Field(None, ge=0)  # 0 with echo: score the prompt only
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None
    ONLY = {
        **_Generation.ONLY,
        "best_of": ((None, 1), "only best_of=1 is supported"),
        "suffix": ((None, ""), "not supported (no fill-in-the-middle)"),
    }

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value) -> list[str | list[int]]:
        """The prompts, each a string or token ids."""
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            return [value]
        if not value:
            raise ValueError("the prompt list is empty")
        if len(value) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return value

    def check(self) -> None:
        if self.max_tokens == 0 and not self.echo:
            raise APIError(400, "max_tokens=0 needs echo: true.", "max_tokens", "invalid_value")

    def logprobs_k(self) -> int | None:
        return self.logprobs
