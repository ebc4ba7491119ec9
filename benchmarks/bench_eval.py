"""Perplexity evaluation throughput vs the model's plain forward pass and vs training, on the same packed rows.

Evaluation at training's speed or better: eval.py's scoring (bf16 autocast where training uses it, `--precision
auto`) against one training step (forward, backward and AdamW, in the precision train.py picks on this machine);
and what bf16 changes in the perplexity against fp32. Before that, three ways through the same batches (real
text, packed into rows with `position_ids` restarting per document), interleaved repetitions, medians:
- forward only: `model(input_ids, position_ids)`, the full `[rows, seq, vocab]` logits and nothing else;
- eval.py's scoring (`moai_llm.evaluation.perplexity.score_batch`): the decoder, then cross-entropy and
  argmax from the hidden states one `[chunk, vocab]` block at a time (no full logits);
- for reference, transformers' way to get a loss: full logits, then `F.cross_entropy` over them.
Tokens/s counts non-padding tokens fed to the model.

    python benchmarks/bench_eval.py [--reps 5] [--threads 2] [--max_length 256] [--model_path DIR]
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from moai_llm import MoaiConfig, MoaiForCausalLM
from moai_llm.data.collator import PackedCollator
from moai_llm.evaluation.perplexity import (
    CPU_CHUNK,
    causal_lm_parts,
    packed_batches,
    score_batch,
    tokenize_documents,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tiny (hidden 256, 4 layers, vocab 8,192)": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": 8192,
    },
    "wide vocab (hidden 512, 4 layers, vocab 32,768)": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "vocab_size": 32768,
    },
}


def documents(limit_chars: int) -> list[str]:
    """Paragraphs of the shared corpora (../shared/corpora) when present, else of the bundled sample corpus."""
    for root in (REPO.parent / "shared" / "corpora" / "en", Path("/work/shared/corpora/en")):
        if root.is_dir():
            texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.rglob("*.txt"))[:3]]
            break
    else:
        texts = [json.loads(line)["text"] for line in (REPO / "moai_llm/assets/sample/pretrain.jsonl").open()]
    paragraphs, total = [], 0
    for text in texts:
        for paragraph in text.split("\n\n"):
            if paragraph.strip() and total < limit_chars:
                paragraphs.append(paragraph.strip())
                total += len(paragraph)
    return paragraphs


@torch.inference_mode()
def forward_only(model, batches) -> None:
    for batch, _ in batches:
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)


@torch.inference_mode()
def full_logits_loss(model, batches) -> None:
    for batch, _ in batches:
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), reduction="sum")


def fused_scoring(model, batches) -> float:
    """eval.py's scoring; returns the summed NLL (nats) so precisions can be compared."""
    body, head = causal_lm_parts(model)
    return sum(float(score_batch(body, head, batch, CPU_CHUNK, router_off=False)[0]) for batch, _ in batches)


def training_steps(model, batches, bf16: bool) -> None:
    """One optimizer step per batch as train.py takes it: fused loss, backward, AdamW (autocast when bf16)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    for batch, _ in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**{k: batch[k] for k in ("input_ids", "position_ids", "labels")}, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def precision_table(model, batches, tokens: int, reps: int, bf16: bool) -> None:
    """Training step vs eval.py's scoring (fp32 and bf16 autocast), interleaved, medians; the bf16 NLL gap."""
    import copy

    trainee = copy.deepcopy(model)  # the training steps change weights: score the untouched model
    runs = {
        "train step": lambda: training_steps(trainee, batches, bf16),
        "scoring fp32": lambda: fused_scoring(model, batches),
        "scoring bf16 autocast": lambda: bf16_scoring(model, batches),
    }
    speed = {name: [] for name in runs}
    for rep in range(reps):
        order = list(runs.items())
        for name, run in order[rep % 3 :] + order[: rep % 3]:
            start = time.perf_counter()
            run()
            speed[name].append(tokens / (time.perf_counter() - start))
    medians = {name: statistics.median(values) for name, values in speed.items()}
    nll32, nll16 = fused_scoring(model, batches), bf16_scoring(model, batches)
    print(
        f"| {' | '.join(f'{v:,.0f}' for v in medians.values())} | "
        f"{medians['scoring bf16 autocast'] / medians['train step']:.2f}x | "
        f"{medians['scoring fp32'] / medians['train step']:.2f}x | {abs(nll16 - nll32) / nll32:.2e} |"
    )


def bf16_scoring(model, batches) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fused_scoring(model, batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--chars", type=int, default=300_000, help="text to score per repetition")
    parser.add_argument("--model_path", help="a trained model for the precision table (default: the tiny config)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(REPO / "moai_llm" / "assets" / "tokenizer")
    docs = documents(args.chars)
    pieces, _, _ = tokenize_documents(docs, tokenizer, args.max_length)
    collator = PackedCollator(tokenizer.pad_token_id)
    batches = list(packed_batches(pieces, args.max_length, args.batch_size, collator))
    tokens = sum(n for _, n in batches)
    slots = sum(b["input_ids"].numel() for b, _ in batches)
    rows = sum(b["input_ids"].shape[0] for b, _ in batches)
    print(
        f"{len(docs):,} documents, {tokens:,} tokens in {rows} rows of "
        f"{args.max_length} (packing {tokens / slots:.1%}), batch {args.batch_size}, {args.reps} interleaved "
        f"reps, {args.threads} threads, medians; load average {os.getloadavg()[0]:.1f} at the start"
    )
    print(
        "| model | forward only tokens/s | eval.py scoring tokens/s | full logits + CE tokens/s "
        "| ratio scoring / forward |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = []
    for label, sizes in CONFIGS.items():
        torch.manual_seed(0)
        model = MoaiForCausalLM(MoaiConfig(max_position_embeddings=2048, tie_word_embeddings=True, **sizes)).eval()
        paths = {"forward": forward_only, "scoring": fused_scoring, "full": full_logits_loss}
        speed = {name: [] for name in paths}
        order = list(paths.items())
        for _name, run in order:  # warm-up
            run(model, batches[:2])
        for rep in range(args.reps):
            for name, run in order[rep % 3 :] + order[: rep % 3]:  # rotate who goes first
                start = time.perf_counter()
                run(model, batches)
                speed[name].append(tokens / (time.perf_counter() - start))
        forward, scoring, full = (statistics.median(speed[name]) for name in paths)
        rows.append(f"| {label} | {forward:,.0f} | {scoring:,.0f} | {full:,.0f} | {scoring / forward:.3f} |")
        print(rows[-1])
    precision_section(args, batches, tokens)


def precision_section(args, batches, tokens: int) -> None:
    from moai_llm.training.resolve import cpu_has_native_bf16

    bf16 = cpu_has_native_bf16()
    if args.model_path:
        model, label = MoaiForCausalLM.from_pretrained(args.model_path).eval(), args.model_path
    else:
        torch.manual_seed(0)
        label = next(iter(CONFIGS))
        model = MoaiForCausalLM(MoaiConfig(max_position_embeddings=2048, **CONFIGS[label])).eval()
    print()
    print(f"{label}; training in {'bf16 autocast' if bf16 else 'fp32'} (what train.py picks on this CPU)")
    print(
        "| train step tokens/s | scoring fp32 tokens/s | scoring bf16 tokens/s | bf16 scoring / train | "
        "fp32 scoring / train | bf16 NLL vs fp32 (relative) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    precision_table(model, batches, tokens, args.reps, bf16)


if __name__ == "__main__":
    main()
