"""Interrupted and resumed runs read exactly the rows an uninterrupted run reads: 2 ranks, 2 DataLoader workers,
gradient accumulation 2, prepared and streamed data (a stream whose ranks run out at different steps)."""

import json

import pytest

from .conftest import REPO
from .distributed_helpers import torchrun

pytestmark = pytest.mark.integration  # torchrun, three runs per case


def write_stream(folder, sizes):
    """One file per rank, of different lengths: the short one runs out (and starts again) in mid accumulation."""
    folder.mkdir()
    for f, count in enumerate(sizes):
        lines = [json.dumps({"text": f"file{f} doc{i} " + "alpha beta gamma " * (1 + i % 5)}) for i in range(count)]
        (folder / f"part{f}.jsonl").write_text("\n".join(lines) + "\n")


def run(tmp_path, name, data, *flags):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    result = torchrun(
        (REPO / "tests" / "data_resume_worker.py").read_text(), [out, name, data, *flags], tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:]
    return [json.loads((out / f"{name}-rank{r}.json").read_text()) for r in range(2)]


FLAGS = ["--dataloader_num_workers", "2", "--gradient_accumulation_steps", "2", "--eval_fraction", "0"]


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streamed"])
def test_resumed_run_reads_the_rows_of_the_uninterrupted_run(tmp_path, streaming):
    data = tmp_path / "stream"
    write_stream(data, [70, 9])
    flags = [*FLAGS, "--streaming", "true"] if streaming else FLAGS
    ranks = run(tmp_path, "streamed" if streaming else "prepared", str(data), *flags)
    whole = ranks[0]["whole"]["losses"]
    assert sorted(map(int, whole)) == list(range(1, 9))
    for rank in ranks:
        assert rank["whole"]["steps"] == list(range(1, 9))
        assert rank["stopped"]["steps"] == [1, 2, 3, 4]
        assert rank["resumed"]["steps"] == [5, 6, 7, 8]  # only the remaining steps, not a fresh run
    resumed = ranks[0]["resumed"]["losses"]
    assert resumed == {step: whole[step] for step in ("5", "6", "7", "8")}


def test_tokens_seen_after_a_resume_equals_the_uninterrupted_count(tmp_path):
    """Checkpoints at steps that are not logging steps: the count up to the checkpoint is in its log history."""
    import shutil

    from .train_helpers import fast_args, run_inprocess, write_tiny_config

    config = write_tiny_config(tmp_path)
    flags = ["--max_steps", "6", "--save_steps", "3", "--logging_steps", "2", "--eval_fraction", "0"]
    for name in ("whole", "cut"):
        run_inprocess(fast_args(tmp_path / name, config, *flags))
    for leftover in ("final_model", "checkpoint-6"):  # as if killed right after checkpoint-3
        shutil.rmtree(tmp_path / "cut" / leftover)
    run_inprocess(fast_args(tmp_path / "cut", config, *flags, "--resume_from_checkpoint", "auto"))

    def seen(name):
        history = json.loads((tmp_path / name / "trainer_state.json").read_text())["log_history"]
        return {e["step"]: e["tokens_seen"] for e in history if "tokens_seen" in e}

    whole = seen("whole")
    assert sorted(whole) == [2, 3, 4, 6] and seen("cut") == whole
