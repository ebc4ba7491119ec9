"""One rank of tests/test_data_ranks.py (run under torchrun, 2 CPU processes over gloo): writes what it prepared
and read to <out>/rank<R>.json.

    python -m torch.distributed.run --nproc_per_node 2 tests/data_ranks_worker.py OUT CORPUS STREAM_FOLDER
"""

import json
import logging
import os
import sys
from pathlib import Path


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def row_ids(batch) -> list[list[int]]:
    """Each row of a padded batch without its padding (pad id 0 never occurs inside a row)."""
    rows = []
    for ids in batch["input_ids"].tolist():
        while ids and ids[-1] == 0:
            ids.pop()
        rows.append(ids)
    return rows


def main(out: Path, corpus: str, stream_folder: str) -> None:
    from moai_llm import MoaiForCausalLM
    from moai_llm.training.cli import parse_args
    from moai_llm.training.data_setup import build_datasets, load_tokenizer
    from moai_llm.training.trainer import MoaiTrainer
    from tests.conftest import tiny_config

    rank = int(os.environ["RANK"])
    collect = Collect()
    logging.getLogger("moai_llm.data").addHandler(collect)
    logging.getLogger("moai_llm.data").setLevel(logging.INFO)
    common = [
        "--use_cpu",
        "true",
        "--ddp_backend",
        "gloo",
        "--batch_size",
        "2",
        "--max_seq_length",
        "64",
        "--seed",
        "3",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--packing_bins",
        "4",
        "--eval_fraction",
        "0",
        "--logging_steps",
        "1",
    ]
    model_args, data_args, args = parse_args([*common, "--output_dir", str(out / "packed"), "--train_file", corpus])
    tokenizer = load_tokenizer(model_args)
    train, _, collator = build_datasets(data_args, tokenizer, args)
    model = MoaiForCausalLM(tiny_config(vocab_size=8192))
    trainer = MoaiTrainer(
        model=model, args=args, train_dataset=train, data_collator=collator, processing_class=tokenizer
    )
    lookup = {tuple(train[i]["input_ids"].tolist()): i for i in range(len(train))}
    loader = trainer.get_train_dataloader()
    epochs = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        epochs.append([[lookup[tuple(ids)] for ids in row_ids(batch)] for batch in loader])
    lengths = [list(train[i]["seq_lengths"]) for i in range(len(train))]

    model_args, data_args, args = parse_args(
        [
            *common,
            "--output_dir",
            str(out / "stream"),
            "--train_file",
            stream_folder,
            "--streaming",
            "true",
            "--max_steps",
            "2",
        ]
    )
    stream, _, flash_collator = build_datasets(data_args, tokenizer, args, flash=True)
    trainer = MoaiTrainer(
        model=model, args=args, train_dataset=stream, data_collator=flash_collator, processing_class=tokenizer
    )
    documents, widths, max_length_types = [], [], set()
    for batch in trainer.get_train_dataloader():  # this rank's whole shard, once: it starts again without end
        widths.append(batch["input_ids"].shape[1])
        max_length_types.add(type(batch["max_length_q"]).__name__)
        rows = [[doc for doc in tokenizer.decode(ids).split(tokenizer.eos_token) if doc] for ids in row_ids(batch)]
        again = [row for row in rows if set(row) & set(documents)]
        if again:  # the second pass: its rows hold only documents of the first
            assert all(set(row) <= set(documents) for row in again)
            documents.extend(doc for row in rows[: rows.index(again[0])] for doc in row)
            break
        documents.extend(doc for row in rows for doc in row)
    _, _, plain_collator = build_datasets(data_args, tokenizer, args)
    trainer = MoaiTrainer(
        model=model, args=args, train_dataset=stream, data_collator=plain_collator, processing_class=tokenizer
    )
    result = trainer.train()

    held_flags = [*common, "--output_dir", str(out / "stream"), "--train_file", stream_folder, "--streaming", "true"]
    held_flags[held_flags.index("--eval_fraction") + 1] = "4"
    model_args, data_args, args = parse_args([*held_flags, "--max_steps", "2"])
    _, held_out, _ = build_datasets(data_args, tokenizer, args)  # a store written by one rank, read by both
    held_rows = [held_out[i]["input_ids"].tolist() for i in range(len(held_out))]

    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "prepared": [m for m in collect.messages if m.startswith("prepared ")],
                "rows": len(train),
                "epochs": epochs,
                "lengths": lengths,
                "stream_documents": documents,
                "widths": widths,
                "max_length_types": sorted(max_length_types),
                "dispatch_batches": args.accelerator_config.dispatch_batches,
                "train_loss": result.training_loss,
                "steps": result.global_step,
                "held_out": {"type": type(held_out).__name__, "rows": held_rows},
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
