"""Interrupted and resumed runs read exactly the rows an uninterrupted run reads: 2 ranks, 2 DataLoader workers,
gradient accumulation 2, prepared and streamed data (a stream whose ranks run out at different steps)."""

import json

import pytest

from moai_llm.errors import UsageError

from .conftest import REPO
from .distributed_helpers import torchrun
from .train_helpers import EQUAL_STEPS

pytestmark = pytest.mark.integration  # torchrun, three runs per case


def write_stream(folder, sizes):
    """One file per rank, of different lengths: the short one runs out (and starts again) in mid accumulation."""
    folder.mkdir()
    for f, count in enumerate(sizes):
        lines = [json.dumps({"text": f"file{f} doc{i} " + "alpha beta gamma " * (1 + i % 5)}) for i in range(count)]
        (folder / f"part{f}.jsonl").write_text("\n".join(lines) + "\n")


def run(tmp_path, tag, plan, data, *flags, nproc=2):
    """The worker under torchrun on `nproc` ranks; each rank's {label: {steps, losses}}."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    script = (REPO / "tests" / "data_resume_worker.py").read_text()
    result = torchrun(script, [out, tag, json.dumps(plan), data, *flags], tmp_path, timeout=300, nproc=nproc)
    assert result.returncode == 0, result.stdout[-4000:]
    return [json.loads((out / f"{tag}-rank{r}.json").read_text()) for r in range(nproc)]


STOP_AND_RESUME = [["whole", "whole", None, False], ["stopped", "cut", 4, False], ["resumed", "cut", None, True]]
FLAGS = ["--eval_fraction", "0", *EQUAL_STEPS]
WORKERS = ["--dataloader_num_workers", "2"]


def check_resumed(ranks, whole):
    for rank in ranks:
        assert rank["stopped"]["steps"] == [1, 2, 3, 4]
        assert rank["resumed"]["steps"] == [5, 6, 7, 8]  # only the remaining steps, not a fresh run
    assert ranks[0]["resumed"]["losses"] == {step: whole[step] for step in ("5", "6", "7", "8")}


def test_a_resumed_stream_reads_the_rows_of_the_uninterrupted_run(tmp_path):
    """2 ranks, 2 workers, accumulation 2; one rank's part of the stream runs out (and starts again) in mid
    accumulation, before and after the checkpoint (before: the ranks desynchronised, a hang)."""
    data = tmp_path / "stream"
    write_stream(data, [70, 9])
    flags = [*FLAGS, *WORKERS, "--gradient_accumulation_steps", "2", "--streaming", "true"]
    ranks = run(tmp_path, "streamed", STOP_AND_RESUME, str(data), *flags)
    whole = ranks[0]["whole"]["losses"]
    assert sorted(map(int, whole)) == list(range(1, 9)) and ranks[1]["whole"]["steps"] == list(range(1, 9))
    check_resumed(ranks, whole)


def test_prepared_rows_resume_exactly_on_the_same_and_on_another_number_of_ranks(tmp_path):
    """2 ranks x accumulation 2 = 1 rank x accumulation 4 (the same global batch): stopped on 2 ranks and resumed on
    1, or stopped on 1 and resumed on 2 (elastic resume), each step's loss is the uninterrupted run's; resumed on
    2 ranks, it is the same loss exactly. A changed global batch is refused with one line giving both."""
    data = tmp_path / "corpus"
    write_stream(data, [300, 40])
    two, one = [*FLAGS, "--gradient_accumulation_steps", "2"], [*FLAGS, "--gradient_accumulation_steps", "4"]
    plan = [*STOP_AND_RESUME, ["stopped21", "cut21", 4, False]]
    ranks = run(tmp_path, "two", plan, str(data), *two, *WORKERS)
    whole = ranks[0]["whole"]["losses"]
    check_resumed(ranks, whole)
    plan = [["resumed21", "cut21", None, True], ["stopped12", "cut12", 4, False]]
    alone = run(tmp_path, "one", plan, str(data), *one, nproc=1)[0]  # the elastic runs read without workers
    resumed = run(tmp_path, "back", [["resumed12", "cut12", None, True]], str(data), *two)[0]
    assert alone["resumed21"]["steps"] == [5, 6, 7, 8] and resumed["resumed12"]["steps"] == [5, 6, 7, 8]
    for losses in (alone["stopped12"]["losses"], alone["resumed21"]["losses"], resumed["resumed12"]["losses"]):
        assert losses == pytest.approx({k: v for k, v in whole.items() if k in losses}, rel=1e-5)

    from .train_helpers import fast_args, run_inprocess

    flags = [*FLAGS, "--train_file", str(data), "--max_steps", "8", "--save_steps", "4", "--seed", "5"]
    flags += ["--data_cache_dir", str(tmp_path / "out" / "cache"), "--resume_from_checkpoint", "auto"]
    with pytest.raises(
        UsageError, match=r"global batch of 8 rows \(2 per device x 2 ranks x 2 accumulation\), this run has 4"
    ):
        run_inprocess(
            fast_args(
                tmp_path / "out" / "cut12",
                str(tmp_path / "out" / "one-config0" / "model_config.json"),
                *flags,
                "--gradient_accumulation_steps",
                "2",
            )
        )


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
