"""Launching a script on 2 CPU processes (torchrun, gloo) from a test: bounded in time, nothing left behind."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def torchrun(script: str, args, tmp_path: Path, timeout: float = 240, nproc: int = 2) -> subprocess.CompletedProcess:
    """Run `script` (Python source) under torchrun; on timeout the whole process group is killed."""
    path = tmp_path / "launched.py"
    path.write_text(script)
    path_list = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path_list), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "--max_restarts",
        "0",
        str(path),
        *map(str, args),
    ]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"torchrun timed out after {timeout} s:\n{output[-4000:]}") from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, output, "")
