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

from .history import series, token_axis

logger = logging.getLogger(__name__)

# (title, [(log key, legend label)], y label)
PANELS = (
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


def plot_training(history: list[dict], arguments: dict, path: str | Path, title: str = "Training") -> Path | None:
    """Write the dashboard PNG; None (nothing written) when the history has none of the plotted keys."""
    axis, xlabel = token_axis(history, arguments)
    panels = [
        (name, [(series(history, key, axis), label) for key, label in keys], ylabel) for name, keys, ylabel in PANELS
    ]
    panels = [(name, [(xy, label) for xy, label in lines if len(xy[0])], ylabel) for name, lines, ylabel in panels]
    panels = [panel for panel in panels if panel[1]]
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
        if len(lines) > 1 or name.startswith("MoE"):
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


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    logger.info("plot written to %s", path)
    return path
