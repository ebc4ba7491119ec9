"""The one cutter and the one packer behind every row: the stored plan, the stream and perplexity's rows.

Hierarchical Balance Packing (after arXiv 2503.07680): fill rows to capacity, balance attention across ranks.
Hand-written: no maintained library packs to >= 98% with per-step attention balance (transformers'
DataCollatorWithFlattening only concatenates a batch).

- `cut`: documents into pieces of at most max_length tokens, or truncated (SFT); each split or truncation counted.
- `pack`: pieces into rows, best-fit decreasing over length classes (`HierarchicalBalancePacker`), rows sorted by
  attention cost (sum of squared piece lengths), heaviest first.
- `steps_at`, `interleaved_order`: steps of consecutive cost-sorted rows shuffled within `num_bins` cost groups
  and interleaved across them, so ranks that step together do similar work (`rows.StepSampler`).
"""

import numpy as np

from .stats import DataError, DataStats

PACK_CHUNK = 1 << 20  # pieces packed together; bounds the packer's Python lists for corpora of any size


def cut(
    starts: np.ndarray,
    lengths: np.ndarray,
    max_length: int,
    *,
    truncate: bool = False,
    overlap: int = 0,
    stats: DataStats | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of every piece of the documents tokens[starts[i] : starts[i] + lengths[i]], in document
    order: each cut into pieces of at most max_length tokens (consecutive pieces share `overlap` tokens), or, with
    `truncate` (SFT), its first max_length tokens. Counted in `stats`: documents split and their pieces, examples
    truncated. An empty document has no piece."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    counts = DataStats()
    if truncate:
        counts["sft_examples_truncated"] = int((lengths > max_length).sum())
        _add(stats, counts)
        keep = lengths > 0
        return starts[keep], np.minimum(lengths[keep], max_length)
    step = max_length - overlap
    count = np.maximum(lengths > 0, -(-(lengths - overlap) // step))
    counts["documents_split"] = int((count > 1).sum())
    counts["pieces_from_split_documents"] = int(count[count > 1].sum())
    _add(stats, counts)
    owner = np.repeat(np.arange(len(lengths)), count)
    first = np.repeat(np.cumsum(count) - count, count)
    shift = (np.arange(len(owner)) - first) * step
    return starts[owner] + shift, np.minimum(max_length, lengths[owner] - shift)


def _add(stats: DataStats | None, counts: DataStats) -> None:
    if stats is not None:
        stats.update(+counts)  # what happened, no zero counts


class HierarchicalBalancePacker:
    """Best-fit decreasing over length classes. Deterministic: `num_bins` and `seed` are kept for the old call
    (docs/migrating.md); the step order they once set is `StepSampler`'s."""

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
                if len(rooms) == 0:  # new packs, each holding as many of the rest as fit
                    for lo in range(pos, len(idx), cap // length):
                        packs.append(idx[lo : lo + cap // length])
                        room = cap - len(packs[-1]) * length
                        buckets[room].append(len(packs) - 1)
                        nonempty[room] = True
                    break
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
                "cut it first (packing.cut)"
            )
        if len(lengths) and lengths.min() <= 0:
            raise DataError(f"document {int(lengths.argmin())} is empty")
        return lengths


def pack(lengths: np.ndarray, max_seq_length: int, packing: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(row offsets [rows + 1], piece order): row r is pieces order[rows[r]:rows[r + 1]]; rows by attention cost,
    heaviest first. Without `packing`, one piece per row."""
    lengths = np.asarray(lengths)
    if not packing:
        order, sizes = np.arange(len(lengths), dtype=np.int64), np.ones(len(lengths), dtype=np.int64)
    else:
        packer = HierarchicalBalancePacker(max_seq_length, seed=seed)
        orders, sizes = [], []
        for lo in range(0, len(lengths), PACK_CHUNK):
            packs = packer.pack(lengths[lo : lo + PACK_CHUNK])
            sizes.append(np.fromiter(map(len, packs), dtype=np.int64, count=len(packs)))
            orders.append(lo + np.fromiter((i for p in packs for i in p), dtype=np.int64, count=int(sizes[-1].sum())))
        order = np.concatenate(orders) if orders else np.zeros(0, dtype=np.int64)
        sizes = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    cost = np.add.reduceat(lengths[order].astype(np.int64) ** 2, starts) if len(order) else sizes
    by_cost = np.argsort(-cost, kind="stable")
    rows = np.concatenate([[0], np.cumsum(sizes[by_cost])]).astype(np.int64)
    take = np.repeat(starts[by_cost] - rows[:-1], sizes[by_cost]) + np.arange(len(order))  # row by row, by cost
    return rows, order[take]


def interleaved_order(num_steps: int, num_bins: int, key) -> np.ndarray:
    """Step indices 0..num_steps-1 (steps sorted by cost) split into `num_bins` consecutive cost groups (as
    np.array_split cuts them), each shuffled by a permutation seeded by `key`, then taken round-robin across
    groups: [g0[0], g1[0], ..., g0[1], g1[1], ...]."""
    return steps_at(np.arange(num_steps, dtype=np.int64), num_steps, num_bins, key)


def steps_at(positions: np.ndarray, num_steps: int, num_bins: int, key) -> np.ndarray:
    """`interleaved_order(num_steps, num_bins, key)[positions]`, computed for those positions alone: the order of
    a corpus's steps never has to be held in memory (benchmarks/README.md, Data: the sampler's peak)."""
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
