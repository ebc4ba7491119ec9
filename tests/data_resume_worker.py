"""One rank of tests/test_data_resume.py (torchrun, CPU processes over gloo): an uninterrupted run, the same run
stopped after its checkpoint at step 4, and its resume; writes per-step losses and the steps each process trained
to <out>/<name>-rank<R>.json.

    python -m torch.distributed.run --nproc_per_node N tests/data_resume_worker.py OUT NAME DATA [train.py flags]
"""

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback


class Record(TrainerCallback):
    """The optimizer steps this process took and the loss logged at each step."""

    def __init__(self, stop_at: int | None = None):
        self.steps, self.losses, self.stop_at = [], {}, stop_at

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        if state.global_step == self.stop_at:  # preempted right after this checkpoint
            control.should_save = control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = logs["loss"]


def main(out: Path, name: str, data: str, flags: list[str]) -> None:
    from moai_llm.training.cli import parse_args
    from moai_llm.training.run import run_training
    from tests.train_helpers import fast_args, write_tiny_config

    rank = int(os.environ["RANK"])
    (out / f"config{rank}").mkdir(exist_ok=True)
    config = write_tiny_config(out / f"config{rank}")
    base = [*flags, "--train_file", data, "--ddp_backend", "gloo", "--seed", "5", "--max_steps", "8"]
    base += ["--save_steps", "4", "--data_cache_dir", str(out / "cache")]
    result = {}
    for run, extra, stop_at in (
        ("whole", [], None),
        ("cut", [], 4),
        ("cut", ["--resume_from_checkpoint", "auto"], None),
    ):
        record = Record(stop_at)
        model_args, data_args, args = parse_args(fast_args(out / f"{name}-{run}", config, *base, *extra))
        run_training(model_args, data_args, args, extra_callbacks=[record])
        key = "resumed" if extra else run if stop_at is None else "stopped"
        result[key] = {"steps": record.steps, "losses": record.losses}
    (out / f"{name}-rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:])
