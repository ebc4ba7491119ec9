"""Part 3: training throughput on one GPU, bf16, packed rows of 4,096 tokens: train.py (MoaiTrainer + MoaiForCausalLM,
fused loss) against a stock Trainer + Qwen3ForCausalLM / Qwen3MoeForCausalLM of the same shape and batch, for a
~0.5B dense config and a small MoE config; sdpa vs flex_attention for the packed rows; torch_compile on and off.

Every variant trains in this process one after the other (a fresh model each, compiled graphs reset between them),
in priority order; a variant that would not finish inside the part's budget is skipped and says so. Tokens/s and
MFU are the last logged interval's (the first holds the warm-up and compilation), measured the same way on both
sides (train.py's ThroughputCallback, also attached to the stock Trainer); peak memory is the CUDA allocator's."""

import json
import sys
from pathlib import Path

import torch
from common import NO_CUDA, REPO, Peak, Report, error_line, part_arguments, release, time_left

SAMPLE = REPO / "moai_llm" / "assets" / "sample" / "pretrain.jsonl"
DENSE_05B = dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=24, num_attention_heads=16)
DENSE_05B |= dict(num_key_value_heads=8, head_dim=64, vocab_size=122_880, max_position_embeddings=8192)
MOE_SMALL = {**DENSE_05B, "num_hidden_layers": 12, "num_experts": 16, "num_experts_per_tok": 4}
MOE_SMALL |= dict(moe_intermediate_size=512, shared_expert_intermediate_size=0, mlp_only_layers=[])
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
TINY |= dict(head_dim=16, vocab_size=8192, max_position_embeddings=512)
TINY_MOE = {**TINY, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
TINY_MOE |= dict(shared_expert_intermediate_size=0, mlp_only_layers=[])

# (name, model, trainer, attention, torch_compile, seconds it needs on the H200: start-up, compile, steps, save)
VARIANTS = [
    ("dense", "moai", "sdpa", False, 25),
    ("dense", "stock", "sdpa", False, 20),
    ("dense", "moai", "flex_attention", False, 35),
    ("moe", "moai", "sdpa", False, 20),
    ("dense", "moai", "sdpa", True, 50),
    ("moe", "stock", "sdpa", False, 20),
    ("dense", "stock", "sdpa", True, 50),
]


def write_config(workdir: Path, name: str, smoke: bool) -> Path:
    from moai_llm import MoaiConfig

    values = {"dense": TINY, "moe": TINY_MOE}[name] if smoke else {"dense": DENSE_05B, "moe": MOE_SMALL}[name]
    path = workdir / f"model_{name}.json"
    path.write_text(MoaiConfig(**values, pad_token_id=0, bos_token_id=1, eos_token_id=2).to_json_string())
    return path


def last_interval(run_dir: Path) -> dict:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "tokens_per_second" in entry]
    return logged[-1] if logged else {}


def run_moai(config: Path, run_dir: Path, cache: Path, shape: dict, attention: str, compile_: bool, cuda: bool):
    import train

    argv = ["--model_config", str(config), "--output_dir", str(run_dir), "--data_cache_dir", str(cache)]
    argv += ["--train_file", str(SAMPLE), "--max_seq_length", str(shape["seq"]), "--batch_size", str(shape["batch"])]
    argv += ["--max_steps", str(shape["steps"]), "--logging_steps", str(shape["log"]), "--eval_strategy", "no"]
    argv += ["--save_steps", "100000", "--warmup_steps", "0", "--disable_tqdm", "true", "--report_to", "none"]
    argv += ["--attn_implementation", attention, "--torch_compile", str(compile_).lower(), "--eval_fraction", "0"]
    argv += ["--dataloader_num_workers", "2" if cuda else "0"]
    argv += ["--bf16", "true"] if cuda else ["--use_cpu", "true", "--bf16", "false"]
    if train.main(argv) != 0:
        raise RuntimeError("train.py exited non-zero")
    return last_interval(run_dir)


def token_rows(seq: int, count: int) -> list[torch.Tensor]:
    """The sample corpus with the bundled tokenizer, EOS after each document, cut into rows of `seq` (repeated)."""
    from moai_llm.loading import load_tokenizer

    tokenizer = load_tokenizer()
    texts = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = [i for doc in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in (*doc, tokenizer.eos_token_id)]
    stream = torch.tensor(ids * (1 + count * seq // len(ids)))
    return [stream[i * seq : (i + 1) * seq] for i in range(count)]


def run_stock(config: Path, run_dir: Path, shape: dict, attention: str, compile_: bool, cuda: bool):
    from transformers import Qwen3ForCausalLM, Qwen3MoeForCausalLM, Trainer, TrainingArguments

    from moai_llm import MoaiConfig
    from moai_llm.export import qwen3_config_from, qwen3_moe_config_from
    from moai_llm.training.callbacks import ThroughputCallback, detect_peak_tflops, flops_per_token

    moai_config = MoaiConfig.from_json_file(str(config))
    if moai_config.num_experts:
        model = Qwen3MoeForCausalLM(qwen3_moe_config_from(moai_config))
    else:
        model = Qwen3ForCausalLM(qwen3_config_from(moai_config))
    model.set_attn_implementation(attention)
    meter = ThroughputCallback(flops_per_token(moai_config, shape["seq"]), detect_peak_tflops())

    class MeteredTrainer(Trainer):  # the same meter train.py logs with
        def training_step(self, model, inputs, num_items_in_batch=None):
            meter.observe(inputs["input_ids"], inputs["labels"], None)
            return super().training_step(model, inputs, num_items_in_batch)

        def log(self, logs, start_time=None):
            if "loss" in logs:
                logs.update(meter.pop_logs())
            super().log(logs, start_time)

    rows = token_rows(shape["seq"], shape["batch"] * 4)
    data = [{"input_ids": row, "labels": row} for row in rows]
    arguments = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=shape["batch"],
        max_steps=shape["steps"],
        logging_steps=shape["log"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=cuda,
        use_cpu=not cuda,
        torch_compile=compile_,
        dataloader_num_workers=2 if cuda else 0,
        learning_rate=3e-4,
    )
    trainer = MeteredTrainer(model=model, args=arguments, train_dataset=data, callbacks=[meter])
    trainer.train()
    trainer.save_state()
    return last_interval(run_dir)


def main() -> int:
    args = part_arguments(__doc__)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    shape = dict(seq=4096, batch=8, steps=15, log=5) if cuda else dict(seq=128, batch=2, steps=2, log=1)
    workdir = Path(args.workdir)
    configs = {name: write_config(workdir, name, not cuda) for name in ("dense", "moe")}
    columns = {"model": "model", "trainer": "trainer", "attention": "attention", "compile": "torch_compile"}
    columns |= {"tokens_per_s": "tokens/s", "mfu": "MFU", "vs_stock": "tokens/s vs stock"}
    columns |= {"peak_gib": "peak GiB", "reserved_gib": "reserved GiB", "loss": "loss", "seconds": "s", "note": "note"}
    sizes = "dense ~0.5B, MoE small" if cuda else "dense and MoE tiny"
    precision = "bf16" if cuda else "fp32"
    batch = f"batch {shape['batch']} x {shape['seq']}, {shape['steps']} steps"
    title = f"Training, one device, {precision}, {batch} ({sizes})"
    report = Report(args, title, columns)
    stock_rate = {}
    for model, trainer, attention, compile_, needs_s in VARIANTS:
        row = {"model": model, "trainer": "train.py" if trainer == "moai" else "stock Trainer + Qwen3"}
        row |= {"attention": attention, "compile": compile_}
        if not cuda and (attention == "flex_attention" or compile_):
            why = "flex_attention has no backward on CPU" if attention != "sdpa" else "inductor compiles for minutes"
            report.add(**row, note=f"{NO_CUDA} ({why})")
            continue
        if cuda and time_left(args) < needs_s:
            report.add(**row, note=f"skipped: {time_left(args):.0f} s left of the part's budget, needs ~{needs_s}")
            continue
        run_dir = workdir / f"{model}-{trainer}-{attention}-{'compiled' if compile_ else 'eager'}"
        try:
            with Peak() as peak:
                if trainer == "moai":
                    logged = run_moai(configs[model], run_dir, workdir / "cache", shape, attention, compile_, cuda)
                else:
                    logged = run_stock(configs[model], run_dir, shape, attention, compile_, cuda)
        except Exception as error:
            report.add(**row, note=error_line(error))
            report.fail(f"{model} {trainer} {attention} compile={compile_}: {error_line(error)}")
            continue
        finally:
            torch._dynamo.reset()
            release()
        rate = logged.get("tokens_per_second")
        if trainer == "stock":
            stock_rate[(model, compile_)] = rate
        elif rate and stock_rate.get((model, compile_)):
            row["vs_stock"] = rate / stock_rate[(model, compile_)]
        report.add(
            **row,
            tokens_per_s=rate,
            mfu=logged.get("mfu"),
            peak_gib=peak.allocated,
            reserved_gib=peak.reserved,
            loss=logged.get("loss"),
            seconds=peak.seconds,
        )
    for row in report.rows:  # the stock run comes after train.py's: fill the ratio in now
        if row["trainer"] == "train.py" and row.get("tokens_per_s") and "vs_stock" not in row:
            stock = stock_rate.get((row["model"], row["compile"]))
            row["vs_stock"] = row["tokens_per_s"] / stock if stock else None
    report.note("MFU against the card's dense bf16 peak (moai_llm.training.callbacks.PEAK_TFLOPS)")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
