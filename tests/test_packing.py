"""HierarchicalBalancePacker and the packed collator, against the real model."""

import json

import numpy as np
import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.data import (
    DataError,
    DataStats,
    HierarchicalBalancePacker,
    PackedCollator,
    attention_balance_ratio,
    packing_efficiency,
    split_long_documents,
)
from moai_llm.data.packing import pack_stream

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


@pytest.mark.parametrize("capacity", [512, 2048])
def test_every_index_once_capacity_and_efficiency(capacity):
    lengths = np.minimum(paragraph_lengths(), capacity)
    packs = HierarchicalBalancePacker(capacity).pack(lengths)
    flat = sorted(i for p in packs for i in p)
    assert flat == list(range(len(lengths)))
    assert all(lengths[p].sum() <= capacity for p in packs)
    assert packing_efficiency(packs, lengths, capacity) >= 0.98


def test_deterministic_and_balanced_for_a_seed():
    lengths = np.minimum(paragraph_lengths(), 1024)
    a, b = HierarchicalBalancePacker(1024, seed=3), HierarchicalBalancePacker(1024, seed=3)
    packs = a.pack(lengths)
    assert packs == b.pack(lengths)
    ordered = a.order_in_steps(packs, lengths, rows_per_step=4)
    assert ordered == b.order_in_steps(packs, lengths, rows_per_step=4)
    assert sorted(map(sorted, ordered)) == sorted(map(sorted, packs))
    shuffled = [packs[i] for i in np.random.default_rng(0).permutation(len(packs))]
    balanced, random = attention_balance_ratio(ordered, lengths, 4), attention_balance_ratio(shuffled, lengths, 4)
    assert balanced < 1.5 and random > 4 * balanced


def test_long_documents_are_split_never_dropped():
    stats = DataStats()
    docs = split_long_documents([list(range(10)), list(range(25))], 8, stats)
    assert [len(d) for d in docs] == [8, 2, 8, 8, 8, 1]
    assert stats == {"documents_split": 2, "pieces_from_split_documents": 6}
    with pytest.raises(DataError, match="max_seq_length=8"):
        HierarchicalBalancePacker(8).pack([3, 9])


def test_streaming_packs_keep_every_document():
    rng = np.random.default_rng(1)
    docs = [list(range(n)) for n in rng.integers(1, 100, 500)]
    packs = list(pack_stream(iter(docs), 128, buffer_size=64))
    assert sum(len(p) for p in packs) == 500 and all(sum(map(len, p)) <= 128 for p in packs)


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
