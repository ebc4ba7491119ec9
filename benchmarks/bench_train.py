"""Useful tokens/s and peak memory of pretraining: MoaiTrainer (packing + fused loss) vs a stock Trainer with
Qwen3ForCausalLM and DataCollatorForLanguageModeling (pad to longest), same model size, batch, steps, documents.

Documents are the paragraphs of the shared corpus (../shared/corpora: Shakespeare plays, Korean bills), or the
bundled sample when it is absent, each EOS-terminated and cut into max_seq_length pieces for both sides. Useful
tokens are the tokens that carry a label; tokens per CPU-second is less sensitive to other processes sharing the
cores than tokens per wall-clock second. Each variant runs in its own process (peak RSS is per process);
variants alternate over --repeats and the table reports medians.

    python benchmarks/bench_train.py [--steps 20 --batch_size 8 --max_seq_length 256 --repeats 2]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def documents(limit_chars: int) -> list[str]:
    for root in (REPO.parent / "shared" / "corpora", Path("/work/shared/corpora")):
        if root.is_dir():
            paragraphs = []
            for path in sorted(root.glob("en/shakespeare/*.txt")) + sorted(root.glob("ko/kobill/*.txt")):
                text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
                paragraphs += [p.strip() for p in text.split("\n\n") if p.strip()]
            break
    else:
        from moai_llm.loading import SAMPLE_CORPUS

        paragraphs = [json.loads(line)["text"] for line in open(SAMPLE_CORPUS, encoding="utf-8")]
    out, total = [], 0
    for paragraph in paragraphs:
        if total >= limit_chars:
            break
        out.append(paragraph)
        total += len(paragraph)
    return out


# The TrainingArguments every benchmark run shares: a constant learning rate on the CPU, nothing saved,
# evaluated, logged to a tracker or loaded by a worker process, so the timings hold only training steps.
QUIET_CPU_RUN = dict(
    lr_scheduler_type="constant",
    warmup_steps=0,
    save_strategy="no",
    eval_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
    dataloader_num_workers=0,
    dataloader_pin_memory=False,
)


def pieces_of(texts: list[str], tokenizer, max_len: int) -> list[list[int]]:
    """Each text + EOS cut into pieces of at most max_len tokens by the data pipeline's one cutter."""
    import numpy as np

    from moai_llm.data import cut

    ids = [d + [tokenizer.eos_token_id] for d in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    flat = np.fromiter((t for d in ids for t in d), dtype=np.int64)
    lengths = np.array([len(d) for d in ids], dtype=np.int64)
    starts, sizes = cut(np.cumsum(lengths) - lengths, lengths, max_len)
    return [flat[s : s + n].tolist() for s, n in zip(starts, sizes)]


def counting(trainer_class):
    """`trainer_class` that counts the label-bearing tokens of the micro-batches it trains on."""

    class Counting(trainer_class):
        useful = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.useful += int(inputs["labels"][:, 1:].ne(-100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    return Counting


def run_variant(variant: str, args) -> dict:
    import datasets
    import numpy as np
    import torch
    from transformers import (
        DataCollatorForLanguageModeling,
        Qwen3ForCausalLM,
        Trainer,
        TrainingArguments,
    )

    from moai_llm import MoaiConfig, MoaiForCausalLM
    from moai_llm.data import PackedCollator, pack
    from moai_llm.export import qwen3_config_from
    from moai_llm.loading import load_tokenizer
    from moai_llm.training.arguments import MoaiTrainingArguments
    from moai_llm.training.trainer import MoaiTrainer

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    pieces = pieces_of(documents(args.chars), tokenizer, args.max_seq_length)
    sizes = np.array([len(piece) for piece in pieces])
    config = MoaiConfig.from_json_file(str(REPO / "configs" / "model_config_tiny.json"))
    torch.manual_seed(0)
    common = dict(
        output_dir=f"/tmp/bench_train_{variant}",
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=1e-3,
        logging_steps=args.steps,
        seed=0,
        **QUIET_CPU_RUN,
    )
    if variant == "moai":
        rows, order = pack(sizes, args.max_seq_length, packing=True)  # the training packer
        packs = [order[a:b].tolist() for a, b in zip(rows[:-1].tolist(), rows[1:].tolist())]
        train = datasets.Dataset.from_dict(
            {
                "input_ids": [[t for i in p for t in pieces[i]] for p in packs],
                "seq_lengths": [[int(sizes[i]) for i in p] for p in packs],
            }
        )
        collator = PackedCollator(tokenizer.pad_token_id)
        trainer = counting(MoaiTrainer)(
            model=MoaiForCausalLM(config),
            args=MoaiTrainingArguments(**common),
            train_dataset=train,
            data_collator=collator,
            processing_class=tokenizer,
        )
    else:
        train = datasets.Dataset.from_dict({"input_ids": pieces})
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        model = Qwen3ForCausalLM(qwen3_config_from(config))
        trainer = counting(Trainer)(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=train,
            data_collator=collator,
            processing_class=tokenizer,
        )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "variant": variant,
        "seconds": seconds,
        "useful_tokens": trainer.useful,
        "useful_tokens_per_s": trainer.useful / seconds,
        "useful_tokens_per_cpu_s": trainer.useful / cpu_seconds,
        "rows": len(train),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--chars", type=int, default=2_000_000, help="characters of corpus text to read")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=["moai", "stock"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    results = {"moai": [], "stock": []}
    for _ in range(args.repeats):
        for variant in ("moai", "stock"):
            command = [sys.executable, __file__, "--variant", variant] + [
                f"--{k}={v}" for k, v in vars(args).items() if k not in ("variant", "repeats")
            ]
            out = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
                env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
            )
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {
        v: {
            k: statistics.median(r[k] for r in rs)
            for k in ("useful_tokens_per_s", "peak_rss_mb", "seconds", "useful_tokens", "useful_tokens_per_cpu_s")
        }
        for v, rs in results.items()
    }
    print(
        f"tiny config (hidden 256, 4 layers, vocab 8192), batch {args.batch_size} x {args.max_seq_length}, "
        f"{args.steps} steps, {args.threads} threads, median of {args.repeats}"
    )
    print("| trainer | useful tokens/s | useful tokens / CPU-s | useful tokens | seconds | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    names = {
        "moai": "MoaiTrainer + MoaiForCausalLM (packing, fused loss)",
        "stock": "Trainer + Qwen3ForCausalLM + DataCollatorForLanguageModeling (pad to longest)",
    }
    for variant, m in med.items():
        print(
            f"| {names[variant]} | {m['useful_tokens_per_s']:,.0f} | {m['useful_tokens_per_cpu_s']:,.0f} | "
            f"{m['useful_tokens']:,.0f} | "
            f"{m['seconds']:.1f} | {m['peak_rss_mb']:,.0f} |"
        )
    ratio = {
        k: med["moai"][k] / med["stock"][k] for k in ("useful_tokens_per_s", "useful_tokens_per_cpu_s", "peak_rss_mb")
    }
    print(
        f"| ratio Moai/stock | {ratio['useful_tokens_per_s']:.2f}x | {ratio['useful_tokens_per_cpu_s']:.2f}x | | | "
        f"{ratio['peak_rss_mb']:.2f}x |"
    )
    for variant, runs in results.items():
        print(f"{variant} runs, useful tokens/s: " + ", ".join(f"{r['useful_tokens_per_s']:,.0f}" for r in runs))


if __name__ == "__main__":
    main()
