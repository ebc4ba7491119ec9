"""One run of benchmarks/bench_time_to_loss.py, in its own process: a variant's trainer on the clock-based WSD
schedule, scored on the held-out rows off the clock, stopped when its budget is spent."""

import functools
import time
from pathlib import Path

from bench_train import QUIET_CPU_RUN, counting, documents, pieces_of

HELD_OUT_EVERY = 25
MODEL = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2)
WARMUP, DECAY, MIN_LR = 0.05, 0.2, 0.1  # train.py's defaults: warmup_steps, wsd_decay_ratio, min_lr_ratio


@functools.cache
def _wsd_lambda(steps: int = 10_000):
    """train.py's WSD schedule (training/schedule.py, MoaiTrainingArguments' defaults) over `steps` steps."""
    import torch

    from moai_llm.training.schedule import create_wsd_schedule

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = create_wsd_schedule(optimizer, steps, round(WARMUP * steps), DECAY, "1-sqrt", MIN_LR)
    return schedule.lr_lambdas[0], steps


def wsd_factor(progress: float) -> float:
    """Learning rate / peak at `progress` (0..1) of the budget: train.py's WSD shape (linear warmup from MIN_LR,
    stable, 1-sqrt decay to MIN_LR), read at the nearest of 10,000 steps."""
    schedule, steps = _wsd_lambda()
    return float(schedule(min(max(round(progress * steps), 0), steps)))


def split_corpus(limit_chars: int) -> tuple[list[str], list[str]]:
    """(train, held-out) paragraphs: every HELD_OUT_EVERY-th paragraph is held out."""
    paragraphs = documents(limit_chars)
    held = set(range(HELD_OUT_EVERY - 1, len(paragraphs), HELD_OUT_EVERY))
    return [p for i, p in enumerate(paragraphs) if i not in held], [paragraphs[i] for i in sorted(held)]


def held_out_rows(texts: list[str], tokenizer, max_len: int, max_tokens: int) -> list[list[int]]:
    """The scored rows: held-out paragraphs + EOS cut into pieces of <= max_len, evenly spaced over all of them
    (so English and Korean in the training mix's proportions), up to max_tokens in all."""
    pieces = [piece for piece in pieces_of(texts, tokenizer, max_len) if len(piece) > 1]
    stride = max(1, round(sum(map(len, pieces)) / max_tokens))
    rows, total = [], 0
    for piece in pieces[::stride]:
        if total >= max_tokens:
            break
        rows.append(piece)
        total += len(piece)
    return rows


def score(model, rows: list[list[int]], batch: int = 8) -> float:
    """Mean next-token cross-entropy over `rows` in fp32 (no autocast, no_grad). Rows are right-padded: with causal
    attention a real token never sees the padding after it, so no attention mask is needed."""
    import torch
    import torch.nn.functional as F

    was_training, total, count = model.training, 0.0, 0
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            width = max(map(len, chunk))
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for j, row in enumerate(chunk):
                ids[j, : len(row)] = torch.tensor(row)
                labels[j, : len(row) - 1] = torch.tensor(row[1:])
            logits = model(input_ids=ids).logits.float()
            total += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum"))
            count += int(labels.ne(-100).sum())
    model.train(was_training)
    return total / count


def clock_callback(budget: float, points: int, rows, sweep: bool):
    """A TrainerCallback: the clock-based WSD learning rate, held-out scoring (off the clock), the stop."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        curve: list[dict] = []

        def clock(self) -> float:
            return time.process_time() - self.start - self.scoring

        def record(self, model, state, clock):
            started = time.process_time()
            loss = score(model, rows)
            self.curve.append({"clock": clock, "step": state.global_step, "tokens": self.trainer.useful, "loss": loss})
            self.scoring += time.process_time() - started

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            self.curve, self.scoring, self.next_point = [], 0.0, budget / points
            self.peaks = [group["lr"] for group in optimizer.param_groups]
            self.start = time.process_time()
            if not sweep:
                self.record(model, state, 0.0)

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            factor = wsd_factor(self.clock() / budget)
            for group, peak in zip(optimizer.param_groups, self.peaks):
                group["lr"] = peak * factor

        def on_step_end(self, args, state, control, model=None, **kwargs):
            clock = self.clock()
            if clock >= budget:
                self.record(model, state, clock)
                control.should_training_stop = True
            elif not sweep and clock >= self.next_point:
                self.record(model, state, clock)
                self.next_point += budget / points

    return Clock()


def build_trainer(variant: str, train_texts: list[str], tokenizer, args):
    """The trainer of one variant, not started."""
    import datasets
    import torch
    from transformers import DataCollatorForLanguageModeling, Qwen3ForCausalLM, Trainer, TrainingArguments

    from moai_llm import MoaiConfig, MoaiForCausalLM
    from moai_llm.data import DataSpec, PackedCollator, row_datasets
    from moai_llm.export import qwen3_config_from
    from moai_llm.training.arguments import TINY_MODEL_CONFIG, MoaiTrainingArguments
    from moai_llm.training.trainer import MoaiTrainer

    config = MoaiConfig.from_json_file(TINY_MODEL_CONFIG)
    for key, value in MODEL.items():
        setattr(config, key, value)
    common = dict(
        output_dir=str(Path(args.workdir) / "runs" / variant),
        per_device_train_batch_size=args.rows_per_step,
        max_steps=10**7,  # the clock stops the run
        learning_rate=args.learning_rate,  # constant: the Clock callback sets the learning rate
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=True,
        logging_steps=10**7,
        seed=args.seed,  # the row order; the packing plan is the same for every seed
        **QUIET_CPU_RUN,
    )
    torch.manual_seed(args.seed)
    if variant.startswith("moai"):
        work = Path(args.workdir)
        spec = DataSpec(train_files=[str(work / "train.jsonl")], eval_fraction=0, cache_dir=str(work / "cache"))
        train, _ = row_datasets(spec, tokenizer, args.max_seq_length, seed=0, rows_per_step=args.rows_per_step)
        if variant.endswith("_random"):
            train = torch.utils.data.Subset(train, range(len(train)))  # no train_sampler: the Trainer's random one
        optim = "muon" if variant.startswith("moai_muon") else "adamw_torch"
        return counting(MoaiTrainer)(
            model=MoaiForCausalLM(config),
            args=MoaiTrainingArguments(**common, optim=optim),
            train_dataset=train,
            data_collator=PackedCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
        )
    model = Qwen3ForCausalLM(qwen3_config_from(config))
    if variant == "stock":
        train = datasets.Dataset.from_dict({"input_ids": pieces_of(train_texts, tokenizer, args.max_seq_length)})
        return counting(Trainer)(
            model=model,
            args=TrainingArguments(**common, optim="adamw_torch"),
            train_dataset=train,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            processing_class=tokenizer,
        )
    from trl import SFTConfig, SFTTrainer

    sft = SFTConfig(
        **common, optim="adamw_torch", packing=True, packing_strategy="bfd_split", max_length=args.max_seq_length
    )
    return counting(SFTTrainer)(
        model=model,
        args=sft,
        train_dataset=datasets.Dataset.from_dict({"text": train_texts}),
        processing_class=tokenizer,
    )


def run_one(args) -> dict:
    """One variant at one learning rate and rows per step, in this process: its curve and totals."""
    import torch

    from moai_llm.loading import load_tokenizer

    torch.set_num_threads(1)

    tokenizer = load_tokenizer()
    train_texts, held_texts = split_corpus(args.chars)
    rows = held_out_rows(held_texts, tokenizer, args.max_seq_length, args.eval_tokens)
    trainer = build_trainer(args.variant, train_texts, tokenizer, args)
    clock = clock_callback(args.budget, args.points, rows, args.sweep)
    clock.trainer = trainer
    trainer.add_callback(clock)
    trainer.train()
    last = clock.curve[-1]
    return {
        "variant": args.variant,
        "learning_rate": args.learning_rate,
        "rows_per_step": args.rows_per_step,
        "final_loss": last["loss"],
        "steps": last["step"],
        "tokens": last["tokens"],
        "clock": last["clock"],
        "tokens_per_s": last["tokens"] / last["clock"],
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "eval_tokens": sum(map(len, rows)),
        "curve": clock.curve,
    }
