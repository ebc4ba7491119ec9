"""Two CPU processes over gloo: the data is prepared once, each step's rows are a balanced block split across the
ranks, and a stream is read as disjoint per-rank shards (no batch dispatched from rank 0) with flash kwargs."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO

pytestmark = pytest.mark.integration  # two ranks in subprocesses

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def test_two_ranks_prepare_once_step_in_balanced_blocks_and_stream_disjoint_shards(tmp_path):
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus.jsonl"
    sizes = np.where(rng.random(400) < 0.5, rng.integers(1, 8, 400), rng.integers(20, 45, 400))  # short and long
    _write(corpus, [f"doc{i} " + " ".join(rng.choice(WORDS, int(n))) for i, n in enumerate(sizes)])
    stream = tmp_path / "stream"
    stream.mkdir()
    expected = {}
    for f in range(4):  # four files: the stream's shards, two per rank
        texts = [f"file{f} line{i} " + " ".join(rng.choice(WORDS, int(rng.integers(4, 12)))) for i in range(40)]
        _write(stream / f"part{f}.jsonl", texts)
        expected.update({t: f for t in texts})
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(REPO / "tests" / "data_ranks_worker.py"),
            str(out),
            str(corpus),
            str(stream),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]

    # prepared once: one rank tokenized the corpus, the other waited and memory-mapped the same store
    assert [len(r["prepared"]) for r in ranks] == [1, 0]
    assert ranks[0]["rows"] == ranks[1]["rows"] and ranks[0]["lengths"] == ranks[1]["lengths"]

    # row order: at each step the two ranks read one block of 4 consecutive cost-sorted rows, rank 0 the first two
    rows, lengths = ranks[0]["rows"], ranks[0]["lengths"]
    cost = np.array([sum(n * n for n in lengths[i]) for i in range(rows)])
    for epoch in range(2):
        steps = [a + b for a, b in zip(ranks[0]["epochs"][epoch], ranks[1]["epochs"][epoch])]
        full = rows // 4
        blocks = [step[0] // 4 for step in steps[:full]]
        for step, block in zip(steps[:full], blocks):
            assert step == list(range(4 * block, 4 * block + 4))
        assert sorted(blocks) == list(range(full)) and blocks != sorted(blocks)  # every block once, shuffled
        assert sorted({i for step in steps for i in step}) == list(range(rows))  # every row read this epoch
        print(f"epoch {epoch}: first steps (rank 0 rows | rank 1 rows):", [(s[:2], s[2:]) for s in steps[:4]])
        balanced = np.mean([cost[s].max() / cost[s].min() for s in steps[:full]])
        shuffled = np.random.default_rng(1).permutation(4 * full).reshape(-1, 4)
        unbalanced = np.mean([cost[s].max() / cost[s].min() for s in shuffled])
        assert balanced < 1.1 and unbalanced > 1.5 * balanced, (balanced, unbalanced)
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]  # a new step order each epoch

    # streaming: disjoint shards whose union is the whole stream; rank r read only its own files
    docs = [r["stream_documents"] for r in ranks]
    assert not set(docs[0]) & set(docs[1]) and sorted(docs[0] + docs[1]) == sorted(expected)
    files = [{expected[d] for d in docs[r]} for r in range(2)]
    assert len(files[0]) == len(files[1]) == 2 and not files[0] & files[1]  # whole files per rank, none shared
    for r in ranks:
        assert r["dispatch_batches"] is False and r["max_length_types"] == ["int"]
        assert len(set(r["widths"])) > 1  # batches of different widths
        assert r["steps"] == 2 and np.isfinite(r["train_loss"])
    # the stream's held-out documents: one small store (written by the local main process), the same rows on both
    assert ranks[0]["held_out"] == ranks[1]["held_out"] and ranks[0]["held_out"]["type"] == "PackedRows"
    assert len(ranks[0]["held_out"]["rows"]) >= 1
    assert len(list((out / "stream" / "data_cache").glob("stream-eval-*"))) == 2  # the store and its plan
