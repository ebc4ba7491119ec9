"""Fused chunked cross-entropy vs transformers' default causal-LM loss: peak memory and time of forward+backward.

Each case runs in a fresh subprocess so its peak RSS (CPU) or torch.cuda.max_memory_allocated (CUDA) is its own;
the baseline (inputs and weights allocated, nothing computed) is subtracted.

    python benchmarks/bench_loss.py [--tokens 4096 8192] [--vocab 122880] [--hidden 1024]
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def run_case(method: str, tokens: int, vocab: int, hidden: int, device: str) -> dict:
    from transformers.loss.loss_utils import ForCausalLMLoss

    from moai_llm.losses import causal_lm_loss

    torch.manual_seed(0)
    h = torch.randn(1, tokens, hidden, device=device, requires_grad=True)
    w = (torch.randn(vocab, hidden, device=device) * 0.02).requires_grad_()
    labels = torch.randint(0, vocab, (1, tokens), device=device)
    base = _peak(device)
    start = time.perf_counter()
    if method == "fused":
        loss = causal_lm_loss(h, w, labels)
    else:
        loss = ForCausalLMLoss(h @ w.T, labels, vocab_size=vocab)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"loss": loss.item(), "seconds": seconds, "peak_mb": (_peak(device) - base) / 2**20}


def _peak(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--vocab", type=int, default=122880)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.case:
        method, tokens = args.case.split(":")
        print(json.dumps(run_case(method, int(tokens), args.vocab, args.hidden, device)))
        return
    print(
        f"vocab {args.vocab:,}, hidden {args.hidden:,}, device {device} ({torch.get_num_threads()} threads); "
        "peak memory above inputs, forward+backward"
    )
    print("| tokens | loss | default peak MB | fused peak MB | memory ratio | default s | fused s | time ratio |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for tokens in args.tokens:
        result = {}
        for method in ("default", "fused"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--case",
                    f"{method}:{tokens}",
                    "--vocab",
                    str(args.vocab),
                    "--hidden",
                    str(args.hidden),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            result[method] = json.loads(out.stdout.strip().splitlines()[-1])
        d, f = result["default"], result["fused"]
        print(
            f"| {tokens:,} | {d['loss']:.4f} / {f['loss']:.4f} | {d['peak_mb']:,.0f} | {f['peak_mb']:,.0f} | "
            f"{f['peak_mb'] / d['peak_mb']:.3f} | {d['seconds']:.2f} | {f['seconds']:.2f} | "
            f"{f['seconds'] / d['seconds']:.2f} |"
        )


if __name__ == "__main__":
    main()
