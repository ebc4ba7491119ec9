"""Datasets and collator for a run, from the data arguments.

Interim glue until moai_llm.data lands: bundled sample / local files via `datasets`, EOS-terminated documents,
seeded held-out split, documents split into max_seq_length pieces (counted), greedy packing without crossing
documents, and transformers' DataCollatorWithFlattening-style rows (position_ids restart per document).
"""

import logging
import os
import random

import torch
from datasets import load_dataset

from .arguments import PACKAGE_DIR

logger = logging.getLogger(__name__)
SAMPLE_CORPUS = os.path.join(PACKAGE_DIR, "assets", "sample", "pretrain.jsonl")


def _documents(data_args) -> list[str]:
    files = data_args.train_file or [SAMPLE_CORPUS]
    for path in files:
        if not os.path.exists(path):
            raise ValueError(f"--train_file {path}: file not found")
    kind = "text" if files[0].endswith(".txt") else "json"
    dataset = load_dataset(kind, data_files=files, split="train")
    if data_args.text_column not in dataset.column_names:
        raise ValueError(f"--text_column {data_args.text_column!r} not in {files[0]} (columns: {dataset.column_names})")
    return [text for text in dataset[data_args.text_column] if text]


def _pieces(tokenizer, texts, max_len: int) -> list[list[int]]:
    pieces, split = [], 0
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids = ids + [tokenizer.eos_token_id]
        chunks = [ids[i : i + max_len] for i in range(0, len(ids), max_len)]
        split += len(chunks) - 1
        pieces.extend(chunks)
    logger.info("%d documents -> %d pieces of <= %d tokens (%d splits)", len(texts), len(pieces), max_len, split)
    return pieces


def _pack(pieces: list[list[int]], max_len: int) -> list[list[list[int]]]:
    rows, current, used = [], [], 0
    for piece in sorted(pieces, key=len, reverse=True):
        placed = False
        for row in rows:
            if row[1] + len(piece) <= max_len:
                row[0].append(piece)
                row[1] += len(piece)
                placed = True
                break
        if not placed:
            rows.append([[piece], len(piece)])
    del current, used
    return [row[0] for row in rows]


class PackedRows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return {"documents": self.rows[index]}


class PackedCollator:
    """Rows of concatenated documents padded to the longest row; position_ids restart, first token of a doc -100."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features):
        width = max(sum(len(doc) for doc in feature["documents"]) for feature in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)  # [rows, width]
        labels = torch.full_like(input_ids, -100)
        position_ids = torch.zeros_like(input_ids)
        for row, feature in enumerate(features):
            start = 0
            for doc in feature["documents"]:
                end = start + len(doc)
                input_ids[row, start:end] = torch.tensor(doc)
                labels[row, start + 1 : end] = input_ids[row, start + 1 : end]
                position_ids[row, start:end] = torch.arange(len(doc))
                start = end
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def build_datasets(data_args, tokenizer, seed: int):
    """(train_dataset, eval_dataset or None, collator) for pretraining."""
    texts = _documents(data_args)
    random.Random(seed).shuffle(texts)
    held_out = int(len(texts) * data_args.eval_split) if data_args.eval_split > 0 else 0
    if held_out == 0 and data_args.eval_split > 0 and len(texts) > 1:
        held_out = 1
    eval_texts, train_texts = texts[:held_out], texts[held_out:]
    train_rows = _pack(_pieces(tokenizer, train_texts, data_args.max_seq_length), data_args.max_seq_length)
    random.Random(seed).shuffle(train_rows)
    eval_rows = _pack(_pieces(tokenizer, eval_texts, data_args.max_seq_length), data_args.max_seq_length)
    logger.info("packed %d train rows, %d eval rows", len(train_rows), len(eval_rows))
    return PackedRows(train_rows), (PackedRows(eval_rows) if eval_rows else None), PackedCollator(
        tokenizer.pad_token_id
    )
