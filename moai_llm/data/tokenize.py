"""Tokenisation of documents with batched `datasets.map`: EOS after each document, cached, main process first."""

import logging
import os
from pathlib import Path

import datasets
from datasets.fingerprint import Hasher

logger = logging.getLogger(__name__)


def num_proc() -> int | None:
    value = int(os.environ.get("DATASET_NUM_PROC", "1"))
    return value if value > 1 else None


def tokenize_documents(dataset, tokenizer, text_column: str = "text", cache_dir: str | None = None):
    """`input_ids` of every document with EOS appended; the map result is cached under cache_dir."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token; documents could not be separated")

    def encode(batch):
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    columns = dataset.column_names or []
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.map(encode, batched=True, remove_columns=columns)
    kwargs = {}
    if cache_dir:
        key = Hasher.hash([dataset._fingerprint, tokenizer.backend_tokenizer.to_str(), text_column])
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        kwargs["cache_file_name"] = str(Path(cache_dir) / f"tokenized-{key}.arrow")
    return dataset.map(encode, batched=True, batch_size=256, num_proc=num_proc(), remove_columns=columns,
                       desc="tokenizing", **kwargs)


def train_eval_split(dataset, eval_fraction: float, seed: int):
    """Held-out documents (split before packing, so no document is in both)."""
    if not eval_fraction:
        return dataset, None
    if len(dataset) < 2:
        raise ValueError(f"{len(dataset)} document(s): too few to hold out an eval split (set --eval_fraction 0)")
    size = max(1, round(len(dataset) * eval_fraction)) if eval_fraction < 1 else int(eval_fraction)
    split = dataset.train_test_split(test_size=size, seed=seed, shuffle=True)
    return split["train"], split["test"]
