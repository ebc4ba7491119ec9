"""Log-probabilities: computed on the engine thread from the model's raw logits (before temperature, top-k, top-p
or the repetition penalty, as vLLM reports them by default), and written in OpenAI's two shapes."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from tokenizers.decoders import DecodeStream


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the k most likely tokens at this position, most likely first


def token_logprobs(logits: torch.Tensor, tokens: list[int], k: int) -> list[TokenLogprob]:
    """One entry per row of logits [rows, vocab]: the log-probability of tokens[row], and the top k."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [rows, vocab]
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logits.device)[:, None])[:, 0].tolist()
    values, ids = logprobs.topk(k, dim=-1)  # k = 0: no top tokens
    tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    return [TokenLogprob(t, lp, top) for t, lp, top in zip(tokens, chosen, tops)]


TokenText = Callable[[int], tuple[str, list[int]]]


def token_text(tokenizer) -> TokenText:
    """A token's text and UTF-8 bytes as OpenAI gives them (cached per token): a token that is part of a character
    is `bytes:\\xe4\\xb8`, and its `bytes` let a client join such pieces back."""
    byte_of = {}
    if type(tokenizer.backend_tokenizer.decoder).__name__ == "ByteLevel":
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)

    @cache
    def text(token: int) -> tuple[str, list[int]]:
        piece = tokenizer.convert_ids_to_tokens(token)
        if byte_of and token not in special and all(c in byte_of for c in piece):
            raw = bytes(byte_of[c] for c in piece)
        else:
            raw = tokenizer.decode([token]).encode("utf-8")
        try:
            return raw.decode("utf-8"), list(raw)
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), list(raw)

    return text


def chat_logprobs(entries: list[TokenLogprob], text_of: TokenText) -> dict:
    """`choices[i].logprobs` of a chat completion (or of one chunk)."""

    def item(token: int, logprob: float) -> dict:
        text, raw = text_of(token)
        return {"token": text, "logprob": logprob, "bytes": raw}

    return {
        "content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries],
        "refusal": None,
    }


class CompletionLogprobs:
    """`choices[i].logprobs` of a text completion: tokens, token_logprobs, top_logprobs and text_offset (where
    each token starts in the choice's text, counted across the chunks of a stream). The first prompt token of an
    echo has no log-probability (None), as in OpenAI's legacy API."""

    def __init__(self, tokenizer, text_of: TokenText):
        self.backend, self.text_of = tokenizer.backend_tokenizer, text_of
        self.stream = DecodeStream(skip_special_tokens=True)
        self.offset = 0

    def __call__(self, entries: list[TokenLogprob | None], tokens: list[int] | None = None) -> dict:
        tokens = tokens if tokens is not None else [e.token for e in entries]
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, entry in zip(tokens, entries):
            out["tokens"].append(self.text_of(token)[0])
            out["token_logprobs"].append(None if entry is None else entry.logprob)
            # the chosen token is always among them (so up to k+1 entries), as in OpenAI's legacy API
            top = None if entry is None else {self.text_of(t)[0]: lp for t, lp in [*entry.top, (token, entry.logprob)]}
            out["top_logprobs"].append(top)
            out["text_offset"].append(self.offset)
            self.offset += len(self.stream.step(self.backend, token) or "")
        return out
