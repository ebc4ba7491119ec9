"""Reading streamed rows in tests: a stream starts again without end, so tests read its first pass."""

import numpy as np


def first_pass(train, tokenizer) -> tuple[list[dict], list[str]]:
    """The rows of a stream's first pass and their documents' texts: up to the first row of known documents."""
    rows, docs = [], []
    for row in train:
        starts = np.cumsum([0, *row["seq_lengths"]])
        texts = [tokenizer.decode(row["input_ids"][a : b - 1]) for a, b in zip(starts[:-1], starts[1:])]
        if set(texts) & set(docs):
            return rows, docs
        rows.append(row)
        docs += texts
    raise AssertionError("the stream ended")


def rows_from_documents(docs, *, max_seq_length, packing, rows_per_step, seed, stats, num_bins=8, labels=None):
    """Rows built in memory from token lists, the reference the stored plan is checked against: pretraining
    documents cut into max_seq_length pieces by list slicing (SFT ones are already truncated), packed by
    `HierarchicalBalancePacker`, gathered with Python lists. `rows_per_step`, `seed`, `num_bins`: the order only."""
    from moai_llm.data import HierarchicalBalancePacker

    if labels is None:
        docs = [doc[i : i + max_seq_length] for doc in docs for i in range(0, len(doc), max_seq_length)]
    labels = labels if labels is not None else [None] * len(docs)
    lengths = [len(d) for d in docs]
    packs = HierarchicalBalancePacker(max_seq_length).pack(lengths) if packing else [[i] for i in range(len(docs))]
    stats["packs"] += len(packs)
    rows = []
    for pack in packs:
        row = {"input_ids": [t for i in pack for t in docs[i]], "seq_lengths": [lengths[i] for i in pack]}
        if labels[0] is not None:
            row["labels"] = [t for i in pack for t in labels[i]]
        rows.append(row)
    return rows
