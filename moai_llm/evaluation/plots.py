"""matplotlib PNGs against tokens seen or per task: the training dashboard (one figure, so train.py pays for one
render), loss by run, benchmark and bits-per-byte bars, metrics by checkpoint. Figures are `matplotlib.figure.Figure`
objects (Agg, no pyplot global state), so plotting inside a training process changes nothing else there."""

import logging
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from .history import series, token_axis, training_panels
from .report import baseline, scored_metrics, stderr_of, task_names
from .suites import headline_metric

logger = logging.getLogger(__name__)


def _grid(count: int, columns: int, width: float, height: float):
    """A figure for `count` panels in rows of `columns` (each panel width x height inches), unused cells hidden."""
    rows = -(-count // columns)
    fig = Figure(figsize=(width * columns, height * rows))
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _over_tokens(ax, title: str, xlabel: str, ylabel: str | None = None) -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.grid(alpha=0.3)


def plot_training(history: list[dict], arguments: dict, path: str | Path, title: str = "Training") -> Path | None:
    """Write the dashboard PNG; None (nothing written) when the history has none of the plotted keys."""
    panels, xlabel = training_panels(history, arguments)
    if not panels:
        return None
    fig, axes = _grid(len(panels), 2 if len(panels) <= 4 else 3, 6.5, 4.2)
    for ax, (name, lines, ylabel) in zip(axes, panels):
        for (x, y), label in lines:
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, linewidth=1.5, label=label)
        if name.startswith("MoE"):
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="balanced")
        _over_tokens(ax, name, xlabel, ylabel)
        if len(lines) > 1 or name.startswith(("MoE", "Benchmarks")):
            ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_loss_comparison(runs: dict[str, tuple[list[dict], dict]], path: str | Path) -> Path | None:
    """Train (solid) and eval (dashed) loss of several runs against tokens seen, one colour per run."""
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    for index, (name, (history, arguments)) in enumerate(runs.items()):
        axis, _ = token_axis(history, arguments)
        for key, style, suffix in (("loss", "-", "train"), ("eval_loss", "--", "eval")):
            x, y = series(history, key, axis)
            if len(x):
                ax.plot(x, y, style, color=f"C{index % 10}", linewidth=1.5, label=f"{name} ({suffix})")
    if not ax.lines:
        return None
    _over_tokens(ax, "Loss by run", "tokens seen (each run's own count)", "cross-entropy (nats)")
    ax.legend()
    return _save(fig, path)


def _bars(groups: list[str], series_by_name: dict[str, list], errors: dict[str, list] | None, group_width: float):
    """A figure of grouped bars: one group per label in `groups`, one bar per series; None values are left out."""
    fig = Figure(figsize=(max(6.0, group_width * len(groups) * max(1, len(series_by_name) / 2)), 4.5))
    ax = fig.subplots()
    width = 0.8 / max(len(series_by_name), 1)
    for index, (name, values) in enumerate(series_by_name.items()):
        offset = (index - (len(series_by_name) - 1) / 2) * width
        spread = (errors or {}).get(name) or [None] * len(values)
        shown = [(i + offset, v, e) for i, (v, e) in enumerate(zip(values, spread)) if isinstance(v, (int, float))]
        if shown:
            xs, ys, es = zip(*shown)
            yerr = [e if isinstance(e, (int, float)) else 0.0 for e in es] if errors else None
            ax.bar(xs, ys, width, yerr=yerr, capsize=3, label=name, color=f"C{index % 10}")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def plot_benchmarks(runs: dict[str, dict], path: str | Path) -> Path | None:
    """Each task's headline score (± its standard error) per run, against the random-guess baseline (a black
    tick): one run for a report, several for --compare."""
    tasks = task_names(runs.values())
    if not tasks:
        return None
    labels, values, errors, baselines = [], {name: [] for name in runs}, {name: [] for name in runs}, []
    for task in tasks:
        metric = headline_metric(task, scored_metrics(runs.values(), task))
        labels.append(f"{task}\n{metric}")
        for name, r in runs.items():
            values[name].append(r["tasks"].get(task, {}).get(metric))
            errors[name].append(stderr_of(r["tasks"].get(task, {}), metric))
        baselines.append(baseline(runs.values(), task, metric))
    fig, ax = _bars(labels, values, errors, 1.6)
    for i, guess in enumerate(baselines):
        if guess is not None:
            ax.hlines(guess, i - 0.45, i + 0.45, colors="black", linestyles="--", linewidth=1.2)
    ax.plot([], [], "k--", label="random guess")
    ax.set(ylabel="score (headline metric)", title="Benchmarks (± standard error)")
    ax.legend()
    return _save(fig, path)


def plot_perplexity(runs: dict[str, dict], path: str | Path) -> Path | None:
    """Bits per byte per evaluated file, one bar per run (lower is better; comparable across tokenizers)."""
    files = list(dict.fromkeys(f for r in runs.values() for f in r.get("perplexity", {})))
    if not files:
        return None
    values = {n: [(r.get("perplexity") or {}).get(f, {}).get("bits_per_byte") for f in files] for n, r in runs.items()}
    fig, ax = _bars([Path(f).name for f in files], values, None, 1.5)
    ax.set(ylabel="bits per byte (lower is better)", title="Held-out text")
    if len(runs) > 1:
        ax.legend()
    return _save(fig, path)


def plot_metrics_over_tokens(points: list[dict], path: str | Path) -> Path | None:
    """One panel per metric, its value at each checkpoint against the tokens it had seen (eval.py
    --checkpoints). `points`: [{"tokens_seen": N, "label": "checkpoint-4", "metrics": {name: value}}]."""
    names = list(dict.fromkeys(m for p in points for m, v in p["metrics"].items() if isinstance(v, (int, float))))
    if not names:
        return None
    fig, axes = _grid(len(names), min(3, len(names)), 5.5, 4.0)
    for ax, name in zip(axes, names):
        xy = sorted((p["tokens_seen"], p["metrics"][name]) for p in points if isinstance(p["metrics"].get(name), float))
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", linewidth=1.5)
        _over_tokens(ax, name, "tokens seen")
    fig.suptitle("Metrics by checkpoint")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    logger.info("plot written to %s", path)
    return path
