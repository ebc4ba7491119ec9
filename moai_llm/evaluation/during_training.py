"""Benchmarks during training: lm-eval tasks on the model in memory at every evaluation, logged with the step
(and so against tokens seen).

Every rank scores the same documents (under FSDP a forward needs every rank's shards; under DDP the others would
only wait on rank 0, with a collective's timeout over their heads); rank 0 logs."""

import contextlib
import logging
import os
import time

from transformers import TrainerCallback

from .benchmarks import LmEvalOptions, check_tasks, run_benchmarks
from .suites import TaskSpec, headline_score

logger = logging.getLogger(__name__)
LOG_PREFIX = "bench/"  # log keys: bench/<task>/<metric>


@contextlib.contextmanager
def scored_as_one_process():
    """lm-eval treats a process whose LOCAL_RANK is not 0 as a tensor-parallel helper and returns no results there;
    each rank here scores the whole task on its own, so it must see itself as the only process."""
    saved = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["LOCAL_RANK"]
        else:
            os.environ["LOCAL_RANK"] = saved


class BenchmarkCallback(TrainerCallback):
    """After the Trainer's own evaluation, score the tasks and log `bench/<task>/<metric>` and their time."""

    def __init__(self, trainer, specs: list[TaskSpec], include_path: tuple[str, ...] = (), batch_size: int = 8):
        check_tasks(specs, include_path)  # an unknown task is a one-line error before the first step
        self.trainer, self.specs, self.include_path, self.batch_size = trainer, specs, include_path, batch_size

    def on_evaluate(self, args, state, control, **kwargs):
        model = self.trainer.model
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        try:
            with scored_as_one_process():
                results = run_benchmarks(
                    model,
                    self.trainer.processing_class,
                    self.specs,
                    self.include_path,
                    self.batch_size,
                    LmEvalOptions(seed=args.seed),
                )
        finally:
            model.train(was_training)
        logs = {}
        for name in results.summary:
            metrics = results.tasks[name]
            for metric, value in metrics.items():
                if isinstance(value, float) and not metric.split(",")[0].endswith("_stderr"):
                    logs[f"{LOG_PREFIX}{name}/{metric}"] = round(value, 6)
            headline = headline_score(name, metrics)
            if headline is not None:
                logs[f"{LOG_PREFIX}{name}"] = round(headline, 6)  # the headline, for plots and reports
        for name, reason in results.failed.items():
            logger.warning("benchmark %s failed during training: %s", name, reason)
        logs["bench_seconds"] = round(time.perf_counter() - start, 2)
        throughput = getattr(self.trainer, "throughput", None)
        if throughput is not None:
            logs["tokens_seen"] = throughput.tokens_seen + int(throughput.tokens) * throughput.world_size
        self.trainer.log(logs)
