"""SFT formats to chat messages, rendered with the tokenizer's chat template; labels only on assistant tokens.

Formats: alpaca (instruction / input / output), sharegpt (conversations of from/value), messages (role/content),
prompt_completion (prompt / completion), question_answer (question / answer).
"""

from ..batch_format import IGNORE_INDEX
from .stats import DataError, DataStats

FORMAT_KEYS = {
    "alpaca": {"instruction", "output"},
    "sharegpt": {"conversations"},
    "messages": {"messages"},
    "prompt_completion": {"prompt", "completion"},
    "question_answer": {"question", "answer"},
}
FORMAT_ALIASES = {"qa": "question_answer"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "bot": "assistant",
}


def detect_format(columns) -> str:
    matches = [name for name, keys in FORMAT_KEYS.items() if keys <= set(columns)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DataError(
            f"SFT data: no known format in columns {sorted(columns)}; expected one of "
            + ", ".join(f"{n} ({'/'.join(sorted(k))})" for n, k in FORMAT_KEYS.items())
        )
    raise DataError(f"SFT data: columns {sorted(columns)} fit several formats {matches}; set --sft_format")


def to_messages(row: dict, fmt: str) -> list[dict]:
    """One record as [{"role", "content"}, ...]."""
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt == "alpaca":
        prompt = row["instruction"] if not row.get("input") else f"{row['instruction']}\n\n{row['input']}"
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
    if fmt == "sharegpt":
        messages = []
        for turn in row["conversations"]:
            role = SHAREGPT_ROLES.get(turn.get("from"))
            if role is None:
                raise DataError(f"SFT sharegpt: unknown speaker {turn.get('from')!r} (known: {sorted(SHAREGPT_ROLES)})")
            messages.append({"role": role, "content": turn["value"]})
        return messages
    if fmt == "messages":
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    if fmt == "prompt_completion":
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
    if fmt == "question_answer":
        return [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
    raise DataError(f"--sft_format {fmt!r} is not one of {sorted(FORMAT_KEYS)}")


def tokenize_dialogue(messages: list[dict], tokenizer, max_seq_length: int, stats: DataStats | None = None) -> dict:
    """input_ids and labels (IGNORE_INDEX outside assistant spans), truncated to max_seq_length (counted).

    An assistant span is what rendering one more assistant message adds after the generation prompt (its content
    and end-of-turn token), so any prefix-stable template (ChatML and most others) works without template tags.
    """
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError("SFT: a dialogue has no assistant turn, so nothing would be trained")
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        after = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not after.startswith(before):
            raise DataError("SFT: the chat template is not prefix-stable; assistant spans cannot be located")
        spans.append((len(before), len(after)))
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    labels = [
        token if end > start and any(s <= start and end <= e for s, e in spans) else IGNORE_INDEX
        for token, (start, end) in zip(input_ids, encoded["offset_mapping"])
    ]
    if len(input_ids) > max_seq_length:
        input_ids, labels = input_ids[:max_seq_length], labels[:max_seq_length]
        if stats is not None:
            stats["sft_examples_truncated"] += 1
    return {"input_ids": input_ids, "labels": labels}
