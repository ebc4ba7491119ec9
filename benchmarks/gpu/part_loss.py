"""Part 2: the fused loss vs Liger's fused linear cross-entropy vs plain logits (transformers' ForCausalLMLoss on
hidden @ W.T), vocab 122,880, hidden 2,048, 8K and 32K tokens, bf16 inputs: loss, peak memory above the inputs and
forward+backward time (median of 3 after a warm-up). All three in this process; memory is
torch.cuda.max_memory_allocated after a reset, minus what the inputs hold."""

import statistics
import sys

import torch
from common import NO_CUDA, Peak, Report, error_line, part_arguments, release


def plain(hidden, weight, labels):
    from transformers.loss.loss_utils import ForCausalLMLoss

    return ForCausalLMLoss(hidden @ weight.T, labels, vocab_size=weight.shape[0])


def fused(hidden, weight, labels):
    from moai_llm.losses import causal_lm_loss

    return causal_lm_loss(hidden, weight, labels)


def liger():
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss()

    def run(hidden, weight, labels):
        shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
        return loss(weight, hidden.reshape(-1, hidden.shape[-1]), shifted.reshape(-1))

    return run


def measure(method, tokens: int, vocab: int, hidden_size: int, device: str, dtype, repeats: int) -> dict:
    torch.manual_seed(0)
    hidden = torch.randn(1, tokens, hidden_size, device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(vocab, hidden_size, device=device) * 0.02).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (1, tokens), device=device)
    inputs = torch.cuda.memory_allocated() if device == "cuda" else 0
    times, peak_gib, loss = [], None, None
    for _ in range(repeats + 1):  # the first one warms up (kernels compiled, workspaces allocated)
        hidden.grad = weight.grad = None
        with Peak() as peak:
            loss = method(hidden, weight, labels)
            loss.backward()
        times.append(peak.seconds)
        if peak.allocated is not None:
            peak_gib = peak.allocated - inputs / 2**30
    return {"loss": loss.item(), "seconds": statistics.median(times[1:]), "peak_gib": peak_gib}


def main() -> int:
    args = part_arguments(__doc__)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    vocab, hidden_size, sizes = (122_880, 2048, [8192, 32768]) if cuda else (512, 64, [64, 256])
    device, dtype, repeats = ("cuda", torch.bfloat16, 3) if cuda else ("cpu", torch.bfloat16, 1)
    columns = {"tokens": "tokens", "method": "method", "loss": "loss", "peak_gib": "peak GiB above inputs"}
    columns |= {"ms": "fwd+bwd ms", "vs_plain": "time vs plain", "note": "note"}
    report = Report(args, f"Loss forward+backward, vocab {vocab:,}, hidden {hidden_size:,}, bf16", columns)
    methods = {"plain logits (ForCausalLMLoss)": lambda: plain, "MOAI fused": lambda: fused, "Liger fused": liger}
    for tokens in sizes:
        plain_seconds = None
        for name, build in methods.items():
            row = {"tokens": tokens, "method": name}
            if name.startswith("Liger") and device != "cuda":
                report.add(**row, note=NO_CUDA + " (Triton kernels)")
                continue
            try:
                result = measure(build(), tokens, vocab, hidden_size, device, dtype, repeats)
            except Exception as error:  # an OOM or a missing package is this row's finding; the next row runs
                report.add(**row, note=error_line(error))
                if not name.startswith("Liger"):
                    report.fail(f"{name} at {tokens} tokens: {error_line(error)}")
                release()
                continue
            plain_seconds = plain_seconds or result["seconds"]
            report.add(
                **row,
                loss=result["loss"],
                peak_gib=result["peak_gib"],
                ms=result["seconds"] * 1000,
                vs_plain=result["seconds"] / plain_seconds,
            )
            release()
        losses = [r["loss"] for r in report.rows if r["tokens"] == tokens and r.get("loss") is not None]
        if len(losses) > 1 and max(losses) - min(losses) > 2e-2 * max(losses):
            report.fail(f"{tokens} tokens: the losses disagree ({losses})")
    if not cuda:
        report.note("CPU smoke: tiny sizes; memory is measured on CUDA only")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
