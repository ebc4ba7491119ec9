"""Part 5: pretrain.sh with NUM_GPUS=1 for 20 steps, planned for this card (the batch table's micro-batch for its
memory): the peak memory measured against the plan's estimate.

The plan is what `DRY_RUN=1 ./pretrain.sh` prints; its estimate is the memory model's `total:` under the plan's
"estimate per GPU" heading (or the first size on a line that says "estimate"); a plan that prints none is recorded
as such. Gradient accumulation is
set to 1 (the peak does not depend on it, and 20 steps of the table's effective batch would take half an hour).
Measured: the GPU's memory.used peak from nvidia-smi every 0.25 s (what must fit the card: the CUDA context and
the allocator's cache included) and the Trainer's own memory metrics (torch.cuda peak allocated)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from common import REPO, Report, part_arguments, time_left

ESTIMATE = re.compile(r"(\d+(?:\.\d+)?)\s*(GiB|GB|MiB|MB)\b")
TO_GIB = {"GiB": 1.0, "GB": 1e9 / 2**30, "MiB": 1 / 1024, "MB": 1e6 / 2**30}


def plan_estimate(text: str) -> tuple[float | None, str | None]:
    """(GiB, the line) of the plan's estimate: the `total:` line of its "estimate per GPU" block, or the first size
    on a line that says estimate; (None, None) when the plan gives none."""
    in_estimate = False
    for line in text.splitlines():
        in_estimate = in_estimate or "estimat" in line.lower()
        match = ESTIMATE.search(line)
        if in_estimate and match and ("estimat" in line.lower() or line.strip().startswith("total:")):
            return float(match.group(1)) * TO_GIB[match.group(2)], line.strip()
    return None, None


class GpuMemoryPoller(threading.Thread):
    """The largest nvidia-smi memory.used (MiB) seen while the run lasts."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mib, self.stopped = 0, threading.Event()

    def run(self):
        while not self.stopped.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0 and out.stdout.strip():
                self.peak_mib = max(self.peak_mib, int(out.stdout.split()[0]))
            self.stopped.wait(0.25)


def main() -> int:
    args = part_arguments(__doc__)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    workdir = Path(args.workdir)
    size = os.environ.get("GPU_SUITE_MODEL_SIZE", "2b" if cuda else "tiny")
    env = {**os.environ, "NUM_GPUS": "1", "MODEL_SIZE": size, "MAX_STEPS": "20" if cuda else "2"}
    env |= {"GRADIENT_ACCUMULATION_STEPS": "1", "OUTPUT_DIR": str(workdir / "run"), "PYTHON": sys.executable}
    env["SHUTDOWN_TIMEOUT"] = "5"  # stopped at the budget: no checkpoint of a 2B model, the workers go at once
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])  # torchrun of this python
    if not cuda:
        env |= {"ALLOW_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}
    flags = ["--", "--logging_steps", "5" if cuda else "1", "--save_steps", "100000", "--eval_strategy", "no"]
    flags += ["--skip_memory_metrics", "false", "--disable_tqdm", "true"]
    flags += ["--dataloader_num_workers", "2" if cuda else "0"]
    columns = {"what": "what", "value": "value", "note": "note"}
    report = Report(args, f"pretrain.sh, NUM_GPUS=1, MODEL_SIZE={size}, {env['MAX_STEPS']} steps", columns)

    dry_env = {**env, "DRY_RUN": "1"} | ({} if cuda else {"GPU_MEMORY": "141"})  # smoke: plan for an H200
    dry = subprocess.run(["bash", "pretrain.sh"], cwd=REPO, env=dry_env, capture_output=True, text=True)
    if dry.returncode != 0:
        report.fail(f"DRY_RUN=1 pretrain.sh exited {dry.returncode}: {dry.stderr.strip()[:300]}")
        return report.finish()
    plan = [line for line in dry.stdout.splitlines() if line.strip() and not line.startswith("command:")]
    for line in plan:
        report.add(what="plan", note=line.strip())
    estimate, line = plan_estimate(dry.stdout)
    report.add(what="plan's memory estimate GiB", value=estimate, note=line or "the plan prints no estimate")

    poller = GpuMemoryPoller() if cuda and shutil.which("nvidia-smi") else None
    if poller:
        poller.start()
    start = time.perf_counter()
    run = subprocess.Popen(["bash", "pretrain.sh", *flags], cwd=REPO, env=env)
    try:
        returncode = run.wait(timeout=max(time_left(args) - 20, 10))
    except subprocess.TimeoutExpired:  # torchrun forwards SIGTERM, then kills the workers after SHUTDOWN_TIMEOUT
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=12)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
        returncode = "stopped at the part's budget"
    seconds = time.perf_counter() - start
    if poller:
        poller.stopped.set()
        poller.join()
    report.add(what="pretrain.sh exit status", value=returncode, note=f"{seconds:.0f} s")
    if returncode != 0:
        report.fail(f"pretrain.sh: {'exit ' if isinstance(returncode, int) else ''}{returncode}")
    state = workdir / "run" / "trainer_state.json"
    history = json.loads(state.read_text())["log_history"] if state.exists() else []
    logged = [entry for entry in history if "tokens_per_second" in entry]
    if logged:
        report.add(what="tokens/s (last logged interval)", value=logged[-1]["tokens_per_second"])
        report.add(what="MFU", value=logged[-1].get("mfu"))
    metrics = next((entry for entry in reversed(history) if "train_runtime" in entry), {})
    peaked = [metrics.get(key) for key in ("init_mem_gpu_alloc_delta", "train_mem_gpu_alloc_delta")]
    if all(value is not None for value in peaked) and "train_mem_gpu_peaked_delta" in metrics:
        allocated = (sum(peaked) + metrics["train_mem_gpu_peaked_delta"]) / 2**30
        report.add(what="peak allocated GiB (Trainer memory metrics)", value=allocated)
    if poller:
        measured = poller.peak_mib / 1024
        report.add(what="peak memory.used GiB (nvidia-smi)", value=measured)
        if estimate:
            report.add(what="measured / estimate", value=measured / estimate)
        card = torch.cuda.get_device_properties(0).total_memory / 2**30
        report.add(what="card GiB", value=card)
    elif not cuda:
        report.note("CPU smoke: ALLOW_CPU=1, one CPU process over gloo; memory is measured on CUDA only")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
