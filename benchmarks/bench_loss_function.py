"""`create_loss_function(spec)(logits, labels)` vs `F.cross_entropy` on logits that already exist: peak memory
above the inputs (forward alone, then forward+backward) and time. The callable should hold one
`[chunk, vocab]` fp32 block beyond the logits and their gradient.

Each case runs in a fresh subprocess (peak RSS on CPU, torch.cuda.max_memory_allocated on CUDA).

    python benchmarks/bench_loss_function.py [--tokens 4096 8192] [--vocab 32000] [--chunk_size 1024]
"""

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from bench_loss import _peak

from moai_llm.losses import create_loss_function


def run_case(method: str, tokens: int, vocab: int, chunk_size: int, device: str) -> dict:
    torch.manual_seed(0)
    logits = torch.randn(tokens, vocab, device=device, requires_grad=True)  # [tokens, vocab]
    labels = torch.randint(0, vocab, (tokens,), device=device)
    labels[: tokens // 8] = -100
    loss_fn = create_loss_function({"type": "cross_entropy"}, chunk_size=chunk_size)
    base = _peak(device)
    start = time.perf_counter()
    loss = loss_fn(logits, labels) if method == "callable" else F.cross_entropy(logits, labels)
    forward_peak = _peak(device) - base
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "loss": loss.item(),
        "seconds": time.perf_counter() - start,
        "forward_mb": forward_peak / 2**20,
        "peak_mb": (_peak(device) - base) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--chunk_size", type=int, default=1024)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.case:
        method, tokens = args.case.split(":")
        print(json.dumps(run_case(method, int(tokens), args.vocab, args.chunk_size, device)))
        return
    block_mb = args.chunk_size * args.vocab * 4 / 2**20
    print(
        f"vocab {args.vocab:,}, chunk {args.chunk_size:,} (one fp32 block = {block_mb:,.0f} MB), device {device} "
        f"({torch.get_num_threads()} threads), 1/8 of the tokens ignored; peak memory above the fp32 logits"
    )
    print(
        "| tokens | logits MB | loss (F / callable) | F.cross_entropy forward MB | callable forward MB | "
        "F.cross_entropy fwd+bwd MB | callable fwd+bwd MB | F.cross_entropy s | callable s |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for tokens in args.tokens:
        result = {}
        for method in ("torch", "callable"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--case",
                    f"{method}:{tokens}",
                    "--vocab",
                    str(args.vocab),
                    "--chunk_size",
                    str(args.chunk_size),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            result[method] = json.loads(out.stdout.strip().splitlines()[-1])
        t, c = result["torch"], result["callable"]
        print(
            f"| {tokens:,} | {tokens * args.vocab * 4 / 2**20:,.0f} | {t['loss']:.5f} / {c['loss']:.5f} | "
            f"{t['forward_mb']:,.0f} | {c['forward_mb']:,.0f} | {t['peak_mb']:,.0f} | {c['peak_mb']:,.0f} | "
            f"{t['seconds']:.2f} | {c['seconds']:.2f} |"
        )


if __name__ == "__main__":
    main()
