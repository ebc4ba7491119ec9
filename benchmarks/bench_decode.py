"""Single-stream greedy decoding: stock `generate` (DynamicCache) against a static KV cache and a compiled decode
step (chat's `decoding="static"` / `"compiled"`), and serve.py's BatchEngine with one stream; then a profile of one
decode step that shows where its time goes (weight matmuls, other ops, and time outside any op: Python and
framework overhead), which bounds what a static cache and torch.compile can win.

Random weights (speed does not depend on them), prompt of 16 tokens, `--tokens` new tokens, the variants
alternating in each repetition (the median shown), so a burst of load on a shared machine hits all of them.

    python benchmarks/bench_decode.py [--configs tiny 50m] [--tokens 64] [--reps 5] [--threads 1]
"""

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import CONFIGS  # noqa: E402  (the same tiny and 50M configs)

from moai_llm import MoaiConfig, MoaiForCausalLM  # noqa: E402
from moai_llm.chat import SamplingParams  # noqa: E402
from moai_llm.chat.generation import decoding_kwargs  # noqa: E402
from moai_llm.loading import load_tokenizer  # noqa: E402
from moai_llm.serving import BatchEngine, Finished, GenerationRequest  # noqa: E402

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_grouped_mm"}


def generate_rate(model, ids: torch.Tensor, tokens: int, decoding: str) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
            **decoding_kwargs(decoding, model.device),
        )
    return tokens / (time.perf_counter() - start)


def engine_rate(engine: BatchEngine, prompt: list[int], tokens: int) -> float:
    done = threading.Event()
    params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens)
    start = time.perf_counter()
    engine.submit_all(
        [GenerationRequest(prompt, params, lambda e: isinstance(e, Finished) and done.set(), ignore_eos=True)]
    )
    done.wait()
    return tokens / (time.perf_counter() - start)


def step_profile(model, ids: torch.Tensor, tokens: int) -> dict[str, float]:
    """ms per generated token: wall, weight matmuls, other ops, and outside ops (generate's Python, hooks, masks)."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
        )
        wall = time.perf_counter() - start
    matmul = other = 0.0
    for event in prof.key_averages():
        if event.key in MATMULS:
            matmul += event.self_cpu_time_total
        elif event.key.startswith("aten::"):
            other += event.self_cpu_time_total
    per = 1e3 / tokens
    return {
        "wall": wall * per,
        "matmul": matmul / 1e6 * per,
        "ops": other / 1e6 * per,
        "outside": max(0.0, wall - (matmul + other) / 1e6) * per,
    }


def measure(name: str, args) -> tuple[dict, float, dict, int]:
    torch.manual_seed(0)
    model = MoaiForCausalLM(MoaiConfig(**CONFIGS[name])).eval()
    parameters = sum(p.numel() for p in model.parameters())
    tokenizer = load_tokenizer()
    prompt = tokenizer("Tell me about the history of Seoul and its rivers.", add_special_tokens=False)["input_ids"]
    prompt = (prompt * 4)[:16]
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    generate_rate(model, ids, args.tokens, "compiled")  # compiles the decode step once for this cache size
    compile_seconds = time.perf_counter() - start
    engine = BatchEngine(model, tokenizer, max_batch_size=1)
    variants = {
        "generate, DynamicCache (stock)": lambda: generate_rate(model, ids, args.tokens, "dynamic"),
        "generate, StaticCache": lambda: generate_rate(model, ids, args.tokens, "static"),
        "generate, StaticCache + torch.compile": lambda: generate_rate(model, ids, args.tokens, "compiled"),
        "BatchEngine (serve.py), one stream": lambda: engine_rate(engine, prompt, args.tokens),
    }
    for run in variants.values():
        run()  # warm-up
    rates = {label: [] for label in variants}
    for rep in range(args.reps):
        for label, run in variants.items():
            rates[label].append(run())
        print(f"{name} rep {rep}: " + ", ".join(f"{r[-1]:.1f}" for r in rates.values()), file=sys.stderr, flush=True)
    engine.close()
    profile_ms = step_profile(model, ids, args.tokens)
    return {label: statistics.median(r) for label, r in rates.items()}, compile_seconds, profile_ms, parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "50m"], choices=list(CONFIGS))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {name: measure(name, args) for name in args.configs}
    names = [f"{name} ({results[name][3] / 1e6:.1f}M)" for name in args.configs]
    print(f"\nSingle-stream greedy tokens/s, 16-token prompt, {args.tokens} new tokens, {args.threads} CPU thread(s)\n")
    print("| decoding | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    stock = "generate, DynamicCache (stock)"
    for label in results[args.configs[0]][0]:
        cells = [
            f"{results[n][0][label]:,.1f} ({results[n][0][label] / results[n][0][stock]:.2f}x)" for n in args.configs
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("| compile time, first answer (s) | " + " | ".join(f"{results[n][1]:.0f}" for n in args.configs) + " |")
    print("\nWhere a stock decode step's time goes, ms per token (torch.profiler, self CPU time)\n")
    print("| | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for key, label in [
        ("wall", "wall"),
        ("matmul", "weight matmuls"),
        ("ops", "other aten ops"),
        ("outside", "outside any op (Python, framework)"),
    ]:
        print(f"| {label} | " + " | ".join(f"{results[n][2][key]:.2f}" for n in args.configs) + " |")


if __name__ == "__main__":
    main()
