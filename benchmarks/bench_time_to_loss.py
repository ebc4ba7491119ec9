"""Held-out loss against training time: MOAI (AdamW, Muon) vs a stock Trainer and TRL's SFTTrainer, each at its best
learning rate and rows per step.

Model: a 384x4 Qwen3 (6 heads, 2 KV heads, MLP 1536, tied embeddings, the bundled tokenizer's 8192 tokens: 11.8M
parameters; built from configs/model_config_tiny.json with those sizes), rows of 512 tokens, bf16 autocast.
Data: the paragraphs of the shared corpora (../shared/corpora: Shakespeare plays, Korean bills; the bundled
sample when absent), read as benchmarks/bench_train.py does (Korean is 1% of the tokens); every 25th paragraph is
held out (never trained on), and --eval_tokens of it (4096, evenly spaced over the held-out paragraphs) are scored in
fp32 under no_grad, at the start and every 1/--points of the budget.

Variants:
- moai_adamw / moai_muon: train.py's machinery: the prepared store and packing plan (row_datasets),
  MoaiTrainer, packed rows read in balanced steps, fused loss; --optim adamw_torch or muon.
- stock: transformers' Trainer + Qwen3ForCausalLM, one document piece per row, DataCollatorForLanguageModeling
  (padded to the longest), AdamW.
- trl: TRL's SFTTrainer + Qwen3ForCausalLM, packing (bfd_split: best-fit, long documents split, no token dropped).
- moai_adamw_random or moai_muon_random (default mode only): the better MOAI variant with its rows drawn at random
  (the Trainer's RandomSampler) instead of in the balance order, at the same settings: does the balance order cost
  loss per step?

The clock: the machine has 2 cores shared with other processes, so wall time is noisy. Every run is one process
with one thread (torch.set_num_threads(1), no DataLoader workers), and its clock is the process's CPU time
(time.process_time) since the first training step, less the time spent scoring: on an idle core that equals wall
time, and it does not count time the process waited for the core. Two runs may share the machine (--jobs 2).

The schedule is one shape for all: train.py's WSD defaults (warmup over the first 5%, from 0.1 x the peak as in
transformers; stable; a 1-sqrt decay over the last 20% to 0.1 x the peak), as a function of the elapsed clock
rather than of steps: a budgeted run's step count is not known in advance. A callback sets every param group's
learning rate before each step and stops the run when the budget is spent.

--sweep searches each variant's learning rate (3) and rows per step (3; a packed row is 512 tokens, a stock row one
padded paragraph, so the stock grid is larger) one coordinate at a time: the 3 learning rates at the first rows per
step, then the other 2 rows per step at the best of them (5 runs, not 9: on the shared machine a run got about 1/6
of a core). It runs at a shorter budget (20 s; scored once, at the end) and records each variant's lowest final
loss in benchmarks/time_to_loss_sweep.json; runs already there at that budget are kept, so a stopped sweep resumes.
The default mode runs those winners at the full budget and writes benchmarks/time_to_loss.json and
benchmarks/time_to_loss.png.

    python benchmarks/bench_time_to_loss.py --sweep [--budget 20] [--jobs 3]
    python benchmarks/bench_time_to_loss.py [--budget 120]
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from time_to_loss_report import plot, table, winners  # noqa: E402
from time_to_loss_run import run_one, split_corpus  # noqa: E402

SWEEP_FILE = HERE / "time_to_loss_sweep.json"
RESULTS_FILE = HERE / "time_to_loss.json"
PLOT_FILE = HERE / "time_to_loss.png"
SWEPT = ("moai_adamw", "moai_muon", "stock", "trl")
LEARNING_RATES = (1e-3, 3e-3, 1e-2)
# Rows per step swept: a packed row holds 512 tokens; a stock row is one paragraph piece (~45 tokens here, padded),
# so its grid is larger, for about the same useful tokens per step.
ROWS_PER_STEP = {"moai_adamw": (1, 2, 4), "moai_muon": (1, 2, 4), "trl": (1, 2, 4), "stock": (8, 16, 32)}


def prepare_workdir(args) -> None:
    """The training paragraphs as JSON lines, and MOAI's prepared store and plan, made once before runs start."""
    from moai_llm.data import DataSpec, row_datasets
    from moai_llm.loading import load_tokenizer

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "train.jsonl", "w", encoding="utf-8") as handle:
        for text in split_corpus(args.chars)[0]:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    spec = DataSpec(train_files=[str(work / "train.jsonl")], eval_fraction=0, cache_dir=str(work / "cache"))
    row_datasets(spec, load_tokenizer(), args.max_seq_length, seed=0)


def launch(args, variant: str, learning_rate: float, rows_per_step: int) -> dict:
    command = [sys.executable, __file__, "--variant", variant, f"--learning_rate={learning_rate}"]
    command += [f"--rows_per_step={rows_per_step}", f"--budget={args.budget}", f"--points={args.points}"]
    command += [f"--chars={args.chars}", f"--eval_tokens={args.eval_tokens}", f"--workdir={args.workdir}"]
    command += [f"--max_seq_length={args.max_seq_length}", f"--seed={args.seed}"] + (["--sweep"] if args.sweep else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, env=env)
    if done.returncode:
        raise RuntimeError(f"{variant} lr {learning_rate} rows {rows_per_step} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"{variant} lr {learning_rate:g} rows {rows_per_step}: loss {result['final_loss']:.4f} after "
        f"{result['steps']} steps, {result['tokens']:,} tokens, {result['tokens_per_s']:,.0f} tokens/s",
        flush=True,
    )
    return result


def run_all(args, settings: list[tuple[str, float, int]], on_result) -> list[dict]:
    """`settings` run --jobs at a time, in the given order (interleaved, so load hits every variant alike)."""
    pool, results = ThreadPoolExecutor(args.jobs), []
    futures = [pool.submit(launch, args, *setting) for setting in settings]
    try:
        for future in futures:
            results.append(future.result())
            on_result(results[-1])
    finally:
        pool.shutdown(cancel_futures=True)  # a failed run stops the rest
    return results


def sweep(args) -> None:
    """A coordinate search per variant: the 3 learning rates at its first rows per step, then its other rows per step
    at the best of those learning rates (5 runs per variant). Runs already in SWEEP_FILE at this budget are kept."""
    runs = []
    if SWEEP_FILE.exists() and json.loads(SWEEP_FILE.read_text())["budget_s"] == args.budget:
        runs = json.loads(SWEEP_FILE.read_text())["runs"]
    variants = [v for v in SWEPT if v in args.variants]

    def save(result):
        runs.append({k: v for k, v in result.items() if k != "curve"})
        SWEEP_FILE.write_text(json.dumps({"budget_s": args.budget, "runs": runs, "winners": winners(runs)}, indent=1))

    def missing(settings):
        done = {(r["variant"], r["learning_rate"], r["rows_per_step"]) for r in runs}
        return [setting for setting in settings if setting not in done]

    run_all(args, missing([(v, lr, ROWS_PER_STEP[v][0]) for lr in LEARNING_RATES for v in variants]), save)
    best = {v: winners([r for r in runs if r["rows_per_step"] == ROWS_PER_STEP[v][0]])[v] for v in variants}
    later = [(v, best[v]["learning_rate"], ROWS_PER_STEP[v][i]) for i in (1, 2) for v in variants]
    run_all(args, missing(later), save)
    print(f"\nsweep at {args.budget:g} s of clock per run; final held-out loss (rows per step x learning rate)")
    print("| variant | rows/step | " + " | ".join(f"lr {lr:g}" for lr in LEARNING_RATES) + " |")
    print("| --- | ---: |" + " ---: |" * len(LEARNING_RATES))
    for variant in SWEPT:
        losses = {(r["rows_per_step"], r["learning_rate"]): r["final_loss"] for r in runs if r["variant"] == variant}
        for rows in ROWS_PER_STEP[variant] if losses else ():
            cells = [losses.get((rows, lr)) for lr in LEARNING_RATES]
            print(f"| {variant} | {rows} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    print(f"winners in {SWEEP_FILE}: {json.dumps(winners(runs))}")


def compare(args) -> None:
    if not SWEEP_FILE.exists():
        sys.exit(f"{SWEEP_FILE} not found: run --sweep first")
    best = json.loads(SWEEP_FILE.read_text())["winners"]
    settings = [(v, best[v]["learning_rate"], best[v]["rows_per_step"]) for v in SWEPT if v in best]
    moai = min((v for v in ("moai_adamw", "moai_muon") if v in best), key=lambda v: best[v]["loss"], default=None)
    if moai:  # the balance order against rows at random, on the better MOAI variant
        settings.append((f"{moai}_random", best[moai]["learning_rate"], best[moai]["rows_per_step"]))
    settings = [s for s in settings if s[0] in args.variants or s[0].endswith("_random")]
    results = {r["variant"]: r for r in run_all(args, settings, lambda _: None)}
    RESULTS_FILE.write_text(json.dumps({"budget_s": args.budget, "runs": results}, indent=1) + "\n")
    print(f"\n{results[settings[0][0]]['parameters']:,} parameters, {args.budget:g} s of clock per run")
    print(table(results))
    plot(results, PLOT_FILE, args.budget)
    print(f"plot: {PLOT_FILE}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="3 learning rates x 3 rows per step per variant")
    parser.add_argument("--budget", type=float, help="clock seconds per run (default: 120; 20 with --sweep)")
    parser.add_argument("--points", type=int, default=8, help="held-out scorings per run (besides the start)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (each single-threaded)")
    parser.add_argument("--variants", default=",".join(SWEPT), help="comma-separated subset of " + ",".join(SWEPT))
    parser.add_argument("--chars", type=int, default=10_000_000, help="characters of corpus text to read (all: 5.2M)")
    parser.add_argument("--eval_tokens", type=int, default=4096, help="held-out tokens scored")
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="initial weights and row order (a repeat measures noise)")
    parser.add_argument("--workdir", default="/tmp/bench_time_to_loss")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--learning_rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--rows_per_step", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.budget is None:
        args.budget = 20.0 if args.sweep else 120.0
    if args.variant:
        print(json.dumps(run_one(args)))
        return
    args.variants = args.variants.split(",")
    prepare_workdir(args)
    (sweep if args.sweep else compare)(args)


if __name__ == "__main__":
    main()
