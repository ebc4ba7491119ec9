"""The no-argument `python train.py` run with its CPU default (bf16 autocast where the CPU has AMX or AVX512-BF16)
against the same run with `--bf16 false` (fp32): train_runtime, and how far the bf16 loss curve strays from fp32's
over the same logged steps.

Each run is a fresh `train.py` process with only `--output_dir` (and `--bf16 false`) added; the two variants
alternate over --repeats so the machine's load falls on both alike, and the table reports medians. The loss curves
come from each run's `trainer_state.json`; the same seed gives both variants the same data order.

    python benchmarks/bench_cpu_bf16.py [--repeats 3]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {"default (bf16 autocast)": [], "--bf16 false (fp32)": ["--bf16", "false"]}


def train(output_dir: Path, extra: list[str]) -> dict:
    """One `python train.py` run; its train_runtime, final train loss and logged (step, loss) curve."""
    command = [sys.executable, "train.py", "--output_dir", str(output_dir), "--disable_tqdm", "true", *extra]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    summary = next(e for e in history if "train_runtime" in e)
    curve = {e["step"]: e["loss"] for e in history if "loss" in e}
    return {"runtime": summary["train_runtime"], "train_loss": summary["train_loss"], "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from moai_llm.training.resolve import cpu_has_native_bf16

    runs = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            for index, (name, extra) in enumerate(VARIANTS.items()):
                runs[name].append(train(Path(work) / f"run-{repeat}-{index}", extra))

    print(f"CPU with native bf16 (AMX or AVX512-BF16): {cpu_has_native_bf16()}; {args.repeats} runs each, alternated")
    print("| run | train_runtime s (median) | runs s | train loss | final logged loss |")
    print("| --- | ---: | --- | ---: | ---: |")
    for name, results in runs.items():
        times = ", ".join(f"{r['runtime']:.1f}" for r in results)
        last = results[0]["curve"][max(results[0]["curve"])]
        median = statistics.median(r["runtime"] for r in results)
        print(f"| {name} | {median:.1f} | {times} | {results[0]['train_loss']:.3f} | {last:.3f} |")
    bf16, fp32 = (runs[name] for name in VARIANTS)
    speedup = statistics.median(r["runtime"] for r in fp32) / statistics.median(r["runtime"] for r in bf16)
    print(f"speed-up (fp32 time / bf16 time): {speedup:.2f}x")
    curve16, curve32 = bf16[0]["curve"], fp32[0]["curve"]
    steps = sorted(set(curve16) & set(curve32))
    gaps = [abs(curve16[s] - curve32[s]) for s in steps]
    worst = steps[gaps.index(max(gaps))]
    print(
        f"loss curves over {len(steps)} logged steps: max |bf16 - fp32| {max(gaps):.4f} at step {worst} "
        f"({max(gaps) / curve32[worst]:.2%} of fp32's loss there), mean {statistics.mean(gaps):.4f}"
    )
    print("| step | " + " | ".join(str(s) for s in steps) + " |")
    print("| --- |" + " ---: |" * len(steps))
    for name, curve in (("bf16", curve16), ("fp32", curve32)):
        print(f"| {name} | " + " | ".join(f"{curve[s]:.3f}" for s in steps) + " |")


if __name__ == "__main__":
    main()
