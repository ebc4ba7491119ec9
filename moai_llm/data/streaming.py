"""Streamed data: nothing prepared in advance; each rank reads, tokenizes and packs its own shard on the fly.

The train dataset is a `datasets.IterableDataset` with one shard per process. With `dispatch_batches=False`
(set by train.py for streams) accelerate gives process r exactly shard r, so every rank reads a disjoint part of
the stream (`split_dataset_by_node`) and no batch travels from rank 0. Packs are shuffled within each seeded
buffer. A resumed run re-reads its shard from the start and skips the batches already trained (the Trainer's
`skip_first_batches`), so it sees the same rows as an uninterrupted run with the same seed and world size.
"""

import logging

import datasets
import numpy as np
from datasets.distributed import split_dataset_by_node

from .errors import DataStats
from .mixing import MixtureSource
from .packing import pack_stream
from .encode import batched, source_payloads
from .sources import hub_dataset, is_local, local_files, read_file

logger = logging.getLogger(__name__)
STREAM_EVAL_DOCUMENTS = 1000  # held out when --eval_fraction is a fraction (a stream has no known size)
PACK_BUFFER = 10_000


def _source_stream(index: int, source: MixtureSource, encoder, seed: int, skip_bad_records: bool, stats,
                   held_out: int) -> datasets.IterableDataset:
    """One source's payloads as an IterableDataset with the source's own shards (its files, or the Hub's)."""
    if is_local(source.name):
        files, hub = local_files(source.name), None
    else:
        files, hub = [], hub_dataset(source.name, source.subset, source.split, streaming=True)
    count = len(files) if hub is None else hub.n_shards
    keep = source.percentage * 10_000  # of 1,000,000 hash buckets

    def generate(shards):
        for shard in shards:
            if hub is None:
                records = read_file(files[shard], encoder.text_column(source), skip_bad_records, stats)
            else:
                records = iter(hub.shard(num_shards=count, index=shard))
            payloads = source_payloads(source, encoder, skip_bad_records, stats, records=records)
            for number, payload in enumerate(payloads):
                if shard == 0 and number < held_out:
                    continue  # held out for eval
                if source.percentage < 100 and hash((seed, index, shard, number)) % 1_000_000 >= keep:
                    continue  # a seeded sample (ints hash the same in every process)
                yield {"payload": payload}

    return datasets.IterableDataset.from_generator(generate, gen_kwargs={"shards": list(range(count))})


def _held_out(source: MixtureSource, encoder, skip_bad_records: bool, count: int) -> list:
    """The first `count` payloads of the source's first shard: its eval documents."""
    if not count:
        return []
    if is_local(source.name):
        records = read_file(local_files(source.name)[0], encoder.text_column(source), skip_bad_records, DataStats())
    else:
        hub = hub_dataset(source.name, source.subset, source.split, streaming=True)
        records = iter(hub.shard(num_shards=hub.n_shards, index=0))
    held = []
    for payload in source_payloads(source, encoder, skip_bad_records, DataStats(), records=records):
        held.append(payload)
        if len(held) == count:
            break
    return held


def stream_mixture(sources: list[MixtureSource], encoder, seed: int, stopping_strategy: str, eval_fraction: float,
                   skip_bad_records: bool, stats: DataStats):
    """(stream of {"payload"}, eval payloads): concatenated, or interleaved with the ratios as probabilities."""
    wanted = int(eval_fraction) if eval_fraction >= 1 else (STREAM_EVAL_DOCUMENTS if eval_fraction else 0)
    per_source = -(-wanted // len(sources)) if wanted else 0
    evaluation, parts = [], []
    for index, source in enumerate(sources):
        held = _held_out(source, encoder, skip_bad_records, per_source)
        evaluation.extend(held)
        parts.append(_source_stream(index, source, encoder, seed, skip_bad_records, stats, len(held)))
    if len(parts) == 1:
        mixed = parts[0]
    elif sources[0].ratio is None:
        mixed = datasets.concatenate_datasets(parts)
    else:
        total = sum(s.ratio for s in sources)
        mixed = datasets.interleave_datasets(parts, probabilities=[s.ratio / total for s in sources], seed=seed,
                                             stopping_strategy=stopping_strategy)
    logger.info("streaming mixture (%s): %s; %d eval documents held out from the start of each source",
                "concatenated" if sources[0].ratio is None or len(parts) == 1 else stopping_strategy,
                ", ".join(f"{s.name}" + (f" {s.ratio / sum(x.ratio for x in sources):.1%}" if s.ratio else "")
                          for s in sources), len(evaluation))
    return mixed, evaluation


def streamed_rows(mixed: datasets.IterableDataset, encoder, max_seq_length: int, packing: bool, truncate: bool,
                  seed: int, num_processes: int, stats: DataStats) -> datasets.IterableDataset:
    """Rows from the stream, one shard per process: shard r tokenizes and packs `split_dataset_by_node(r)`."""

    def documents(rank):
        shard = split_dataset_by_node(mixed, rank=rank, world_size=num_processes)
        for batch in batched(row["payload"] for row in shard):
            flat, lengths, mask = encoder.encode(batch)
            flat, ends = flat.astype(np.int64), np.cumsum(lengths)
            for end, length in zip(ends.tolist(), lengths.tolist()):
                ids = flat[end - length : end]
                labels = None if mask is None else np.where(mask[end - length : end], ids, -100)
                yield from _cut(ids, labels, max_seq_length, truncate, stats)

    def rows(ranks):
        for rank in ranks:
            docs = documents(rank)
            if not packing:
                yield from (_row([doc]) for doc in docs)
                continue
            for pack in pack_stream(docs, max_seq_length, PACK_BUFFER, seed + rank, length=lambda d: len(d[0])):
                yield _row(pack)

    return datasets.IterableDataset.from_generator(rows, gen_kwargs={"ranks": list(range(num_processes))})


def _cut(ids, labels, max_seq_length, truncate, stats):
    """(ids, labels) pieces of one document: cut into max_seq_length pieces (pretraining) or truncated (SFT)."""
    if len(ids) <= max_seq_length:
        yield ids, labels
    elif truncate:
        stats["sft_examples_truncated"] += 1
        yield ids[:max_seq_length], None if labels is None else labels[:max_seq_length]
    else:
        stats["documents_split"] += 1
        for start in range(0, len(ids), max_seq_length):
            stats["pieces_from_split_documents"] += 1
            end = start + max_seq_length
            yield ids[start:end], None if labels is None else labels[start:end]


def _row(docs) -> dict:
    row = {"input_ids": np.concatenate([d[0] for d in docs]).tolist(), "seq_lengths": [len(d[0]) for d in docs]}
    if docs[0][1] is not None:
        row["labels"] = np.concatenate([d[1] for d in docs]).tolist()
    return row
