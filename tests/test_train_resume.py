"""Resume: SIGKILL after a checkpoint + `--resume_from_checkpoint auto` ends identical to an uninterrupted run;
SIGTERM saves a checkpoint and exits 0 (on 2 ranks: both at the same step); a half-written checkpoint is never
picked."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from moai_llm.loading import COMPLETE_MARKER
from moai_llm.training.trainer import latest_complete_checkpoint

from .conftest import REPO
from .train_helpers import fast_args, losses, recording_steps, run_inprocess, write_tiny_config

pytestmark = pytest.mark.integration  # train.py subprocesses killed and resumed

STEPS = "16"


def start(args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(path, process, timeout=180):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def weights(run_dir):
    return load_file(str(run_dir / "final_model" / "model.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, caplog):
    config = write_tiny_config(tmp_path)
    flags = ["--max_steps", STEPS, "--save_steps", "4", "--save_total_limit", "2"]
    run_inprocess(fast_args(tmp_path / "ref", config, *flags))

    run_dir = tmp_path / "killed"
    process = start(fast_args(run_dir, config, *flags))
    wait_for(run_dir / "checkpoint-4" / COMPLETE_MARKER, process)
    process.kill()
    process.wait()
    assert not (run_dir / "final_model").exists()
    half = run_dir / "checkpoint-1000"  # what a kill in the middle of a save leaves behind
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"truncated")
    assert not latest_complete_checkpoint(str(run_dir)).endswith("checkpoint-1000")

    with caplog.at_level(logging.WARNING), recording_steps() as runs:
        run_inprocess(fast_args(run_dir, config, *flags, "--resume_from_checkpoint", "auto"))
    assert "checkpoint-1000" in caplog.text  # reported as ignored
    assert runs[0].steps == list(range(5, 17))  # resumed at checkpoint-4: only the remaining steps
    assert losses(run_dir)[-1] == losses(tmp_path / "ref")[-1]
    ours, theirs = weights(run_dir), weights(tmp_path / "ref")
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def test_sigterm_saves_checkpoint_and_exits_zero(tmp_path):
    config = write_tiny_config(tmp_path)
    run_dir = tmp_path / "run"
    process = start(fast_args(run_dir, config, "--max_steps", "400", "--save_steps", "2"))
    wait_for(run_dir / "checkpoint-2" / COMPLETE_MARKER, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-2000:]
    assert "stopped at step" in output and not (run_dir / "final_model").exists()
    latest = latest_complete_checkpoint(str(run_dir))
    step = int(latest.rsplit("-", 1)[1])
    assert 2 <= step < 400 and f"stopped at step {step}" in output


# train.py's run under torchrun; rank 1 alone receives SIGTERM as its 3rd step starts (torchrun does not always
# forward a signal to every worker). Each rank prints the step it stopped at.
ONE_RANK_SIGNALLED = """
import os, signal, sys
from transformers import TrainerCallback
from moai_llm.training import stages
from tests.train_helpers import run_inprocess


class SignalRankOne(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if args.process_index == 1 and state.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_end(self, args, state, control, **kwargs):
        print(f"rank {args.process_index} stopped at step {state.global_step}", flush=True)


run_training = stages.run_training
stages.run_training = lambda *a, **k: run_training(*a, extra_callbacks=[SignalRankOne()], **k)
run_inprocess(sys.argv[1:])
"""


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """docs/training.md: under DDP the stop flag is all-reduced, so every rank stops at the same step (rank 0 never
    got the signal) and the checkpoint of that step is complete."""
    from .distributed_helpers import torchrun

    run_dir = tmp_path / "run"
    flags = fast_args(run_dir, write_tiny_config(tmp_path), "--max_steps", "400", "--ddp_backend", "gloo")
    result = torchrun(ONE_RANK_SIGNALLED, flags, tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "rank 0 stopped at step 3" in result.stdout and "rank 1 stopped at step 3" in result.stdout, result.stdout[
        -4000:
    ]
    assert (run_dir / "checkpoint-3" / COMPLETE_MARKER).is_file() and not (run_dir / "final_model").exists()
