"""Streamed rows: every record read whatever the DataLoader workers, passes that never leave a rank without rows."""

import json

import pytest
import torch

from moai_llm.data import DataError, DataStats, MixtureSource
from moai_llm.data.encode import TextEncoder
from moai_llm.data.streaming import stream_mixture, streamed_rows
from moai_llm.loading import load_tokenizer


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(load_tokenizer())


def write_parts(folder, files=4, lines=30):
    folder.mkdir()
    texts = []
    for f in range(files):
        part = [f"file{f} line{i} " + "word " * (3 + i % 7) for i in range(lines)]
        (folder / f"part{f}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
        texts += part
    return texts


def rows_of(folder, encoder, *, passes=1, num_processes=1, seed=0):
    mixed, _ = stream_mixture(
        [MixtureSource(name=str(folder))],
        encoder,
        seed=seed,
        stopping_strategy="all_exhausted",
        eval_fraction=0,
        skip_bad_records=False,
        stats=DataStats(),
    )
    return streamed_rows(
        mixed,
        encoder,
        max_seq_length=64,
        packing=True,
        truncate=False,
        seed=seed,
        num_processes=num_processes,
        stats=DataStats(),
        passes=passes,
    )


def read(rows, workers: int) -> list[list[int]]:
    loader = torch.utils.data.DataLoader(rows, batch_size=None, num_workers=workers)
    return [list(row["input_ids"]) for row in loader]


def test_dataloader_workers_read_every_record_of_the_stream(tmp_path, encoder):
    """Before, each worker kept only the shards worker_id::W of the rank's stream: 2 workers read half the files."""
    texts = write_parts(tmp_path / "parts")
    rows = rows_of(tmp_path / "parts", encoder)
    alone, two_workers = read(rows, 0), read(rows, 2)
    assert alone == two_workers  # one worker per rank reads and packs: the same rows in the same order
    tokens = sum(map(len, alone))
    expected = sum(len(encoder.encode([t])[0]) for t in texts)
    assert tokens == expected


def test_a_rank_starts_its_part_again_when_it_runs_out(tmp_path, encoder):
    """Rows never end (the trainer stops at max_steps): pass 2 reads the same documents in another order."""
    write_parts(tmp_path / "parts")
    one = read(rows_of(tmp_path / "parts", encoder), 0)
    two = read(rows_of(tmp_path / "parts", encoder, passes=2), 0)
    assert two[: len(one)] == one
    second = two[len(one) :]
    assert second != one  # a new pack shuffle
    assert sorted(t for row in second for t in row) == sorted(t for row in one for t in row)


def test_a_rank_without_documents_is_an_error_not_a_hang(tmp_path, encoder):
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"text": "only one record"}) + "\n")
    rows = rows_of(folder, encoder, passes=None, num_processes=2)
    with pytest.raises(DataError, match="rank 1 of 2 got no documents"):
        next(iter(rows.shard(num_shards=2, index=1)))
