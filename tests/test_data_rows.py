"""One way to build rows: the stored plan and the stream cut and pack the same documents alike, and a stream's
held-out documents are a small store read through `PackedRows`, as prepared data's are."""

import json
from collections import Counter

import numpy as np
import pytest

from moai_llm.data import DataSpec, DataStats, MixtureSource, PackedRows, row_datasets
from moai_llm.data import streaming as streaming_module
from moai_llm.data.encode import DialogueEncoder, TextEncoder
from moai_llm.data.streaming import stream_mixture, streamed_rows
from moai_llm.loading import load_tokenizer

WORDS = "the quick brown fox jumps over a lazy dog while rain falls on quiet hills and rivers".split()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def write_texts(path, count: int = 120) -> None:
    """Documents of 2 to ~150 words: at rows of 48 tokens many are cut into several pieces."""
    rng = np.random.default_rng(0)
    texts = [f"d{i} " + " ".join(rng.choice(WORDS, int(rng.integers(1, 150)))) for i in range(count)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def write_dialogues(path, count: int = 60) -> None:
    """prompt/completion records, some longer than the rows (truncated for SFT)."""
    rng = np.random.default_rng(1)
    records = [
        {"prompt": f"q{i} " + " ".join(rng.choice(WORDS, int(rng.integers(1, 60)))), "completion": f"answer {i}"}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def streamed(path, encoder, *, max_seq_length, packing, truncate, stats) -> list[dict]:
    """Every row of one pass over the stream, one process."""
    mixed, _ = stream_mixture(
        [MixtureSource(name=str(path))],
        encoder,
        seed=0,
        stopping_strategy="all_exhausted",
        eval_fraction=0,
        skip_bad_records=False,
        stats=DataStats(),
    )
    rows = streamed_rows(
        mixed,
        encoder,
        max_seq_length=max_seq_length,
        packing=packing,
        truncate=truncate,
        seed=0,
        num_processes=1,
        stats=stats,
        passes=1,
    )
    return list(rows)


def stored(path, tokenizer, tmp_path, *, max_seq_length, packing, sft, stats) -> list[dict]:
    spec = DataSpec(train_files=[str(path)], eval_fraction=0, packing=packing, cache_dir=str(tmp_path / "cache"))
    train, _ = row_datasets(spec, tokenizer, max_seq_length, sft=sft, stats=stats)
    return [train[i] for i in range(len(train))]


def pieces_of(rows) -> Counter:
    """The multiset of pieces (token ids, labels) over all rows."""
    out = Counter()
    for row in rows:
        ids, start = [int(t) for t in row["input_ids"]], 0
        labels = [int(t) for t in row["labels"]] if "labels" in row else None
        for length in row["seq_lengths"]:
            out[(tuple(ids[start : start + length]), labels and tuple(labels[start : start + length]))] += 1
            start += length
    return out


def rows_of(rows) -> Counter:
    return Counter((tuple(int(t) for t in r["input_ids"]), tuple(r["seq_lengths"])) for r in rows)


CUTS = ("documents_split", "pieces_from_split_documents", "sft_examples_truncated")


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize("sft", [False, True], ids=["pretraining", "sft"])
def test_the_stream_and_the_stored_plan_build_the_same_rows(tmp_path, tokenizer, packing, sft):
    path = tmp_path / "docs.jsonl"
    (write_dialogues if sft else write_texts)(path)
    encoder = DialogueEncoder(tokenizer) if sft else TextEncoder(tokenizer)
    plan_stats, stream_stats = DataStats(), DataStats()
    plan = stored(path, tokenizer, tmp_path, max_seq_length=48, packing=packing, sft=sft, stats=plan_stats)
    stream = streamed(path, encoder, max_seq_length=48, packing=packing, truncate=sft, stats=stream_stats)
    assert {k: plan_stats[k] for k in CUTS} == {k: stream_stats[k] for k in CUTS}
    assert plan_stats["sft_examples_truncated" if sft else "documents_split"] > 5  # the rows do cut documents
    assert pieces_of(stream) == pieces_of(plan)
    # the whole corpus fits one stream buffer: the same packer on the same pieces gives the same rows
    assert rows_of(stream) == rows_of(plan)
    assert all(sum(r["seq_lengths"]) <= 48 for r in stream)


def test_a_small_stream_buffer_keeps_every_piece(tmp_path, tokenizer, monkeypatch):
    path = tmp_path / "docs.jsonl"
    write_texts(path)
    plan = stored(path, tokenizer, tmp_path, max_seq_length=48, packing=True, sft=False, stats=DataStats())
    monkeypatch.setattr(streaming_module, "PACK_BUFFER", 7)
    stream = streamed(path, TextEncoder(tokenizer), max_seq_length=48, packing=True, truncate=False, stats=DataStats())
    assert pieces_of(stream) == pieces_of(plan) and len(stream) > len(plan)  # buffers of 7 pack less tightly


@pytest.mark.parametrize("sft", [False, True], ids=["pretraining", "sft"])
def test_a_streams_held_out_documents_are_a_store_read_like_prepared_data(tmp_path, tokenizer, sft):
    path = tmp_path / "docs.jsonl"
    (write_dialogues if sft else write_texts)(path)
    common = dict(train_files=[str(path)], eval_fraction=10, cache_dir=str(tmp_path / "cache"))
    _, streamed_eval = row_datasets(DataSpec(streaming=True, **common), tokenizer, 48, sft=sft)
    assert isinstance(streamed_eval, PackedRows) and len(streamed_eval) >= 1
    held = pieces_of(streamed_eval[i] for i in range(len(streamed_eval)))
    assert sum(held.values()) >= 10  # ten documents, some cut (pretraining)
    if sft:
        assert all(-100 in streamed_eval[i]["labels"] for i in range(len(streamed_eval)))
    first = tmp_path / "first.jsonl"  # a stream holds out the first 10 records: prepared alone, the same pieces
    first.write_text("".join(path.read_text().splitlines(keepends=True)[:10]))
    assert held == pieces_of(stored(first, tokenizer, tmp_path, max_seq_length=48, packing=True, sft=sft, stats=None))
    stores = sorted(p.name for p in (tmp_path / "cache").glob("stream-eval-*"))
    assert len(stores) == 2  # the store and its plan, keyed by content
    row_datasets(DataSpec(streaming=True, **common), tokenizer, 48, sft=sft)
    assert sorted(p.name for p in (tmp_path / "cache").glob("stream-eval-*")) == stores  # reused, not rebuilt


def test_sft_dialogues_longer_than_the_rows_are_truncated_and_counted(tmp_path, tokenizer):
    """docs/data.md: a dialogue longer than --max_seq_length keeps its first max_seq_length tokens (and their labels),
    never split into a second piece, and each one is counted."""
    from moai_llm.data.sft import to_messages

    path = tmp_path / "dialogues.jsonl"
    write_dialogues(path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    ids, lengths, mask = DialogueEncoder(tokenizer).encode([to_messages(r, "prompt_completion") for r in records])
    starts = np.concatenate([[0], np.cumsum(lengths)])
    full = Counter(
        (tuple(int(t) for t in ids[a:b][:48]), tuple(int(t) if m else -100 for t, m in zip(ids[a:b][:48], mask[a:b])))
        for a, b in zip(starts[:-1], starts[1:])
    )
    stats = DataStats()
    rows = stored(path, tokenizer, tmp_path, max_seq_length=48, packing=True, sft=True, stats=stats)
    assert pieces_of(rows) == full  # one piece per dialogue: its first 48 tokens
    assert stats["sft_examples_truncated"] == int((lengths > 48).sum()) > 5
