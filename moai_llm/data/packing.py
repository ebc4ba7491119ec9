"""Hierarchical Balance Packing (after arXiv 2503.07680): fill rows to capacity, balance attention across ranks.

Why hand-written: no maintained library packs to >= 98% with per-step attention balance; transformers'
DataCollatorWithFlattening only concatenates a batch. Two stages:

1. Space: best-fit decreasing over length classes. Documents are taken longest first; each goes to the open row
   with the least room that still fits it (rows are kept in buckets by remaining room, so a million documents
   pack in about a second), else a new row.
2. Work (`order_in_steps`): steps of `rows_per_step` packs (ranks x per-device batch: the rows one micro-step
   reads across all ranks) are cut from the packs sorted by attention cost (sum of squared document lengths), so
   ranks that step together do similar work; the steps are shuffled within
   `num_bins` cost groups and interleaved across them. `attention_balance_ratio` reports the mean over steps of
   max/min cost.

Documents longer than max_seq_length must be cut first with `split_long_documents` (each piece becomes its own
document, counted in the stats), never dropped.
"""

import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .errors import DataError, DataStats

logger = logging.getLogger(__name__)


def split_long_documents(docs: Iterable[Sequence[int]], max_seq_length: int, stats: DataStats | None = None):
    """Cut every document longer than max_seq_length into pieces of at most that length."""
    out = []
    for doc in docs:
        if len(doc) <= max_seq_length:
            out.append(doc)
            continue
        pieces = [doc[i : i + max_seq_length] for i in range(0, len(doc), max_seq_length)]
        out.extend(pieces)
        if stats is not None:
            stats["documents_split"] += 1
            stats["pieces_from_split_documents"] += len(pieces)
    return out


class HierarchicalBalancePacker:
    def __init__(self, max_seq_length: int, num_bins: int = 8, seed: int = 0):
        if max_seq_length <= 0 or num_bins <= 0:
            raise ValueError(f"max_seq_length={max_seq_length} and num_bins={num_bins} must be positive")
        self.max_seq_length, self.num_bins, self.seed = max_seq_length, num_bins, seed

    def pack(self, items) -> list[list[int]]:
        """Packs of input indices: every index exactly once, each pack's total length <= max_seq_length."""
        lengths = self._lengths(items)
        cap = self.max_seq_length
        order = np.argsort(-lengths, kind="stable")
        sorted_lengths = lengths[order]
        packs: list[list[int]] = []
        buckets: list[list[int]] = [[] for _ in range(cap + 1)]  # buckets[room] = ids of packs with that room
        nonempty = np.zeros(cap + 1, dtype=bool)
        _, starts = np.unique(-sorted_lengths, return_index=True)
        bounds = list(starts) + [len(order)]
        for start, end in zip(bounds[:-1], bounds[1:]):
            length = int(sorted_lengths[start])
            idx = order[start:end].tolist()
            pos = 0
            while pos < len(idx):
                rooms = np.flatnonzero(nonempty[length:]) + length
                if len(rooms) == 0:
                    pos = self._open_packs(idx, pos, length, packs, buckets, nonempty)
                    continue
                for room in rooms.tolist():  # best fit first: the least room that still fits
                    ids = buckets[room]
                    if not ids:
                        continue
                    take = min(len(ids), len(idx) - pos)
                    chosen = ids[len(ids) - take :]
                    del ids[len(ids) - take :]
                    nonempty[room] = bool(ids)
                    for pack_id, item in zip(chosen, idx[pos : pos + take]):
                        packs[pack_id].append(item)
                    buckets[room - length].extend(chosen)
                    nonempty[room - length] = True
                    pos += take
                    if pos == len(idx):
                        break
        return packs

    @staticmethod
    def _open_packs(idx, pos, length, packs, buckets, nonempty) -> int:
        """New packs filled with as many `length` documents as fit; returns the new position in idx."""
        cap = len(buckets) - 1
        per_pack = cap // length
        while pos < len(idx):
            chunk = idx[pos : pos + per_pack]
            packs.append(chunk)
            room = cap - len(chunk) * length
            buckets[room].append(len(packs) - 1)
            nonempty[room] = True
            pos += len(chunk)
        return pos

    def _lengths(self, items) -> np.ndarray:
        if isinstance(items, np.ndarray):
            lengths = items.astype(np.int64)
        else:
            items = list(items)
            lengths = np.array([x if isinstance(x, (int, np.integer)) else len(x) for x in items], dtype=np.int64)
        if len(lengths) and lengths.max() > self.max_seq_length:
            i = int(lengths.argmax())
            raise DataError(
                f"document {i} has {lengths[i]} tokens > max_seq_length={self.max_seq_length}; "
                "cut it with split_long_documents first"
            )
        if len(lengths) and lengths.min() <= 0:
            raise DataError(f"document {int(lengths.argmin())} is empty")
        return lengths

    def order_in_steps(self, packs: list[list[int]], lengths, rows_per_step: int = 1) -> list[list[int]]:
        """Packs reordered so each run of `rows_per_step` consecutive packs (one micro-step across ranks) is balanced.

        Steps are cut from the packs sorted by attention cost, so the packs of a step are cost neighbours; the
        steps are then ordered by `interleaved_order` (shuffled within `num_bins` cost groups, groups taken
        round-robin), so heavy and light steps alternate instead of coming in one run.
        """
        lengths = self._lengths(lengths)
        cost = np.array([int((lengths[p] ** 2).sum()) for p in packs])
        by_cost = np.argsort(-cost, kind="stable")
        full = len(packs) // rows_per_step * rows_per_step
        steps = list(by_cost[:full].reshape(-1, rows_per_step))
        order = interleaved_order(len(steps), self.num_bins, [self.seed])
        ordered = [steps[i] for i in order]
        if full < len(packs):
            ordered.append(by_cost[full:])  # the last, partial step
        return [packs[i] for step in ordered for i in step]


def interleaved_order(num_steps: int, num_bins: int, key) -> np.ndarray:
    """Step indices 0..num_steps-1 (steps sorted by cost) split into `num_bins` consecutive cost groups (as
    np.array_split cuts them), each shuffled by a permutation seeded by `key`, then taken round-robin across
    groups: [g0[0], g1[0], ..., g0[1], g1[1], ...]."""
    return steps_at(np.arange(num_steps, dtype=np.int64), num_steps, num_bins, key)


def steps_at(positions: np.ndarray, num_steps: int, num_bins: int, key) -> np.ndarray:
    """`interleaved_order(num_steps, num_bins, key)[positions]`, computed for those positions alone: the order of
    a corpus's steps never has to be held in memory (at 1e8 rows a list of the row order took ~4 GB per rank)."""
    bins = min(num_bins, max(num_steps, 1))
    size, extra = divmod(num_steps, bins)  # array_split: the first `extra` groups hold one step more
    positions = np.asarray(positions, dtype=np.int64)
    full = positions < size * bins
    rounds = np.where(full, positions // bins, size)
    groups = np.where(full, positions % bins, positions - size * bins)
    first = groups * size + np.minimum(groups, extra)
    steps = np.empty_like(positions)
    for group in np.unique(groups).tolist():
        chosen = groups == group
        members = size + (group < extra)
        steps[chosen] = first[chosen] + _permuted(rounds[chosen], members, [*np.atleast_1d(key).tolist(), group])
    return steps


_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _permuted(values: np.ndarray, n: int, key) -> np.ndarray:
    """A seeded pseudo-random permutation of range(n) applied to `values`, in O(len(values)) memory: a 4-round
    Feistel network over the next even power of two, cycle-walked back into range (format-preserving encryption;
    numpy has no permutation that can be evaluated at a few positions)."""
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    half, mask = np.uint64(bits // 2), np.uint64((1 << (bits // 2)) - 1)
    keys = np.random.default_rng(key).integers(0, 1 << 62, 4, dtype=np.uint64)

    def encrypt(x):
        left, right = x >> half, x & mask
        for k in keys:
            h = (right + k) * _MIX[0]
            h = (h ^ (h >> np.uint64(31))) * _MIX[1]
            left, right = right, left ^ ((h ^ (h >> np.uint64(29))) & mask)
        return (left << half) | right

    out = encrypt(values.astype(np.uint64))
    outside = out >= n
    while outside.any():  # at most a few rounds: the domain is under 4n
        out[outside] = encrypt(out[outside])
        outside = out >= n
    return out.astype(np.int64)


def packing_efficiency(packs: list[list[int]], lengths, max_seq_length: int) -> float:
    lengths = np.asarray(lengths)
    return float(sum(int(lengths[p].sum()) for p in packs) / (len(packs) * max_seq_length)) if packs else 0.0


def attention_balance_ratio(packs: list[list[int]], lengths, rows_per_step: int) -> float:
    """Mean over steps (consecutive `rows_per_step` packs) of max/min attention cost; 1.0 is perfect balance."""
    lengths = np.asarray(lengths)
    cost = [int((lengths[p] ** 2).sum()) for p in packs]
    ratios = [
        max(cost[i : i + rows_per_step]) / max(min(cost[i : i + rows_per_step]), 1)
        for i in range(0, len(cost) - rows_per_step + 1, rows_per_step)
    ]
    return float(np.mean(ratios)) if ratios else 1.0


def pack_stream(
    docs: Iterable, max_seq_length: int, buffer_size: int = 10_000, seed: int = 0, length=len
) -> Iterator[list]:
    """Packs of documents from a stream, holding at most `buffer_size` documents in memory.

    The packer emits a buffer's packs sorted by length; they are shuffled (seeded per buffer) before leaving.
    `length(doc)` is a document's size in tokens.
    """
    packer = HierarchicalBalancePacker(max_seq_length, seed=seed)
    buffer: list[Sequence[int]] = []
    for index, doc in enumerate(docs, 1):
        buffer.append(doc)
        if len(buffer) == buffer_size:
            yield from _shuffled_packs(packer, buffer, length, np.random.default_rng([seed, index]))
            buffer = []
    if buffer:
        yield from _shuffled_packs(packer, buffer, length, np.random.default_rng([seed, 0]))


def _shuffled_packs(packer, buffer, length, rng) -> Iterator[list]:
    packs = packer.pack(np.fromiter(map(length, buffer), dtype=np.int64, count=len(buffer)))
    for i in rng.permutation(len(packs)):
        yield [buffer[j] for j in packs[i]]
