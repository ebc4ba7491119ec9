"""Shared pieces of the training tests: a hidden-64 model config file, train.py argument lists, log readers."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import TrainerCallback

from .conftest import REPO, tiny_config

# Flags for runs that must take equal steps (N ranks against one process). fp32 (--bf16 false): not bf16 rounding.
# Plain SGD, not AdamW: Adam's step ignores the gradient's scale (ranks that summed instead of averaging would still
# match) and turns reduction-order noise in a near-zero gradient into a full lr-sized step (one embedding weight
# 3.3e-3 apart from one process in 2 of 8 runs). With SGD the two runs agree to 3e-8, and one process on half the
# batch, or at twice the learning rate (a sum over 2 ranks), is 0.07 / 0.19 apart.
EQUAL_STEPS = ["--bf16", "false", "--optim", "sgd", "--learning_rate", "0.5"]


def write_tiny_config(directory: Path, **overrides) -> str:
    """A 2-layer hidden-64 MoaiConfig JSON with the bundled tokenizer's vocabulary (8192)."""
    path = directory / "model_config.json"
    path.write_text(tiny_config(vocab_size=8192, **overrides).to_json_string())
    return str(path)


def fast_args(output_dir, model_config, *extra) -> list[str]:
    """train.py flags for a few-second CPU run of the tiny config on the bundled corpus. A flag in `extra` replaces
    the default of the same name (train.py refuses a flag given twice)."""
    defaults = {
        "--model_config": model_config,
        "--output_dir": str(output_dir),
        "--max_seq_length": "64",
        "--batch_size": "2",
        "--logging_steps": "1",
        "--eval_strategy": "no",
        "--save_steps": "1000",
        "--use_cpu": "true",
        "--bf16": "false",
        "--disable_tqdm": "true",
        "--dataloader_num_workers": "0",
    }
    given = {token.split("=", 1)[0] for token in extra if token.startswith("--")}
    return [*(part for flag, value in defaults.items() if flag not in given for part in (flag, value)), *extra]


def run_cli(args, timeout=240, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def final_losses(run_dir: Path) -> list[float]:
    """Training losses by step, from the trainer_state.json train.py writes into output_dir at the end of a run."""
    history = json.loads((Path(run_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def losses(run_dir: Path) -> list[float]:
    """Training losses logged in the last checkpoint's or final trainer_state.json, by step."""
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    history = json.loads(states[-1].read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def run_inprocess(args):
    """train.py's work without a new interpreter (saves the ~5 s import time per run)."""
    from moai_llm.training.cli import parse_args
    from moai_llm.training.stages import run_all

    return run_all(*parse_args(args))


class StepRecorder(TrainerCallback):
    """The optimizer steps one process took (a resumed run takes only the remaining ones)."""

    def __init__(self):
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@contextlib.contextmanager
def recording_steps():
    """Inside: every run started by run_inprocess (run_all) records its optimizer steps; yields the list of
    StepRecorders, one per run."""
    from moai_llm.training import stages

    recorders, run_training = [], stages.run_training

    def recorded(*args, **kwargs):
        recorders.append(StepRecorder())
        return run_training(*args, extra_callbacks=[recorders[-1]], **kwargs)

    stages.run_training = recorded
    try:
        yield recorders
    finally:
        stages.run_training = run_training


def resume_matches_uninterrupted(tmp_path: Path, model_config: str, *flags: str) -> None:
    """6 steps with a checkpoint at 3, and the same run resumed from a copy of checkpoint-3: bitwise equal weights."""
    import shutil

    import torch
    from safetensors.torch import load_file

    steps = ["--max_steps", "6", "--save_steps", "3", "--save_total_limit", "3", *flags]
    run_inprocess(fast_args(tmp_path / "ref", model_config, *steps))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "ref" / "checkpoint-3", resumed / "checkpoint-3")
    run_inprocess(fast_args(resumed, model_config, *steps, "--resume_from_checkpoint", str(resumed / "checkpoint-3")))
    ours = load_file(str(resumed / "final_model" / "model.safetensors"))
    theirs = load_file(str(tmp_path / "ref" / "final_model" / "model.safetensors"))
    different = [name for name in theirs if not torch.equal(ours[name], theirs[name])]
    assert not different, different[:5]
