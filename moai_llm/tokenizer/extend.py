"""Grow an existing byte-level BPE tokenizer with new data without moving any existing id.

Why hand-written: `tokenizers` trains from scratch only. Here a BPE is trained on the new data and its merges
are appended, in their learned order, after the base's: a merge is kept when its result is a new token and both
of its parts already exist (in the base or among tokens appended before it), so every appended token can be
produced by the merge sequence and old tokenisation of old text only changes where new merges apply.
"""

import json
import logging
from collections.abc import Iterable

from tokenizers import Tokenizer

from ..errors import UsageError
from .train import train_tokenizer

logger = logging.getLogger(__name__)


def check_byte_level_bpe(data: dict, where: str) -> None:
    model = data.get("model", {})
    pre = json.dumps(data.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise UsageError(
            f"--base_tokenizer {where}: not a byte-level BPE tokenizer "
            f"(model {model.get('type')}, pre_tokenizer {data.get('pre_tokenizer', {}) and 'other'})"
        )


def _pair(merge) -> tuple[str, str]:
    return tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ", 1))


def extend_tokenizer(base: Tokenizer, texts: Iterable[str], vocab_size: int, where: str = "base") -> Tokenizer:
    """`base` plus merges learned on `texts`, up to `vocab_size` tokens; every old id and merge kept."""
    data = json.loads(base.to_str())
    check_byte_level_bpe(data, where)
    vocab: dict[str, int] = data["model"]["vocab"]
    total = len(vocab) + sum(1 for t in data.get("added_tokens", []) if t["content"] not in vocab)
    if vocab_size <= total:
        raise UsageError(f"--vocab_size {vocab_size} must be larger than the base tokenizer's {total} tokens")
    learned = train_tokenizer(texts, vocab_size, show_progress=False)
    merges = [_pair(m) for m in json.loads(learned.to_str())["model"]["merges"]]
    old_merges = {_pair(m) for m in data["model"]["merges"]}
    next_id = max(max(vocab.values()), max((t["id"] for t in data.get("added_tokens", [])), default=0)) + 1
    appended = []
    for left, right in merges:
        if next_id >= vocab_size:
            break
        token = left + right
        if token in vocab or (left, right) in old_merges or left not in vocab or right not in vocab:
            continue
        vocab[token] = next_id
        appended.append([left, right])
        next_id += 1
    data["model"]["merges"] = [list(_pair(m)) for m in data["model"]["merges"]] + appended
    logger.info("extended tokenizer: %d -> %d tokens (%d merges appended)", total, next_id, len(appended))
    return Tokenizer.from_str(json.dumps(data))
