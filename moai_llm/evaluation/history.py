"""What a training run left behind, read back: the Trainer's log history, final metrics and arguments. A model
directory's run is its parent (`<output_dir>/final_model`, `<output_dir>/adapter`) or, for a `checkpoint-N`, the
checkpoint itself (its trainer_state.json) plus the parent's files."""

import datetime
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .report import number

RUN_ARGUMENTS = "run_arguments.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class RunRecord:
    directory: Path
    log_history: list[dict] = field(default_factory=list)
    state: dict = field(default_factory=dict)  # trainer_state.json without log_history
    final_metrics: dict = field(default_factory=dict)  # all_results.json
    arguments: dict = field(default_factory=dict)  # run_arguments.json: {"training": ..., "data": ..., "model": ...}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _latest_checkpoint_state(directory: Path) -> Path | None:
    """For runs from before train.py wrote trainer_state.json into output_dir: the last checkpoint's."""
    states = [
        (int(m.group(1)), p / "trainer_state.json")
        for p in directory.glob("checkpoint-*")
        if (m := _CHECKPOINT.match(p.name)) and (p / "trainer_state.json").is_file()
    ]
    return max(states)[1] if states else None


def load_run(model_path: str | Path) -> RunRecord | None:
    """The run record around a model directory, or None when no training files are found."""
    path = Path(model_path).resolve()
    state_file = (
        next((p for p in (path / "trainer_state.json", path.parent / "trainer_state.json") if p.is_file()), None)
        or _latest_checkpoint_state(path.parent)
        or _latest_checkpoint_state(path)
    )
    checkpoint = (path / "trainer_state.json").is_file() and _CHECKPOINT.match(path.name)
    record = RunRecord(directory=path if checkpoint else path.parent)
    for folder in (path, path.parent):
        # a checkpoint's own trainer_state.json is its history; the finished run's all_results.json is not its own
        if not (checkpoint and folder == path.parent):
            record.final_metrics = record.final_metrics or _read_json(folder / "all_results.json") or {}
        record.arguments = record.arguments or _read_json(folder / RUN_ARGUMENTS) or {}
    state = _read_json(state_file) if state_file else None
    if state:
        record.log_history = state.pop("log_history", [])
        record.state = state
    if not (record.log_history or record.final_metrics or record.arguments):
        return None
    return record


def tokens_per_step(arguments: dict) -> int | None:
    """Token slots per optimizer step from the run's arguments (an upper bound: rows may not be full)."""
    training, data = arguments.get("training", {}), arguments.get("data", {})
    try:
        sizes = training["per_device_train_batch_size"], training["gradient_accumulation_steps"], data["max_seq_length"]
        return int(math.prod(sizes) * arguments.get("world_size", 1))
    except (KeyError, TypeError):
        return None


def token_axis(history: list[dict], arguments: dict):
    """(step -> tokens seen, axis label). From the logged cumulative `tokens_seen` when present (interpolated
    between logs), else steps x tokens per step from the arguments, else the step itself."""
    known = sorted({e["step"]: e["tokens_seen"] for e in history if "tokens_seen" in e and "step" in e}.items())
    if known:
        steps = np.array([0] + [s for s, _ in known], dtype=float)
        tokens = np.array([0] + [t for _, t in known], dtype=float)
        rate = tokens[-1] / max(steps[-1], 1)

        def seen(step):
            step = np.asarray(step, dtype=float)
            return np.where(step <= steps[-1], np.interp(step, steps, tokens), tokens[-1] + (step - steps[-1]) * rate)

        return seen, "tokens seen"
    per_step = tokens_per_step(arguments)
    if per_step:
        return (lambda step: np.asarray(step, dtype=float) * per_step), "tokens seen (steps x batch tokens)"
    return (lambda step: np.asarray(step, dtype=float)), "optimizer step"


def series(history: list[dict], key: str, axis) -> tuple[np.ndarray, np.ndarray]:
    """x (via `axis`) and y of every log entry that has `key`."""
    entries = [e for e in history if key in e and "step" in e and isinstance(e[key], (int, float))]
    steps = np.array([e["step"] for e in entries], dtype=float)
    return axis(steps), np.array([e[key] for e in entries], dtype=float)


# (title, [(log key, legend label)], y label)
TRAINING_PANELS = (
    ("Loss", [("loss", "train loss"), ("eval_loss", "eval loss")], "cross-entropy (nats)"),
    ("Learning rate", [("learning_rate", "learning rate")], "learning rate"),
    ("Gradient norm", [("grad_norm", "grad norm")], "L2 norm before clipping"),
    ("Throughput", [("tokens_per_second", "tokens/s (all ranks)")], "tokens per second"),
    (
        "MoE expert load (worst layer)",
        [("moe/max_load_over_mean", "max expert load / mean"), ("moe/min_load_over_mean", "min expert load / mean")],
        "load / mean load",
    ),
)


def training_panels(history: list[dict], arguments: dict) -> tuple[list, str]:
    """(panels, x label) of a run's dashboard: [(title, [((x, y), legend label)], y label)], only the panels with
    a logged point. No matplotlib: the training report asks this before it imports the plotting code."""
    axis, xlabel = token_axis(history, arguments)
    bench = sorted({k for e in history for k in e if k.startswith("bench/") and k.count("/") == 1})
    specs = [
        *TRAINING_PANELS,
        ("Benchmarks during training", [(k, k.removeprefix("bench/")) for k in bench], "headline score"),
    ]
    panels = []
    for name, keys, ylabel in specs:
        lines = [(series(history, key, axis), label) for key, label in keys]
        if lines := [(xy, label) for xy, label in lines if len(xy[0])]:  # keys never logged draw no line
            panels.append((name, lines, ylabel))
    return panels, xlabel


def _median(history: list[dict], key: str) -> float | None:
    values = [e[key] for e in history if isinstance(e.get(key), (int, float))]
    if len(values) > 2:
        values = values[1:]  # the first window includes start-up (compilation, data loading)
    return statistics.median(values) if values else None


def _last(history: list[dict], key: str):
    return next((e[key] for e in reversed(history) if key in e), None)


def training_summary(record: RunRecord) -> dict:
    """Named facts for the report; a value is None when the run did not record it."""
    history, training, data = record.log_history, record.arguments.get("training", {}), record.arguments.get("data", {})
    axis, label = token_axis(history, record.arguments)
    step = record.state.get("global_step") or _last(history, "step")
    sources = data.get("mixture") or data.get("train_file") or data.get("dataset")
    per_step = tokens_per_step(record.arguments)
    return {
        "run directory": str(record.directory),
        "mode": training.get("mode"),
        "data": (", ".join(map(str, sources)) if isinstance(sources, list) else sources)
        or ("bundled sample corpus" if data else None),
        "sequence length / packing": f"{data['max_seq_length']} / {'on' if data.get('packing', True) else 'off'}"
        if "max_seq_length" in data
        else None,
        "steps": f"{step} of {record.state.get('max_steps')}" if step and record.state.get("max_steps") else step,
        "epochs": round(e, 3) if isinstance(e := _last(history, "epoch"), float) else e,
        "tokens seen": f"{int(axis(step)):,}" + ("" if label == "tokens seen" else " (estimate)")
        if step and label != "optimizer step"
        else None,
        "tokens per step": f"{per_step:,} slots" if per_step else None,
        "schedule": _schedule(training),
        "optimizer": training.get("optim"),
        "wall time": _duration(record.final_metrics.get("train_runtime")),
        "tokens/s (median of logs)": number(_median(history, "tokens_per_second"), ",.0f"),
        "MFU (median of logs)": number(_median(history, "mfu"), ".1%"),
        "final train loss": number(_last(history, "loss") or record.final_metrics.get("train_loss")),
        "final eval loss": number(record.final_metrics.get("eval_loss") or _last(history, "eval_loss")),
    }


def _schedule(training: dict) -> str | None:
    kind = training.get("lr_scheduler_type")
    if kind is None:
        return None
    text = f"{kind}, peak lr {training.get('learning_rate')}, warmup {training.get('warmup_steps')}"
    if "stable_decay" in str(kind) or kind == "wsd":
        text += f", decay {training.get('wsd_decay_ratio')} of steps ({training.get('wsd_decay_type')}), "
        text += f"final lr ratio {training.get('min_lr_ratio')}"
    return text


def _duration(seconds) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    return f"{datetime.timedelta(seconds=round(seconds))} ({seconds:,.1f} s)"
