"""Generated tokens to streamed text: incremental detokenization, and stop strings that never reach the client."""

from tokenizers.decoders import DecodeStream


class TextAssembler:
    """Decodes one token at a time (tokenizers' DecodeStream: O(1) per token, whole UTF-8 characters only) and
    releases text once it can no longer be the beginning of a stop string."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self.ids: list[int] = []
        self.stream = DecodeStream(skip_special_tokens=True)
        self.stop = [s for s in stop if s]
        self.text = ""
        self.sent = 0  # characters of self.text already released

    def add(self, token_id: int) -> tuple[str, bool]:
        """(text that may be sent now, whether a stop string was reached: then nothing after it is ever sent)."""
        self.ids.append(token_id)
        self.text += self.stream.step(self.backend, token_id) or ""
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            end = min(hits)
            out, self.sent = self.text[self.sent : end], end
            self.text = self.text[:end]
            return out, True
        end = len(self.text) - self._held_back()
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out, False

    def flush(self) -> str:
        """What is left when generation ends for another reason: text held back for a stop string, and bytes of an
        unfinished character (shown as the tokenizer's `decode` shows them, so the answer equals its decode)."""
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if full.startswith(self.text):
            self.text = full
        out, self.sent = self.text[self.sent :], len(self.text)
        return out

    def _held_back(self) -> int:
        """Length of the longest unsent tail that is a proper prefix of some stop string."""
        tail = self.text[self.sent :]
        for size in range(min(len(tail), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            if any(s.startswith(tail[-size:]) for s in self.stop):
                return size
        return 0
