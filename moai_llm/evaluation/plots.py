"""Training-history plots: matplotlib PNGs with tokens seen on the x-axis.

One dashboard per run (`training.png`: loss, learning rate, grad norm, tokens/s, and MoE expert balance when the
run logged it), drawn in a single figure so that train.py pays for one render; and an overlay of several runs'
losses for `--compare`. Figures are built with `matplotlib.figure.Figure` (rendered by Agg, no display, no pyplot
global state), so plotting inside a training process changes nothing else there.
"""

import logging
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from .history import series, token_axis, training_panels

logger = logging.getLogger(__name__)


def plot_training(history: list[dict], arguments: dict, path: str | Path, title: str = "Training") -> Path | None:
    """Write the dashboard PNG; None (nothing written) when the history has none of the plotted keys."""
    panels, xlabel = training_panels(history, arguments)
    if not panels:
        return None
    columns = 2 if len(panels) <= 4 else 3
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(6.5 * columns, 4.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (name, lines, ylabel) in zip(axes.flat, panels):
        for (x, y), label in lines:
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, linewidth=1.5, label=label)
        if name.startswith("MoE"):
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="balanced")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.grid(alpha=0.3)
        if len(lines) > 1 or name.startswith(("MoE", "Benchmarks")):
            ax.legend()
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


def plot_loss_comparison(runs: dict[str, tuple[list[dict], dict]], path: str | Path) -> Path | None:
    """Train (solid) and eval (dashed) loss of several runs against tokens seen, one colour per run."""
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    drawn = False
    for index, (name, (history, arguments)) in enumerate(runs.items()):
        axis, _ = token_axis(history, arguments)
        color = f"C{index % 10}"
        for key, style, suffix in (("loss", "-", "train"), ("eval_loss", "--", "eval")):
            x, y = series(history, key, axis)
            if len(x):
                ax.plot(x, y, style, color=color, linewidth=1.5, label=f"{name} ({suffix})")
                drawn = True
    if not drawn:
        return None
    ax.set_title("Loss by run")
    ax.set_xlabel("tokens seen (each run's own count)")
    ax.set_ylabel("cross-entropy (nats)")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _bars(ax, groups: list[str], series_by_name: dict[str, list], errors: dict[str, list] | None = None):
    """Grouped bars: one group per label in `groups`, one bar per series; None values are left out."""
    width = 0.8 / max(len(series_by_name), 1)
    for index, (name, values) in enumerate(series_by_name.items()):
        x = [i + (index - (len(series_by_name) - 1) / 2) * width for i in range(len(groups))]
        shown = [(xi, v, (errors or {}).get(name, [None] * len(groups))[i]) for i, (xi, v) in enumerate(zip(x, values))]
        shown = [(xi, v, e) for xi, v, e in shown if isinstance(v, (int, float))]
        if shown:
            xs, ys, es = zip(*shown)
            yerr = [e if isinstance(e, (int, float)) else 0.0 for e in es] if errors else None
            ax.bar(xs, ys, width, yerr=yerr, capsize=3, label=name, color=f"C{index % 10}")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.grid(axis="y", alpha=0.3)


def plot_benchmarks(runs: dict[str, dict], path: str | Path) -> Path | None:
    """Each task's headline score (± its standard error) per run, against the random-guess baseline (a black
    tick): one run for a report, several for --compare."""
    from .suites import headline_metric

    tasks = list(dict.fromkeys(t for r in runs.values() for t in r.get("summary_tasks", [])))
    if not tasks:
        return None
    labels, values, errors, baselines = [], {name: [] for name in runs}, {name: [] for name in runs}, []
    for task in tasks:
        union = {m: None for r in runs.values() for m in r["tasks"].get(task, {})}
        metric = headline_metric(task, union)
        labels.append(f"{task}\n{metric}")
        for name, r in runs.items():
            metrics = r["tasks"].get(task, {})
            values[name].append(metrics.get(metric))
            stderr = metrics.get(metric.replace(",", "_stderr,", 1) if "," in metric else f"{metric}_stderr")
            errors[name].append(stderr)
        baseline = next((r["baselines"][task] for r in runs.values() if task in r.get("baselines", {})), None)
        baselines.append(baseline if metric.split(",")[0] in ("acc", "acc_norm", "exact_match") else None)
    fig = Figure(figsize=(max(6.0, 1.6 * len(tasks) * max(1, len(runs) / 2)), 4.8))
    ax = fig.subplots()
    _bars(ax, labels, values, errors)
    for i, baseline in enumerate(baselines):
        if baseline is not None:
            ax.hlines(baseline, i - 0.45, i + 0.45, colors="black", linestyles="--", linewidth=1.2)
    ax.plot([], [], "k--", label="random guess")
    ax.set_ylabel("score (headline metric)")
    ax.set_title("Benchmarks (± standard error)")
    ax.legend()
    return _save(fig, path)


def plot_perplexity(runs: dict[str, dict], path: str | Path) -> Path | None:
    """Bits per byte per evaluated file, one bar per run (lower is better; comparable across tokenizers)."""
    files = list(dict.fromkeys(f for r in runs.values() for f in r.get("perplexity", {})))
    if not files:
        return None
    values = {
        name: [(r.get("perplexity") or {}).get(f, {}).get("bits_per_byte") for f in files] for name, r in runs.items()
    }
    fig = Figure(figsize=(max(6.0, 1.5 * len(files) * max(1, len(runs) / 2)), 4.5))
    ax = fig.subplots()
    _bars(ax, [Path(f).name for f in files], values)
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("Held-out text")
    if len(runs) > 1:
        ax.legend()
    return _save(fig, path)


def plot_metrics_over_tokens(points: list[dict], path: str | Path) -> Path | None:
    """One panel per metric, its value at each checkpoint against the tokens it had seen (eval.py
    --checkpoints). `points`: [{"tokens_seen": N, "label": "checkpoint-4", "metrics": {name: value}}]."""
    names = list(dict.fromkeys(m for p in points for m, v in p["metrics"].items() if isinstance(v, (int, float))))
    if not names:
        return None
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig = Figure(figsize=(5.5 * columns, 4.0 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, name in zip(axes.flat, names):
        xy = sorted((p["tokens_seen"], p["metrics"][name]) for p in points if isinstance(p["metrics"].get(name), float))
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", linewidth=1.5)
        ax.set_title(name)
        ax.set_xlabel("tokens seen")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle("Metrics by checkpoint")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    logger.info("plot written to %s", path)
    return path
