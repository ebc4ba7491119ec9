"""The memory model (moai_llm/training/memory.py) against measured peaks of one training step, side by side.

Each case builds a small MOAI model and runs two optimizer steps of two micro-batches (fused AdamW, clipping, packed
rows of two documents) under `memory_meter.measure_step_peak`: on CPU the peak of live tensor storages, on CUDA
`torch.cuda.max_memory_allocated`. The estimate compared is `Estimate.tensor_bytes` (without the allocator's
overhead and the CUDA context, which neither measure sees).

    python benchmarks/bench_memory.py [--device cpu|cuda] [--scale 1]

--scale multiplies hidden size, intermediate size and sequence length (use 4-8 on a GPU).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moai_llm.training.memory import Setup, Shape, estimate  # noqa: E402
from moai_llm.training.memory_meter import measure_step_peak  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def cases(scale: int, cuda: bool):
    with open(os.path.join(CONFIGS, "model_config_tiny.json")) as handle:
        tiny = json.load(handle)
    with open(os.path.join(CONFIGS, "model_config_moe_tiny.json")) as handle:
        moe = json.load(handle)
    dense = {**tiny, "hidden_size": 256 * scale, "intermediate_size": 768 * scale, "num_attention_heads": 4 * scale}
    wide = {
        **dense,
        "hidden_size": 512 * scale,
        "intermediate_size": 1536 * scale,
        "num_attention_heads": 8 * scale,
        "num_key_value_heads": 4 * scale,
        "vocab_size": 4096,
    }
    attention = "flash" if cuda and _has_flash() else "sdpa"
    base = {"cuda": cuda, "attention": attention, "seq_len": 256 * scale}
    return [
        ("dense fp32, 2 rows", dense, Setup(micro_batch=2, mixed=False, **base)),
        ("dense fp32, 4 rows", dense, Setup(micro_batch=4, mixed=False, **base)),
        ("dense bf16 autocast, 4 rows", dense, Setup(micro_batch=4, mixed=True, **base)),
        ("dense checkpointing, 4 rows", dense, Setup(micro_batch=4, mixed=False, gradient_checkpointing=True, **base)),
        ("dense eager attention, 2 rows", dense, Setup(micro_batch=2, mixed=False, **{**base, "attention": "eager"})),
        ("dense plain logits, 2 rows", dense, Setup(micro_batch=2, mixed=False, loss_chunk=0, **base)),
        ("wide (h 512) fp32, 2 rows", wide, Setup(micro_batch=2, mixed=False, **base)),
        ("MoE fp32, 2 rows", moe, Setup(micro_batch=2, mixed=False, **base)),
    ]


def _has_flash() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    print("| case | estimate MB | measured MB | estimate / measured | seconds |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, config, setup in cases(args.scale, args.device == "cuda"):
        start = time.perf_counter()
        measured = measure_step_peak(config, setup)
        estimated = estimate(Shape.from_config(config), setup).tensor_bytes
        print(
            f"| {name} | {estimated / 1e6:.1f} | {measured / 1e6:.1f} | {estimated / measured:.3f} "
            f"| {time.perf_counter() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
