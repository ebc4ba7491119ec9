"""The cutter, the packer (HierarchicalBalancePacker, `pack`) and the packed collator, against the real model."""

import json

import numpy as np
import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.data import DataError, DataStats, HierarchicalBalancePacker, PackedCollator, PaddingCollator, cut, pack
from moai_llm.data.plan import balance
from moai_llm.data.streaming import packed_rows

from .conftest import REPO, shared_corpora, tiny_config


def paragraph_lengths() -> np.ndarray:
    """Token-ish lengths (words * 1.3) of the paragraphs of real plays (bundled sample when no corpora)."""
    corpora = shared_corpora()
    if corpora:
        text = "\n\n".join(
            (corpora / "en/shakespeare" / n).read_text(encoding="utf-8")
            for n in ("hamlet.txt", "lear.txt", "othello.txt", "tempest.txt")
        )
    else:
        rows = (REPO / "moai_llm/assets/sample/pretrain.jsonl").read_text(encoding="utf-8").splitlines()
        text = "\n\n".join(json.loads(row)["text"] for row in rows)
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    lengths = np.array([max(1, int(len(p.split()) * 1.3)) for p in paragraphs])
    # the bundled sample is ~30x smaller than four plays: repeat its (real) lengths to a comparable count
    return lengths if corpora else np.tile(lengths, 4)


def efficiency(packs, lengths, capacity) -> float:
    return sum(int(lengths[p].sum()) for p in packs) / (len(packs) * capacity)


@pytest.mark.parametrize("capacity", [512, 2048])
def test_every_index_once_capacity_and_efficiency(capacity):
    lengths = np.minimum(paragraph_lengths(), capacity)
    packs = HierarchicalBalancePacker(capacity).pack(lengths)
    flat = sorted(i for p in packs for i in p)
    assert flat == list(range(len(lengths)))
    assert all(lengths[p].sum() <= capacity for p in packs)
    assert efficiency(packs, lengths, capacity) >= 0.98
    rows, order = pack(lengths, capacity, packing=True)  # the same packs, rows sorted by attention cost
    assert sorted(order.tolist()) == list(range(len(lengths))) and len(rows) - 1 == len(packs)
    cost = np.add.reduceat(lengths[order] ** 2, rows[:-1])
    assert np.all(np.diff(cost) <= 0)


def test_deterministic_and_balanced_for_a_seed():
    lengths = np.minimum(paragraph_lengths(), 1024)
    rows, order = pack(lengths, 1024, packing=True, seed=3)
    again = pack(lengths, 1024, packing=True, seed=3)
    assert np.array_equal(rows, again[0]) and np.array_equal(order, again[1])
    packs = [order[a:b] for a, b in zip(rows[:-1], rows[1:])]
    shuffled = [packs[i] for i in np.random.default_rng(0).permutation(len(packs))]
    shuffled_rows = np.concatenate([[0], np.cumsum([len(p) for p in shuffled])])
    balanced = balance(lengths[order], rows, 4)  # steps of 4 consecutive rows, as StepSampler reads them
    random = balance(lengths[np.concatenate(shuffled)], shuffled_rows, 4)
    assert balanced < 1.5 and random > 4 * balanced


def test_long_documents_are_split_never_dropped():
    stats = DataStats()
    starts, lengths = cut([0, 10], [10, 25], 8, stats=stats)
    assert lengths.tolist() == [8, 2, 8, 8, 8, 1] and starts.tolist() == [0, 8, 10, 18, 26, 34]
    assert stats == {"documents_split": 2, "pieces_from_split_documents": 6}
    truncated = DataStats()
    assert cut([0, 10], [10, 5], 8, truncate=True, stats=truncated)[1].tolist() == [8, 5]
    assert truncated == {"sft_examples_truncated": 1}
    with pytest.raises(DataError, match="max_seq_length=8"):
        HierarchicalBalancePacker(8).pack([3, 9])


def test_streaming_packs_keep_every_document():
    rng = np.random.default_rng(1)
    docs = [(np.arange(n), None) for n in rng.integers(1, 100, 500)]
    rows = list(packed_rows(iter(docs), 128, True, buffer_size=64, seed=0))
    assert sum(len(r["seq_lengths"]) for r in rows) == 500 and all(sum(r["seq_lengths"]) <= 128 for r in rows)
    assert sum(map(len, (r["input_ids"] for r in rows))) == sum(len(d) for d, _ in docs)


def test_collator_restarts_positions_and_masks_document_starts():
    batch = PackedCollator(pad_token_id=0)(
        [
            {"input_ids": [5, 6, 7, 8, 9], "seq_lengths": [3, 2]},
            {"input_ids": [10, 11], "seq_lengths": [2]},
        ]
    )
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, 11, -100, -100, -100]]
    assert batch["input_ids"].tolist()[1] == [10, 11, 0, 0, 0]
    assert "attention_mask" not in batch
    flash = PackedCollator(pad_token_id=0, return_flash_kwargs=True)([{"input_ids": [1, 2, 3], "seq_lengths": [1, 2]}])
    assert flash["cu_seq_lens_q"].tolist() == [0, 1, 3]


def test_padding_collator_pads_right_with_a_mask():
    batch = PaddingCollator(pad_token_id=0)([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [-100, 9, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_packed_loss_equals_token_weighted_mean_of_documents():
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config()).eval()
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 128, n).tolist() for n in (9, 14, 5, 20, 7, 11)]
    lengths = [len(d) for d in docs]
    packs = HierarchicalBalancePacker(32).pack(lengths)
    rows = [{"input_ids": [t for i in p for t in docs[i]], "seq_lengths": [lengths[i] for i in p]} for p in packs]
    batch = PackedCollator(pad_token_id=0)(rows)
    packed_loss = model(**batch).loss
    total, count = 0.0, 0
    for doc in docs:
        ids = torch.tensor([doc])
        total += model(ids, labels=ids).loss.item() * (len(doc) - 1)
        count += len(doc) - 1
    assert abs(packed_loss.item() - total / count) <= 1e-5
