"""From sources to train/eval datasets of rows ready for the collators: what train.py calls."""

import logging
from dataclasses import dataclass, field

import datasets
from accelerate import PartialState
from datasets.distributed import split_dataset_by_node

from .errors import DataError, DataStats
from .mixing import MixtureSource, build_mixture, parse_mixture
from .packing import HierarchicalBalancePacker, attention_balance_ratio, pack_stream, packing_efficiency
from .packing import split_long_documents
from .sft import detect_format, to_messages, tokenize_dialogue
from .sources import load_source
from .tokenize import tokenize_documents, train_eval_split

logger = logging.getLogger(__name__)


@dataclass
class DataSpec:
    """What to read and how to cut it (the data part of train.py's arguments)."""

    datasets: list[str] = field(default_factory=list)  # hub ids or local paths, "name:config" allowed
    train_files: list[str] = field(default_factory=list)
    mixture: list[dict] = field(default_factory=list)
    text_column: str = "text"
    split: str = "train"
    streaming: bool = False
    stopping_strategy: str = "all_exhausted"
    eval_fraction: float = 0.05
    packing: bool = True
    packing_bins: int = 8
    sft_format: str | None = None
    skip_bad_records: bool = False
    cache_dir: str | None = None


def mixture_sources(spec: DataSpec) -> list[MixtureSource]:
    if spec.mixture:
        return parse_mixture(spec.mixture)
    sources = [MixtureSource(name=f, text_field=spec.text_column, streaming=spec.streaming) for f in spec.train_files]
    for entry in spec.datasets:
        name, _, subset = entry.partition(":")
        sources.append(MixtureSource(name=name, subset=subset or None, split=spec.split,
                                     text_field=spec.text_column, streaming=spec.streaming))
    return sources or [MixtureSource(name="sample")]


def rows_from_documents(docs: list[list[int]], max_seq_length: int, packing: bool, world_size: int,
                        seed: int, stats: DataStats, bins: int = 8, labels: list[list[int]] | None = None):
    """Map-style rows: packed (`input_ids`, `seq_lengths`[, `labels`]) or one document per row."""
    if labels is None:
        docs = split_long_documents(docs, max_seq_length, stats)
    if not docs:
        raise DataError("no documents left to train on")
    if not packing:
        columns = {"input_ids": docs}
        if labels is not None:
            columns["labels"] = labels
        return datasets.Dataset.from_dict(columns)
    packer = HierarchicalBalancePacker(max_seq_length, num_bins=bins, seed=seed)
    lengths = [len(d) for d in docs]
    packs = packer.order_for_ranks(packer.pack(lengths), lengths, world_size)
    stats["packs"] += len(packs)
    logger.info("packed %d documents into %d rows of %d: efficiency %.2f%%, attention balance %.3f (world %d)",
                len(docs), len(packs), max_seq_length, 100 * packing_efficiency(packs, lengths, max_seq_length),
                attention_balance_ratio(packs, lengths, world_size), world_size)
    columns = {"input_ids": [[t for i in p for t in docs[i]] for p in packs],
               "seq_lengths": [[lengths[i] for i in p] for p in packs]}
    if labels is not None:
        columns["labels"] = [[t for i in p for t in labels[i]] for p in packs]
    return datasets.Dataset.from_dict(columns)


def pretraining_datasets(spec: DataSpec, tokenizer, max_seq_length: int, seed: int = 0, world_size: int = 1,
                         stats: DataStats | None = None):
    """(train, eval) rows from the sources/mixture; eval documents never appear in train."""
    stats = stats if stats is not None else DataStats()
    state = PartialState()
    with state.main_process_first():
        mixed = build_mixture(mixture_sources(spec), seed, spec.stopping_strategy, stats, spec.skip_bad_records)
        if isinstance(mixed, datasets.IterableDataset):
            return _streaming(mixed, spec, tokenizer, max_seq_length, seed, state, stats)
        train_docs, eval_docs = train_eval_split(mixed, spec.eval_fraction, seed)
        train_ids = tokenize_documents(train_docs, tokenizer, "text", spec.cache_dir)["input_ids"]
        eval_ids = tokenize_documents(eval_docs, tokenizer, "text", spec.cache_dir)["input_ids"] if eval_docs else None
    train = rows_from_documents(train_ids, max_seq_length, spec.packing, world_size, seed, stats, spec.packing_bins)
    evaluation = None
    if eval_ids:
        evaluation = rows_from_documents(eval_ids, max_seq_length, spec.packing, 1, seed, DataStats(), spec.packing_bins)
    return train, evaluation


def _streaming(mixed, spec: DataSpec, tokenizer, max_seq_length, seed, state, stats):
    """Streaming: the first documents are held out for eval, each rank reads its own shard, packs on the fly."""
    eval_count = int(spec.eval_fraction) if spec.eval_fraction >= 1 else (1000 if spec.eval_fraction else 0)
    evaluation = None
    if eval_count:
        held_out = [row["input_ids"] for row in tokenize_documents(mixed.take(eval_count), tokenizer)]
        evaluation = rows_from_documents(held_out, max_seq_length, spec.packing, 1, seed, DataStats())
        mixed = mixed.skip(eval_count)
    shard = split_dataset_by_node(mixed, rank=state.process_index, world_size=state.num_processes)
    tokenized = tokenize_documents(shard, tokenizer)

    def packed_rows():
        docs = (piece for row in tokenized for piece in split_long_documents([row["input_ids"]], max_seq_length))
        for pack in pack_stream(docs, max_seq_length, seed=seed):
            yield {"input_ids": [t for d in pack for t in d], "seq_lengths": [len(d) for d in pack]}

    return datasets.IterableDataset.from_generator(packed_rows), evaluation


def sft_datasets(spec: DataSpec, tokenizer, max_seq_length: int, seed: int = 0, world_size: int = 1,
                 stats: DataStats | None = None):
    """(train, eval) rows of chat-formatted dialogues with labels only on assistant tokens."""
    stats = stats if stats is not None else DataStats()
    sources = mixture_sources(spec)
    if sources[0].name == "sample" and len(sources) == 1:
        raise DataError("SFT needs data: give --train_file or --dataset (bundled examples: "
                        "moai_llm/assets/sample/sft_*.jsonl)")
    parts = [load_source(s.name, s.subset, s.split, None, False, spec.skip_bad_records, stats) for s in sources]
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    fmt = spec.sft_format or detect_format(dataset.column_names)
    if not tokenizer.chat_template:
        raise DataError("SFT: the tokenizer has no chat_template (train one with train_tokenizer.py)")
    train, evaluation = train_eval_split(dataset, spec.eval_fraction, seed)

    def encode(rows):
        encoded = [tokenize_dialogue(to_messages(row, fmt), tokenizer, max_seq_length, stats) for row in rows]
        return [e["input_ids"] for e in encoded], [e["labels"] for e in encoded]

    ids, labels = encode(train)
    logger.info("SFT: %d dialogues in %s format", len(ids), fmt)
    train_rows = rows_from_documents(ids, max_seq_length, spec.packing, world_size, seed, stats, labels=labels)
    eval_rows = None
    if evaluation is not None:
        eval_ids, eval_labels = encode(evaluation)
        eval_rows = rows_from_documents(eval_ids, max_seq_length, spec.packing, 1, seed, DataStats(),
                                        labels=eval_labels)
    return train_rows, eval_rows
