"""A chat session: history rendered with the chat template, oldest turns trimmed to fit, slash commands."""

import json
from dataclasses import dataclass, field

import torch

from .generation import SamplingParams

HELP = """commands:
  /reset              forget the conversation (keeps the system prompt)
  /system TEXT        set the system prompt and reset
  /params k=v ...     temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed (temperature=0: greedy)
  /save FILE          write the conversation as JSON
  /help               this text
  /exit               leave (Ctrl-D too); Ctrl-C stops an answer"""


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` rendered with the tokenizer's chat template, ready for the assistant's answer."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class ChatSession:
    tokenizer: object
    max_context: int
    params: SamplingParams = field(default_factory=SamplingParams)
    raw: bool = False
    system: str | None = None
    messages: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.raw = self.raw or not getattr(self.tokenizer, "chat_template", None)

    def prompt_ids(self, user_text: str) -> tuple[torch.Tensor, str | None]:
        """Token ids of the next prompt [1, n], and a notice when old turns were dropped to fit the context."""
        self.params.max_new_tokens = max(1, min(self.params.max_new_tokens, self.max_context // 2))
        if self.raw:
            ids = self.tokenizer(user_text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            return ids[:, -max(1, self.max_context - self.params.max_new_tokens):], None
        self.messages.append({"role": "user", "content": user_text})
        dropped = 0
        while True:
            ids = self._render()
            if ids.shape[1] + self.params.max_new_tokens <= self.max_context or len(self.messages) <= 1:
                break
            self.messages = self.messages[2:] if len(self.messages) > 2 else self.messages[1:]
            dropped += 1
        if ids.shape[1] + self.params.max_new_tokens > self.max_context:
            ids = ids[:, -(self.max_context - self.params.max_new_tokens):]
        notice = f"[context full: dropped the {dropped} oldest turn(s)]" if dropped else None
        return ids, notice

    def _render(self) -> torch.Tensor:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return torch.tensor([chat_prompt_ids(self.tokenizer, system + self.messages)])

    def add_answer(self, text: str) -> None:
        if not self.raw:
            self.messages.append({"role": "assistant", "content": text})

    def command(self, line: str) -> tuple[str, bool]:
        """(text to show, whether to leave) for a /command."""
        name, _, rest = line.strip().partition(" ")
        if name == "/exit":
            return "bye", True
        if name == "/help":
            return HELP, False
        if name == "/reset":
            self.messages = []
            return "[conversation cleared]", False
        if name == "/system":
            self.system, self.messages = rest.strip() or None, []
            return f"[system prompt set; conversation cleared]", False
        if name == "/params":
            try:
                for pair in rest.split():
                    key, _, value = pair.partition("=")
                    self.params.set(key, value)
            except ValueError as err:
                return f"[error: {err}]", False
            return f"[{self.params}]", False
        if name == "/save":
            if not rest.strip():
                return "[error: /save needs a file name]", False
            payload = {"system": self.system, "messages": self.messages, "params": self.params.__dict__}
            with open(rest.strip(), "w", encoding="utf-8") as f:
                json.dump(payload, f, ensure_ascii=False, indent=2)
            return f"[saved to {rest.strip()}]", False
        return f"[unknown command {name}; /help lists them]", False
