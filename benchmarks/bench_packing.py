"""Packing: seconds and efficiency for 1,000,000 document lengths, HBP vs first-fit vs concatenate-and-chop,
and useful tokens per row vs pad-to-longest batching.

    python benchmarks/bench_packing.py [--n 1000000] [--max_seq_length 4096]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from moai_llm.data.packing import pack  # noqa: E402
from moai_llm.data.plan import balance  # noqa: E402


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


def first_fit(lengths: np.ndarray, cap: int) -> list[list[int]]:
    """Plain first-fit in input order (no sorting): the usual quick packer."""
    rooms: list[int] = []
    packs: list[list[int]] = []
    for i, n in enumerate(lengths.tolist()):
        for j in range(max(0, len(rooms) - 64), len(rooms)):  # bounded look-back, as streaming packers do
            if rooms[j] >= n:
                rooms[j] -= n
                packs[j].append(i)
                break
        else:
            rooms.append(cap - n)
            packs.append([i])
    return packs


def concat_and_chop(lengths: np.ndarray, cap: int) -> tuple[int, int]:
    """Greedy concatenation cut every `cap` tokens: 100% full rows, but documents are cut and rows mix them."""
    boundaries = np.cumsum(lengths)
    rows = int(np.ceil(boundaries[-1] / cap))
    starts = np.concatenate([[0], boundaries[:-1]])
    cut = int(np.sum(starts // cap != (boundaries - 1) // cap))
    return rows, cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--max_seq_length", type=int, default=4096)
    parser.add_argument("--rows_per_step", type=int, default=8, help="ranks x per-device batch")
    args = parser.parse_args()
    cap = args.max_seq_length
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(5.5, 1.1, args.n).astype(np.int64), 1, cap)  # web-like document lengths
    print(
        f"{args.n:,} documents, lognormal lengths (median {int(np.median(lengths))}, mean {lengths.mean():.0f}), "
        f"rows of {cap}"
    )
    step = args.rows_per_step
    print(f"| method | seconds | rows | efficiency | documents cut | attention balance ({step} rows a step) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    start = time.perf_counter()
    rows, order = pack(lengths, cap, packing=True)  # the training packer: rows by cost, steps of consecutive rows
    seconds = time.perf_counter() - start
    packs = [order[a:b] for a, b in zip(rows[:-1].tolist(), rows[1:].tolist())]
    print(
        f"| HierarchicalBalancePacker (packing.pack) | {seconds:.2f} | {len(packs):,} | "
        f"{packing_efficiency(packs, lengths, cap):.2%} | 0 | {balance(lengths[order], rows, step):.3f} |"
    )
    start = time.perf_counter()
    ff = first_fit(lengths, cap)
    seconds = time.perf_counter() - start
    print(
        f"| first-fit (input order, look-back 64) | {seconds:.2f} | {len(ff):,} | "
        f"{packing_efficiency(ff, lengths, cap):.2%} | 0 | {attention_balance_ratio(ff, lengths, step):.3f} |"
    )
    start = time.perf_counter()
    rows, cut = concat_and_chop(lengths, cap)
    seconds = time.perf_counter() - start
    print(f"| concatenate-and-chop | {seconds:.2f} | {rows:,} | 100.00% | {cut:,} (contaminated) | n/a |")
    batch = 8
    padded = [lengths[i : i + batch] for i in range(0, len(lengths), batch)]
    useful = sum(int(b.sum()) for b in padded) / sum(len(b) * int(b.max()) for b in padded)
    print(
        f"\nuseful (non-pad) tokens per row slot: packed {packing_efficiency(packs, lengths, cap):.2%} vs "
        f"pad-to-longest batches of {batch} (input order) {useful:.2%}"
    )


if __name__ == "__main__":
    main()
