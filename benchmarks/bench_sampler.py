"""The training order's memory, and the eval share of wall time with and without the eval cap.

- sampler: peak RSS above the interpreter's (imports included in neither) while a `StepSampler` of N rows starts
  its epoch and yields its first rows, in a fresh process per measurement, alternating the variants: `now` (the
  order computed a chunk of steps at a time) and `before` (the whole epoch's order as an array, then `.tolist()`,
  what the sampler did before; its code is kept here for the comparison). Rows per step 8 x 4 (8 ranks, batch 4).
- eval share: the fraction of wall time spent evaluating, estimated from token counts: an eval token costs a
  forward pass, about 1/3 of a training token (forward + backward), evaluated every 100 steps, for a 1e10-token
  corpus held out at the default 5% (no cap) and at the default --eval_max_tokens cap.

    python benchmarks/bench_sampler.py [--rows 1e7,1e8] [--repeats 2]
"""

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS_PER_STEP = 32

PROBE = """
import resource, sys
import numpy as np
from moai_llm.data.packing import steps_at
from moai_llm.data.rows import StepSampler
rows, variant = int(float(sys.argv[1])), sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def before(num_rows, rows_per_step, num_bins, seed):  # the order as StepSampler built it before (one list)
    full = num_rows // rows_per_step
    blocks = steps_at(np.arange(full), full, num_bins, [seed, 0])
    inside = (blocks[:, None] * rows_per_step + np.arange(rows_per_step)).ravel()
    return iter(np.concatenate([inside, np.arange(full * rows_per_step, num_rows)]).tolist())

order = iter(StepSampler(rows, {rps}, 8, 0)) if variant == "now" else before(rows, {rps}, 8, 0)
first = [next(order) for _ in range(1000)]
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
""".replace("{rps}", str(ROWS_PER_STEP))


def sampler_peak_mb(rows: float, variant: str) -> float:
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(rows), variant], capture_output=True, text=True, env=env, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def eval_share(eval_tokens: float, tokens_per_step: float, eval_steps: int = 100) -> float:
    cost = eval_tokens / 3
    return cost / (cost + eval_steps * tokens_per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1e7,1e8", help="sampler sizes (the 'before' variant at 1e8 needs ~5 GB)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print("| rows | before: order list, peak MB | now: per chunk, peak MB |")
    print("| ---: | ---: | ---: |")
    for rows in [float(r) for r in args.rows.split(",")]:
        peaks = {"before": [], "now": []}
        for _ in range(args.repeats):
            for variant in ("before", "now"):
                peaks[variant].append(sampler_peak_mb(rows, variant))
        print(f"| {rows:.0e} | {max(peaks['before']):,.0f} | {max(peaks['now']):,.1f} |")
    from moai_llm.data.pipeline import EVAL_MAX_TOKENS

    print("\neval share of wall time, 1e10-token corpus, eval every 100 steps (estimate: eval token = 1/3 train token)")
    print("| tokens per step | 5% held out, no cap | cap of {:,} tokens |".format(EVAL_MAX_TOKENS))
    print("| ---: | ---: | ---: |")
    for per_step in (262_144, 1_048_576, 2_097_152):
        old, new = eval_share(0.05 * 1e10, per_step), eval_share(EVAL_MAX_TOKENS, per_step)
        print(f"| {per_step:,} | {100 * old:.1f}% | {100 * new:.2f}% |")


if __name__ == "__main__":
    main()
