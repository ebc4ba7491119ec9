"""OpenAI response objects: `chat.completion` and `text_completion`, whole or as stream chunks, one choice per
prompt, with log-probabilities when asked for."""

import time
import uuid

from .logprobs import CompletionLogprobs, chat_logprobs, token_text


class ResponseShape:
    """Builds one request's response objects. `logprobs` (None or k) says whether choices carry log-probabilities;
    each completion choice keeps its own text offsets across chunks."""

    def __init__(self, chat: bool, model: str, tokenizer=None, logprobs: int | None = None, choices: int = 1):
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.with_logprobs = logprobs is not None
        if self.with_logprobs:
            self.text_of = token_text(tokenizer)
            self.offsets = [CompletionLogprobs(tokenizer, self.text_of) for _ in range(choices)]

    def _object(self, kind: str, choices: list, **extra) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def logprobs(self, index: int, entries: list | None, tokens: list[int] | None = None) -> dict | None:
        """`choices[index].logprobs` for these tokens' entries (None entries: echoed prompt tokens without one)."""
        if not self.with_logprobs:
            return None
        if self.chat:
            return chat_logprobs(entries or [], self.text_of)
        return self.offsets[index](entries or [], tokens)

    def complete(self, choices: list[dict], counts: dict) -> dict:
        """choices: per index, {text, finish_reason, logprobs}."""
        if self.chat:
            (choice,) = choices
            body = {"index": 0, "message": {"role": "assistant", "content": choice["text"]}}
            body.update(finish_reason=choice["finish_reason"], logprobs=choice["logprobs"])
            return self._object("chat.completion", [body], usage=counts)
        return self._object("text_completion", [{"index": i, **c} for i, c in enumerate(choices)], usage=counts)

    def chunk(
        self,
        index: int = 0,
        text: str | None = None,
        finish_reason: str | None = None,
        role: bool = False,
        logprobs: dict | None = None,
    ) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}
            return self._object("chat.completion.chunk", [choice])
        choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": logprobs}
        return self._object("text_completion", [choice])

    def usage_chunk(self, counts: dict) -> dict:
        """The extra last chunk that `stream_options: {"include_usage": true}` asks for: no choices, the usage."""
        return self._object("chat.completion.chunk" if self.chat else "text_completion", [], usage=counts)
