"""One rank of tests/test_data_resume.py (torchrun, CPU processes over gloo): runs train.py's work for each entry
of PLAN, a JSON list of [label, run directory name, stop after step (or null), resume (bool)], and writes each
run's optimizer steps and per-step losses to <out>/<tag>-rank<R>.json.

    python -m torch.distributed.run --nproc_per_node N tests/data_resume_worker.py OUT TAG PLAN DATA [train.py flags]
"""

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback


class Record(TrainerCallback):
    """The optimizer steps this process took and the loss logged at each step; stops after `stop_at`."""

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


def main(out: Path, tag: str, plan: list, data: str, flags: list[str]) -> None:
    from moai_llm.training.cli import parse_args
    from moai_llm.training.run import run_training
    from tests.train_helpers import fast_args, write_tiny_config

    rank = int(os.environ["RANK"])
    (out / f"{tag}-config{rank}").mkdir(exist_ok=True)
    config = write_tiny_config(out / f"{tag}-config{rank}")
    base = [*flags, "--train_file", data, "--ddp_backend", "gloo", "--seed", "5", "--max_steps", "8"]
    base += ["--save_steps", "4", "--data_cache_dir", str(out / "cache")]
    result = {}
    for label, directory, stop_at, resume in plan:
        record = Record(stop_at)
        extra = ["--resume_from_checkpoint", "auto"] if resume else []
        model_args, data_args, args = parse_args(fast_args(out / directory, config, *base, *extra))
        run_training(model_args, data_args, args, extra_callbacks=[record])
        result[label] = {"steps": record.steps, "losses": record.losses}
    (out / f"{tag}-rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5:])
