"""Streamed data: nothing prepared in advance; each rank reads, tokenizes and packs its own shard on the fly.

The rows dataset has one shard per process; with `dispatch_batches=False` (train.py) process r reads exactly
`split_dataset_by_node(stream, r)`, so no batch travels from rank 0. A rank's rows never end: when its part runs
out it starts again (pass 2, 3, ...: a new seeded file order and shuffle), so every rank steps until `max_steps`
(a finite stream would end on one rank inside a gradient-accumulation group: a collective mismatch). A resumed run
re-reads its shard and skips the batches already trained, passes included. The part is read with
`IterableDataset.iter`, which ignores DataLoader workers (`__iter__` in a worker would keep 1/W of the rank's data).
"""

import hashlib
import json
import logging
from itertools import islice
from pathlib import Path

import datasets
import numpy as np
from datasets.distributed import split_dataset_by_node

from ..batch_format import IGNORE_INDEX
from .encode import batched, source_payloads
from .mixing import MixtureSource, cap_tokens
from .packing import cut, pack
from .plan import build_plan, pieces
from .rows import PackedRows
from .sources import hub_dataset, is_local, local_files, read_file
from .stats import DataError, DataStats
from .store import StoreWriter, TokenStore, key_of, prepare_once

logger = logging.getLogger(__name__)
STREAM_EVAL_DOCUMENTS = 1000  # at most, when --eval_fraction is a fraction (a stream has no known size)
PACK_BUFFER = 10_000
READ_BATCH = 256  # records per `IterableDataset.iter` batch


def _drawn(seed: int, index: int, shard: int, number: int, share: float) -> bool:
    """A seeded draw with probability `share` for record `number` of a shard (ints hash alike in every process)."""
    return hash((seed, index, shard, number)) % 1_000_000 < share * 1_000_000


class _Source:
    """One streamed source: its shards (files, or the Hub's), its records' payloads, its sample and eval holdout."""

    def __init__(self, index: int, source: MixtureSource, encoder, seed: int, skip_bad_records: bool, stats):
        self.index, self.source, self.encoder, self.seed = index, source, encoder, seed
        self.skip_bad_records, self.stats = skip_bad_records, stats
        local = is_local(source.name)
        self.files = local_files(source.name) if local else []
        self.hub = None if local else hub_dataset(source.name, source.subset, source.split, True, source.revision)
        self.shards = len(self.files) if self.hub is None else self.hub.n_shards
        self.held: set[int] = set()

    def payloads(self, shard: int, stats):
        """(number, payload) of the shard's records kept by the `percentage` draw."""
        if self.hub is None:
            column, sample_by = self.encoder.text_column(self.source), self.source.sample_by or "document"
            records = read_file(self.files[shard], column, self.skip_bad_records, stats, sample_by)
        else:
            records = iter(self.hub.shard(num_shards=self.shards, index=shard))
        share = self.source.percentage / 100
        for number, payload in enumerate(
            source_payloads(self.source, self.encoder, self.skip_bad_records, stats, records=records)
        ):
            if share >= 1 or _drawn(self.seed, self.index, shard, number, share):
                yield number, payload

    def hold_out(self, count: int, fraction: float) -> list:
        """Eval (record number, payload) pairs from the start of shard 0: each record with probability `fraction`
        (else the first ones), `count` at most; they are skipped by the train stream."""
        held = []
        if not count:
            return held
        for number, payload in self.payloads(0, DataStats()):
            if fraction and not _drawn(self.seed, self.index, -1, number, fraction):
                continue
            held.append((number, payload))
            self.held.add(number)
            if len(held) == count:
                return held
        if not fraction and count:
            raise DataError(
                f"streamed source {self.source.name}: its first file or shard has {len(held)} "
                f"documents, fewer than the {count} held out for eval; lower --eval_fraction"
            )
        return held

    def stream(self) -> datasets.IterableDataset:
        def generate(shards):
            for shard in shards:
                for number, payload in self.payloads(shard, self.stats):
                    if not (shard == 0 and number in self.held):
                        yield {"payload": payload}

        return datasets.IterableDataset.from_generator(generate, gen_kwargs={"shards": list(range(self.shards))})


def stream_mixture(
    sources: list[MixtureSource],
    encoder,
    *,
    seed: int,
    stopping_strategy: str,
    eval_fraction: float,
    skip_bad_records: bool,
    stats: DataStats,
    eval_max_tokens: int = 0,
):
    """(stream of {"payload"}, eval payloads): concatenated, or interleaved with the ratios as probabilities. A
    fractional holdout is cut to `eval_max_tokens` (0: no cap) as prepared data's is; what is cut trains."""
    wanted = int(eval_fraction) if eval_fraction >= 1 else (STREAM_EVAL_DOCUMENTS if eval_fraction else 0)
    per_source = -(-wanted // len(sources)) if wanted else 0
    streams = [_Source(index, source, encoder, seed, skip_bad_records, stats) for index, source in enumerate(sources)]
    held = [streamed.hold_out(per_source, eval_fraction if eval_fraction < 1 else 0.0) for streamed in streams]
    parts = [streamed.stream() for streamed in streams]
    if 0 < eval_fraction < 1 and eval_max_tokens and any(held):
        lengths = [encoder.encode([p for _, p in h])[1] if h else np.zeros(0, np.int64) for h in held]
        chosen = cap_tokens([np.arange(len(h)) for h in held], lengths, eval_max_tokens, seed)
        for streamed, h, keep in zip(streams, held, chosen):
            streamed.held = {h[i][0] for i in keep.tolist()}  # the others go back to the train stream
        held = [[h[i] for i in keep.tolist()] for h, keep in zip(held, chosen)]
    evaluation = [payload for h in held for _, payload in h]
    total, how = sum(s.ratio or 0 for s in sources), "concatenated"
    if len(parts) == 1:
        mixed = parts[0]
    elif sources[0].ratio is None:
        mixed = datasets.concatenate_datasets(parts)
    else:
        probabilities, how = [s.ratio / total for s in sources], stopping_strategy
        mixed = datasets.interleave_datasets(parts, probabilities, seed=seed, stopping_strategy=how)
    shares = ", ".join(s.name + (f" {s.ratio / total:.1%}" if s.ratio else "") for s in sources)
    message = "streaming mixture (%s): %s; %d eval documents held out near the start of each source"
    logger.info(message, how, shares, len(evaluation))
    return mixed, evaluation


def streamed_rows(
    mixed: datasets.IterableDataset,
    encoder,
    *,
    max_seq_length: int,
    packing: bool,
    truncate: bool,
    seed: int,
    num_processes: int,
    stats: DataStats,
    passes: int | None = None,
) -> datasets.IterableDataset:
    """Rows from the stream, one shard per process: shard r tokenizes and packs `split_dataset_by_node(r)`, pass
    after pass (`passes` of them; None: without end, the trainer stops at max_steps)."""

    def payloads(rank, number):
        shard = split_dataset_by_node(mixed, rank=rank, world_size=num_processes)
        shard.set_epoch(number)  # pass 0 reads the files in order; later passes in a seeded new order
        for rows in shard.iter(batch_size=READ_BATCH):  # not __iter__: that splits the shard again per worker
            yield from rows["payload"]

    def cut_documents(rank, number):
        for batch in batched(payloads(rank, number)):
            flat, lengths, mask = encoder.encode(batch)
            flat = flat.astype(np.int64)
            starts, lengths = cut(np.cumsum(lengths) - lengths, lengths, max_seq_length, truncate=truncate, stats=stats)
            for start, length in zip(starts.tolist(), lengths.tolist()):
                ids = flat[start : start + length]
                yield ids, None if mask is None else np.where(mask[start : start + length], ids, IGNORE_INDEX)

    def rows(ranks):
        for rank in ranks:
            number = 0
            while passes is None or number < passes:
                if number:
                    logger.info(
                        "streamed data of rank %d: pass %d starts (its part of the stream ran out)", rank, number + 1
                    )
                produced = 0
                pass_seed = seed + rank + 1_000_003 * number
                for row in packed_rows(cut_documents(rank, number), max_seq_length, packing, PACK_BUFFER, pass_seed):
                    produced += 1
                    yield row
                if not produced:
                    raise DataError(
                        f"streamed data: rank {rank} of {num_processes} got no documents from the stream; "
                        "give more files (or records) than processes"
                    )
                number += 1

    return datasets.IterableDataset.from_generator(rows, gen_kwargs={"ranks": list(range(num_processes))})


def packed_rows(pieces, max_seq_length: int, packing: bool, buffer_size: int, seed: int):
    """Rows of (ids, labels) pieces from a stream, holding at most `buffer_size` pieces: each buffer is packed by
    `packing.pack` (the stored plan's packer) and its rows are shuffled, seeded per buffer."""
    pieces, read = iter(pieces), 0
    for buffer in iter(lambda: list(islice(pieces, buffer_size)), []):
        read += len(buffer)
        rng = np.random.default_rng([seed, read if len(buffer) == buffer_size else 0])
        rows, order = pack(np.array([len(ids) for ids, _ in buffer], dtype=np.int64), max_seq_length, packing)
        for r in rng.permutation(len(rows) - 1).tolist():
            docs = [buffer[i] for i in order[rows[r] : rows[r + 1]].tolist()]
            row = {"input_ids": np.concatenate([d[0] for d in docs]).tolist(), "seq_lengths": [len(d[0]) for d in docs]}
            if docs[0][1] is not None:
                row["labels"] = np.concatenate([d[1] for d in docs]).tolist()
            yield row


def held_out_rows(
    held: list,
    encoder,
    cache: Path,
    builder: bool,
    *,
    max_seq_length: int,
    packing: bool,
    truncate: bool,
    seed: int,
    wait_seconds: float,
) -> PackedRows:
    """The stream's held-out documents as prepared data is read: a small store keyed by their content, its plan
    (`plan.pieces`, `plan.build_plan`) and `PackedRows`; written by `builder`, awaited by the others."""
    content = hashlib.sha256(json.dumps(held, sort_keys=True).encode()).hexdigest()
    store_dir = cache / f"stream-eval-{key_of({'documents': content, 'encoder': encoder.fingerprint})}"

    def write(path: Path) -> None:
        with StoreWriter(path, encoder.dtype, encoder.with_labels) as writer:
            for batch in batched(held):
                writer.add(*encoder.encode(batch))
            writer.finish({"source": "streamed eval documents"})

    prepare_once(store_dir, write, builder, "streamed eval documents", wait_seconds)
    store = TokenStore(store_dir, "streamed eval documents")
    fields = {"store": store_dir.name, "max_seq_length": max_seq_length, "packing": packing, "truncate": truncate}
    plan = cache / f"stream-eval-plan-{key_of({**fields, 'seed': seed})}"

    def plan_rows(path: Path) -> None:
        splits = {"eval": pieces([store], [np.arange(store.documents)], max_seq_length, truncate, DataStats())}
        build_plan(path, splits, max_seq_length, packing, seed, fields)

    prepare_once(plan, plan_rows, builder, "streamed eval plan", wait_seconds)
    return PackedRows(plan, "eval", [store])
