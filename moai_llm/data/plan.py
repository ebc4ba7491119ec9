"""The packing plan on disk: for each row, its pieces as (source, first token, length) into the sources' token stores.

It is built from the lengths alone (the packer never sees a token), its rows sorted by attention cost (sum of
squared piece lengths), and published next to the stores like a store. `rows.PackedRows` reads it.
"""

import logging
from pathlib import Path

import numpy as np

from .packing import cut, pack
from .stats import DataStats
from .store import TokenStore, publish, temporary_directory

logger = logging.getLogger(__name__)
ARRAYS = ("rows", "source", "start", "length")  # the plan's arrays, `<split>_<name>.npy` each


def pieces(
    stores: list[TokenStore], documents: list[np.ndarray], max_seq_length: int, truncate: bool, stats: DataStats
) -> dict[str, np.ndarray]:
    """Pieces of the selected documents (`packing.cut`): each cut into max_seq_length pieces (pretraining) or
    truncated (SFT)."""
    parts = []
    for index, (store, docs) in enumerate(zip(stores, documents)):
        first = np.asarray(store.offsets[docs], dtype=np.int64)
        length = np.asarray(store.offsets[docs + 1], dtype=np.int64) - first
        start, length = cut(first, length, max_seq_length, truncate=truncate, stats=stats)
        parts.append((np.full(len(start), index, dtype=np.int32), start, length))
    return {
        "source": np.concatenate([p[0] for p in parts]),
        "start": np.concatenate([p[1] for p in parts]),
        "length": np.concatenate([p[2] for p in parts]).astype(np.int32),
    }


def build_plan(
    path: Path, splits: dict[str, dict[str, np.ndarray]], max_seq_length: int, packing: bool, seed: int, meta: dict
) -> None:
    """Each split's plan at `path`: `pack`'s row offsets and every piece's source, start and length, as `.npy`."""
    tmp = temporary_directory(path)
    summary = {}
    for split, arrays in splits.items():
        rows, order = pack(arrays["length"], max_seq_length, packing, seed)
        np.save(tmp / f"{split}_rows.npy", rows)
        for name in ("source", "start", "length"):
            np.save(tmp / f"{split}_{name}.npy", arrays[name][order])
        count, tokens = len(rows) - 1, int(arrays["length"].sum())
        efficiency = tokens / max(count * max_seq_length, 1)
        summary[split] = {"rows": count, "pieces": len(order), "tokens": tokens, "efficiency": efficiency}
        message = "%s: %d pieces packed into %d rows of %d tokens, efficiency %.2f%%"
        logger.info(message, split, len(order), count, max_seq_length, 100 * efficiency)
    publish(tmp, path, {**meta, "splits": summary})


def balance(lengths: np.ndarray, rows: np.ndarray, rows_per_step: int, sample: int = 10_000) -> float:
    """Mean max/min attention cost over steps of `rows_per_step` consecutive rows (1.0 = perfect), on up to `sample`
    evenly spaced steps so that opening a plan of any size stays instant."""
    steps = (len(rows) - 1) // rows_per_step
    if not steps or rows_per_step < 2:
        return 1.0
    chosen = np.unique(np.linspace(0, steps - 1, min(steps, sample)).astype(np.int64))
    picked = (chosen[:, None] * rows_per_step + np.arange(rows_per_step)).ravel()
    starts, ends = np.asarray(rows[picked]), np.asarray(rows[picked + 1])
    sizes = ends - starts
    firsts = np.cumsum(sizes) - sizes
    index = np.repeat(starts - firsts, sizes) + np.arange(int(sizes.sum()))
    cost = np.add.reduceat(np.asarray(lengths[index], dtype=np.int64) ** 2, firsts).reshape(-1, rows_per_step)
    return float(np.mean(cost.max(1) / np.maximum(cost.min(1), 1)))
