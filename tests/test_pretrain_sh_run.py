"""pretrain.sh on CPU: 2 gloo processes match a single process at the same global batch; a dead rank ends the job."""

import json
import os
import re
import signal
import subprocess
import time

import pytest
from safetensors.torch import load_file

from moai_llm.loading import COMPLETE_MARKER

from .conftest import REPO
from .train_helpers import EQUAL_STEPS, final_losses, run_cli, write_tiny_config

pytestmark = pytest.mark.integration  # pretrain.sh launches torchrun

STEPS = 4


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NUM_GPUS", "GPU_MEMORY", "MODEL_SIZE")}
    env.update({"ALLOW_CPU": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra})
    return env


def _common():
    """train.py flags after pretrain.sh's `--`: fp32 and plain SGD, since the comparison is of the data split and
    gradient averaging (see `EQUAL_STEPS`). The model config and sequence length go in MODEL_CONFIG and SEQ_LEN."""
    return [
        *EQUAL_STEPS,
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
    ]


def test_two_cpu_processes_match_one_process(tmp_path):
    model_config = write_tiny_config(tmp_path)
    two = tmp_path / "two"
    result = subprocess.run(
        ["bash", str(REPO / "pretrain.sh"), "--", *_common()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
        env=_env(
            tmp_path,
            NUM_GPUS="2",
            BATCH_SIZE="2",
            GRADIENT_ACCUMULATION_STEPS="1",
            MAX_STEPS=str(STEPS),
            OUTPUT_DIR=str(two),
            SEQ_LEN="64",
            MODEL_CONFIG=model_config,
            RESUME="no",
        ),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 cpu process(es)" in result.stdout and "--ddp_backend gloo" in result.stdout
    assert (two / "final_model" / "model.safetensors").is_file()
    assert not list(two.glob("final_model*/rank*"))  # one final_model, written by rank 0 only
    one = tmp_path / "one"
    single = run_cli(
        [
            "--output_dir",
            str(one),
            "--batch_size",
            "4",
            "--max_steps",
            str(STEPS),
            "--use_cpu",
            "true",
            "--model_config",
            model_config,
            "--max_seq_length",
            "64",
            *_common(),
        ],
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = load_file(str(two / "final_model/model.safetensors")), load_file(str(one / "final_model/model.safetensors"))
    diffs = {name: (a[name] - b[name]).abs().max().item() for name in a}
    assert max(diffs.values()) <= 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    assert final_losses(two) == pytest.approx(
        final_losses(one), abs=1e-5
    )  # each step's loss is the mean over both ranks' rows


def test_a_dead_rank_ends_the_job(tmp_path):
    model_config = write_tiny_config(tmp_path)
    out = tmp_path / "dead"
    process = subprocess.Popen(
        ["bash", str(REPO / "pretrain.sh"), "--", *_common()],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=_env(
            tmp_path,
            NUM_GPUS="2",
            BATCH_SIZE="1",
            GRADIENT_ACCUMULATION_STEPS="1",
            MAX_STEPS="100000",
            OUTPUT_DIR=str(out),
            SEQ_LEN="64",
            MODEL_CONFIG=model_config,
            RESUME="no",
        ),
    )
    try:
        deadline = time.monotonic() + 240
        worker = None
        while worker is None and time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()[-3000:]
            worker = _rank_one(out)
            time.sleep(0.5)
        assert worker, "no rank-1 worker appeared"
        time.sleep(8)  # let it get into training (collectives in flight)
        os.kill(worker, signal.SIGKILL)
        killed_at = time.monotonic()
        code = process.wait(timeout=120)
        assert code != 0
        assert time.monotonic() - killed_at < 120
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _rank_one(output_dir) -> int | None:
    """The pid of this job's train.py worker with RANK=1 (workers inherit the launcher's OUTPUT_DIR)."""
    marker = f"OUTPUT_DIR={output_dir}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if not any(part.endswith(b"train.py") for part in cmdline):
                continue
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"RANK=1" in environ and marker in environ:
            return int(pid)
    return None


SLOW_SAVE = """
import os, time
if "LOCAL_RANK" in os.environ:  # torchrun workers only: the checkpoint save takes SAVE_SECONDS longer
    from moai_llm.training import trainer

    original = trainer.MoaiTrainer._save_checkpoint

    def slow_save(self, *args, **kwargs):
        open(os.environ["SAVE_STARTED"], "w").close()
        time.sleep(float(os.environ["SAVE_SECONDS"]))
        return original(self, *args, **kwargs)

    trainer.MoaiTrainer._save_checkpoint = slow_save
"""


def test_preemption_signals_to_the_whole_group_end_in_a_checkpoint_and_exit_0(tmp_path):
    """As SLURM and Kubernetes preempt: SIGTERM to the job's whole process group, then again while the checkpoint is
    being written (a test-only sitecustomize makes the save last 4 s), on 2 CPU ranks. torchrun runs in its own
    session, pretrain.sh forwards one SIGTERM to the workers and logs one line per signal: the checkpoint is
    complete, everything exits 0, and RESUME=auto continues from it."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_SAVE)
    model_config, out, log = write_tiny_config(tmp_path), tmp_path / "run", tmp_path / "log.txt"
    started = tmp_path / "save_started"
    env = _env(
        tmp_path,
        NUM_GPUS="2",
        BATCH_SIZE="1",
        GRADIENT_ACCUMULATION_STEPS="1",
        MAX_STEPS="100000",
        OUTPUT_DIR=str(out),
        SEQ_LEN="64",
        MODEL_CONFIG=model_config,
        RESUME="no",
        SAVE_STARTED=str(started),
        SAVE_SECONDS="4",
        PYTHONPATH=f"{hooks}:{REPO}",
    )
    flags = [*_common(), "--save_steps", "1000000"]
    flags[flags.index("--save_strategy") + 1] = "steps"  # only the signal saves
    with open(log, "w") as handle:
        process = subprocess.Popen(
            ["bash", str(REPO / "pretrain.sh"), "--", *flags],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the job's process group, as a scheduler sees it
        )
    try:
        deadline = time.monotonic() + 240
        while "'loss'" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        os.killpg(process.pid, signal.SIGTERM)
        while not started.exists():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1)
        os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert output.count("pretrain.sh: received SIGTERM: the workers finish their step") == 1, output[-3000:]
    assert output.count("pretrain.sh: received SIGTERM again: still saving, ignored") == 1
    assert "Traceback" not in output and "SignalException" not in output, output[-3000:]
    step = int(re.search(r"stopped at step (\d+)", output).group(1))
    assert (out / f"checkpoint-{step}" / COMPLETE_MARKER).is_file(), output[-3000:]
    assert (out / f"checkpoint-{step}" / "model.safetensors").is_file()
    env.update(RESUME="auto", MAX_STEPS=str(step + 1), PYTHONPATH=str(REPO))
    resumed = subprocess.run(
        ["bash", str(REPO / "pretrain.sh"), "--", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert (out / "final_model" / "model.safetensors").is_file()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss" in entry][-1] == step + 1  # one more step, from the checkpoint
