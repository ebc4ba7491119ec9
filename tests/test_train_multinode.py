"""Two "nodes" without a shared filesystem: two torchrun agents on this machine (node rank 0 and 1, one gloo worker
each), each node with its own output_dir standing in for its local disk. `--resume_from_checkpoint auto` is decided
by rank 0; a node that lacks that checkpoint stops every rank with one line naming it, instead of starting fresh."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from moai_llm.loading import COMPLETE_MARKER

from .conftest import REPO
from .train_helpers import fast_args, write_tiny_config

pytestmark = pytest.mark.integration  # two torchrun agents


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_nodes(tmp_path, model_config, *flags, timeout=240) -> list[tuple[int, str]]:
    """Start node 0 and node 1 (output_dir node0/ and node1/), wait for both; [(exit code, output)] per node."""
    port, env = free_port(), {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    nodes = []
    for rank in (0, 1):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node_rank",
            str(rank),
            "--nproc_per_node",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "--max_restarts",
            "0",
            str(REPO / "train.py"),
            *fast_args(tmp_path / f"node{rank}", model_config, "--ddp_backend", "gloo", *flags),
        ]
        nodes.append(
            subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    deadline, results = time.monotonic() + timeout, []
    try:
        for process in nodes:
            output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((process.returncode, output))
    finally:
        for process in nodes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    return results


def test_resume_auto_across_nodes_without_a_shared_filesystem(tmp_path):
    config = write_tiny_config(tmp_path)
    steps = ["--max_steps", "2", "--save_steps", "2", "--seed", "3"]
    for code, output in run_two_nodes(tmp_path, config, *steps):
        assert code == 0, output[-3000:]
    assert (tmp_path / "node0" / "checkpoint-2" / COMPLETE_MARKER).is_file()
    assert not (tmp_path / "node1" / "checkpoint-2" / COMPLETE_MARKER).exists()  # only rank 0 saved

    # Node 1 cannot see rank 0's checkpoint: every rank stops at once, with one line naming node 1 and its path.
    started = time.monotonic()
    resumed = ["--max_steps", "3", "--save_steps", "1", "--seed", "3", "--resume_from_checkpoint", "auto"]
    results = run_two_nodes(tmp_path, config, *resumed)
    assert time.monotonic() - started < 120
    missing = f"node rank 1, rank 1): {tmp_path / 'node1' / 'checkpoint-2'}"
    for code, output in results:
        assert code != 0
        errors = [line for line in output.splitlines() if "train.py: error:" in line]
        assert len(errors) == 1, output[-3000:]
        assert "checkpoint-2 (the latest complete checkpoint on rank 0)" in errors[0], errors[0]
        assert socket.gethostname() in errors[0] and missing in errors[0], errors[0]
    assert not (tmp_path / "node0" / "checkpoint-3").exists()

    # Copied to node 1 (or a shared filesystem): both ranks resume at step 2 and, saving on each node, each node
    # gets its own complete checkpoint and final model, the same weights on both.
    shutil.copytree(tmp_path / "node0" / "checkpoint-2", tmp_path / "node1" / "checkpoint-2", dirs_exist_ok=True)
    for rank, (code, output) in enumerate(run_two_nodes(tmp_path, config, *resumed, "--save_on_each_node", "true")):
        assert code == 0, output[-3000:]
        assert f"resuming from {tmp_path / f'node{rank}' / 'checkpoint-2'}" in output
        assert output.count("{'loss': ") == 1, output[-3000:]  # only step 3 trained (logged every step)
        assert (tmp_path / f"node{rank}" / "checkpoint-3" / COMPLETE_MARKER).is_file()
    ours, theirs = (load_file(str(tmp_path / f"node{r}" / "final_model" / "model.safetensors")) for r in (0, 1))
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
