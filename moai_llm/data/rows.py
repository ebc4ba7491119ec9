"""Packing plans on disk, rows gathered lazily from memory-mapped stores, and the order rows are trained in.

A plan lists, for each row, its pieces: (source, first token, length) into the sources' token stores. It is built
from the lengths alone (the packer never sees a token), sorted by attention cost (sum of squared piece lengths),
and saved next to the stores. `PackedRows` reads a row's pieces from the memory maps when the DataLoader asks for
it; `StepSampler` turns the cost-sorted rows into steps.
"""

import logging
from pathlib import Path

import numpy as np
import torch

from ..batch_format import IGNORE_INDEX
from .packing import cut, pack, steps_at
from .stats import DataError, DataStats
from .store import TokenStore, publish, temporary_directory

logger = logging.getLogger(__name__)
ARRAYS = ("rows", "source", "start", "length")


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
    tmp = temporary_directory(path)
    summary = {}
    for split, arrays in splits.items():
        rows, order = pack(arrays["length"], max_seq_length, packing, seed)
        np.save(tmp / f"{split}_rows.npy", rows)
        for name in ("source", "start", "length"):
            np.save(tmp / f"{split}_{name}.npy", arrays[name][order])
        tokens = int(arrays["length"].sum())
        summary[split] = {
            "rows": len(rows) - 1,
            "pieces": len(order),
            "tokens": tokens,
            "efficiency": tokens / max((len(rows) - 1) * max_seq_length, 1),
        }
        logger.info(
            "%s: %d pieces packed into %d rows of %d tokens, efficiency %.2f%%",
            split,
            len(order),
            len(rows) - 1,
            max_seq_length,
            100 * summary[split]["efficiency"],
        )
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


class PackedRows(torch.utils.data.Dataset):
    """Map-style rows of a stored plan: `input_ids`, `seq_lengths` (and `labels` for SFT), read lazily."""

    def __init__(self, plan: Path, split: str, stores: list[TokenStore], rows_per_step: int = 1, num_bins: int = 8):
        self.plan, self.split, self.stores = Path(plan), split, stores
        self.rows_per_step, self.num_bins = rows_per_step, num_bins
        self._open()

    def _open(self):
        try:
            arrays = {name: np.load(self.plan / f"{self.split}_{name}.npy", mmap_mode="r") for name in ARRAYS}
        except (OSError, ValueError) as err:
            raise DataError(
                f"packing plan {self.plan} is unreadable ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:120]}); delete it to plan again"
            ) from None
        self.rows, self.source, self.start, self.length = (arrays[name] for name in ARRAYS)
        self.with_labels = all(store.labels is not None for store in self.stores)

    def __getstate__(self):  # DataLoader workers reopen the memory maps instead of pickling their pages
        return {key: getattr(self, key) for key in ("plan", "split", "stores", "rows_per_step", "num_bins")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.rows) - 1

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        lo, hi = int(self.rows[index]), int(self.rows[index + 1])
        spans = [
            (self.stores[s], int(b), int(n))
            for s, b, n in zip(self.source[lo:hi], self.start[lo:hi], self.length[lo:hi])
        ]
        input_ids = np.concatenate([store.tokens[b : b + n] for store, b, n in spans]).astype(np.int64)
        row = {"input_ids": input_ids, "seq_lengths": [n for _, _, n in spans]}
        if self.with_labels:
            mask = np.concatenate([store.labels[b : b + n] for store, b, n in spans]).astype(bool)
            row["labels"] = np.where(mask, input_ids, IGNORE_INDEX)
        return row

    def balance(self) -> float:
        return balance(self.length, self.rows, self.rows_per_step)

    def train_sampler(self, rows_per_step: int, seed: int, strategy: str = "random"):
        """The training order for steps of `rows_per_step` rows (processes x per-device batch), by
        --train_sampling_strategy: random (balanced steps in a seeded order; group_by_length is the same, the rows
        of a step having similar cost) or sequential (the plan's order, heaviest rows first)."""
        if strategy in ("random", "group_by_length"):
            return StepSampler(len(self), rows_per_step, self.num_bins, seed)
        if strategy == "sequential":
            return torch.utils.data.SequentialSampler(self)
        raise DataError(
            f"--train_sampling_strategy {strategy}: packed rows are read random (the default), group_by_length "
            "(the same order: each step's rows have similar cost) or sequential"
        )


class StepSampler(torch.utils.data.Sampler):
    """Rows in steps: each block of `rows_per_step` consecutive (cost-sorted) rows is one micro-step of every rank,
    so ranks that step together get similar attention work; the order of the blocks is `interleaved_order` over
    `num_bins` cost groups, drawn again each epoch from (seed, epoch). A last partial block stays last, so every
    other step is a whole block. The order is computed a chunk of steps at a time (`steps_at`), so the sampler's
    memory does not grow with the corpus."""

    CHUNK = 1 << 14  # steps computed at a time

    def __init__(self, num_rows: int, rows_per_step: int, num_bins: int, seed: int):
        self.num_rows, self.rows_per_step, self.num_bins, self.seed = num_rows, max(rows_per_step, 1), num_bins, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rows(self, first_step: int, last_step: int) -> np.ndarray:
        """The rows of steps first_step..last_step - 1 of this epoch's order (the partial block is the last step)."""
        full = self.num_rows // self.rows_per_step
        positions = np.arange(first_step, min(last_step, full), dtype=np.int64)
        blocks = steps_at(positions, full, self.num_bins, [self.seed, self.epoch])
        inside = (blocks[:, None] * self.rows_per_step + np.arange(self.rows_per_step)).ravel()
        if last_step > full >= first_step:
            inside = np.concatenate([inside, np.arange(full * self.rows_per_step, self.num_rows)])
        return inside

    def order(self) -> np.ndarray:
        return self.rows(0, self.num_rows // self.rows_per_step + 1)

    def __iter__(self):
        steps = self.num_rows // self.rows_per_step + 1
        for first in range(0, steps, self.CHUNK):
            yield from self.rows(first, first + self.CHUNK).tolist()

    def __len__(self) -> int:
        return self.num_rows
