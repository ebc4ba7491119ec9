"""Rows of a stored packing plan, gathered lazily from memory-mapped stores, and the order rows are trained in."""

from pathlib import Path

import numpy as np
import torch

from ..batch_format import IGNORE_INDEX
from .packing import steps_at
from .plan import ARRAYS, balance
from .stats import DataError
from .store import TokenStore


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
    so ranks that step together get similar attention work; the blocks come in `interleaved_order`, drawn again
    each epoch, a partial block last. Computed a chunk of steps at a time (`steps_at`): memory does not grow with
    the corpus."""

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
