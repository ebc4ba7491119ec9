"""A chat session: history rendered with the chat template, oldest turns trimmed to fit, slash commands."""

import json
from dataclasses import dataclass, field, replace

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


@dataclass(frozen=True)
class Prompt:
    """A prompt ready to generate from, with the answer budget that fits beside it in the context."""

    ids: torch.Tensor  # [1, n]
    max_new_tokens: int
    dropped_turns: int = 0

    @property
    def notice(self) -> str | None:
        """What to tell the user when old turns were dropped to fit the context."""
        return f"[context full: dropped the {self.dropped_turns} oldest turn(s)]" if self.dropped_turns else None


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

    def answer_budget(self) -> int:
        """New tokens per answer: the user's max_new_tokens, capped at half the context so a prompt still fits.

        The cap is applied per answer; `params` keeps what the user set."""
        return max(1, min(self.params.max_new_tokens, self.max_context // 2))

    def sampling(self, prompt: Prompt) -> SamplingParams:
        """The session's sampling settings with the prompt's answer budget (a copy; `params` is left as set)."""
        return replace(self.params, max_new_tokens=prompt.max_new_tokens)

    def add_user_turn(self, user_text: str) -> Prompt:
        """Record the user's turn, drop the oldest turns that no longer fit, and return the prompt to answer.

        In raw mode there is no history: the prompt is the text itself, its oldest tokens cut to fit."""
        if self.raw:
            return self.one_shot_prompt(user_text)
        self.messages.append({"role": "user", "content": user_text})
        prompt, self.messages = self._fit(self.messages)
        return prompt

    def one_shot_prompt(self, prompt: str | list[dict]) -> Prompt:
        """The prompt for one text (a user turn) or one message list ending in the turn to answer, with the
        session's system prompt; the conversation in `messages` is neither read nor changed."""
        if isinstance(prompt, list):
            history, text = prompt[:-1], prompt[-1]["content"]
        else:
            history, text = [], prompt
        budget = self.answer_budget()
        if self.raw:
            ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            return Prompt(ids[:, -max(1, self.max_context - budget) :], budget)
        prompt, _ = self._fit([*history, {"role": "user", "content": text}])
        return prompt

    def _fit(self, messages: list[dict]) -> tuple[Prompt, list[dict]]:
        """The prompt for `messages` after dropping their oldest turns (user + answer) until the budget fits; the
        messages kept. A single turn still too long loses its oldest tokens instead."""
        budget = self.answer_budget()
        system = [{"role": "system", "content": self.system}] if self.system else []
        dropped = 0
        while True:
            ids = torch.tensor([chat_prompt_ids(self.tokenizer, system + messages)])
            if ids.shape[1] + budget <= self.max_context or len(messages) <= 1:
                break
            messages = messages[2:] if len(messages) > 2 else messages[1:]
            dropped += 1
        if ids.shape[1] + budget > self.max_context:
            ids = ids[:, -(self.max_context - budget) :]
        return Prompt(ids, budget, dropped), messages

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
            self.system = rest.strip() or None
            self.messages = []
            return "[system prompt set; conversation cleared]", False
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
