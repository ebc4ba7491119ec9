"""Sources tokenized into stores: records are read one at a time, encoded in batches and appended to disk.

Nothing here holds a corpus in memory: a batch of documents is read, encoded by the fast tokenizer's
`encode_batch_fast` (Rust, all cores, no offsets), appended to the store, and dropped.
"""

import functools
import hashlib
import logging
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..batch_format import IGNORE_INDEX
from .sft import FORMAT_ALIASES, detect_format, to_messages, tokenize_dialogue
from .sources import fingerprint, iter_records, local_files, read_file
from .stats import DataError, DataStats
from .store import (
    StoreWriter,
    directory_size,
    key_of,
    token_dtype,
)

logger = logging.getLogger(__name__)
BATCH_DOCUMENTS = 1000
BATCH_CHARACTERS = 4_000_000


def tokenizer_hash(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocabulary, merges, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TextEncoder:
    """Pretraining documents: the text's ids (no special tokens) followed by EOS, which separates documents."""

    with_labels = False

    def __init__(self, tokenizer):
        self.tokenizer, self.eos = tokenizer, tokenizer.eos_token_id
        if self.eos is None:
            raise DataError("tokenizer has no eos_token; documents could not be separated")
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.dtype = token_dtype(len(tokenizer))

    @staticmethod
    def text_column(source) -> str:
        return source.text_field or "text"

    @functools.cached_property
    def fingerprint(self) -> dict:
        return {"kind": "text", "tokenizer": tokenizer_hash(self.tokenizer), "eos": self.eos}

    def settle(self, source, skip_bad_records: bool) -> None:
        """Nothing to learn from a source's first record (see `DialogueEncoder.settle`)."""

    def payload(self, record: dict, source, where: str):
        column = self.text_column(source)
        text = record[column]
        if not isinstance(text, str):
            raise DataError(f"{where}: {column!r} is {type(text).__name__}, not text")
        return text or None  # an empty document is skipped (and counted)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, None]:
        if self.backend is not None and hasattr(self.backend, "encode_batch_fast"):
            ids = [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        else:
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        for doc in ids:
            doc.append(self.eos)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        return np.fromiter(chain.from_iterable(ids), dtype=self.dtype, count=int(lengths.sum())), lengths, None


class DialogueEncoder:
    """SFT records rendered with the chat template; the mask marks assistant tokens (the trained ones)."""

    with_labels = True

    def __init__(self, tokenizer, sft_format: str | None = None):
        if not tokenizer.chat_template:
            raise DataError("SFT: the tokenizer has no chat_template (train one with train_tokenizer.py)")
        self.tokenizer, self.sft_format = tokenizer, FORMAT_ALIASES.get(sft_format, sft_format)
        self.dtype = token_dtype(len(tokenizer))
        self.formats: dict[str, str] = {}

    @staticmethod
    def text_column(source) -> None:
        return None  # records are recognised by their format's columns

    @functools.cached_property
    def fingerprint(self) -> dict:
        return {
            "kind": "dialogue",
            "tokenizer": tokenizer_hash(self.tokenizer),
            "chat_template": hashlib.sha256(str(self.tokenizer.chat_template).encode()).hexdigest()[:16],
            "sft_format": self.sft_format,
        }

    def settle(self, source, skip_bad_records: bool) -> None:
        """The source's format, detected from its first kept record, as one process reading it from the start does;
        a builder of a later part would otherwise detect it from the part's first record."""
        if self.sft_format is None and source.name not in self.formats:
            next(source_payloads(source, self, skip_bad_records, DataStats()), None)

    def payload(self, record: dict, source, where: str):
        fmt = self.formats.get(source.name)
        if fmt is None:
            fmt = self.formats[source.name] = self.sft_format or detect_format(record.keys())
        try:
            return to_messages(record, fmt)
        except (KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{where}: not a {fmt} record ({type(err).__name__}: {err})") from None

    def encode(self, dialogues: list[list[dict]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        encoded = [tokenize_dialogue(messages, self.tokenizer, max_seq_length=1 << 62) for messages in dialogues]
        lengths = np.array([len(e["input_ids"]) for e in encoded], dtype=np.int64)
        flat = np.fromiter(chain.from_iterable(e["input_ids"] for e in encoded), self.dtype, int(lengths.sum()))
        labels = np.fromiter(chain.from_iterable(e["labels"] for e in encoded), np.int64, int(lengths.sum()))
        return flat, lengths, labels != IGNORE_INDEX


def source_payloads(source, encoder, skip_bad_records: bool, stats: DataStats, records=None) -> Iterator:
    """The encoder's input for every kept record of one mixture source (domain filter applied)."""
    if records is None:
        records = iter_records(
            source.name,
            subset=source.subset,
            split=source.split,
            text_column=encoder.text_column(source),
            skip_bad_records=skip_bad_records,
            stats=stats,
            sample_by=source.sample_by or "document",
            revision=source.revision,
        )
    wanted = set(source.domains)
    for number, record in enumerate(records):
        where = f"{source.name} record {number}"
        if wanted:
            if "domain" not in record:
                raise DataError(
                    f"mixture source {source.name}: domains given but {where} has no 'domain' "
                    f"column (columns: {sorted(record)})"
                )
            if record["domain"] not in wanted:
                stats["records_outside_domains"] += 1
                continue
        payload = encoder.payload(record, source, where)
        if payload is None:
            stats["empty_documents_skipped"] += 1
            continue
        yield payload


def part_records(source, encoder, segments: list, skip_bad_records: bool, stats: DataStats) -> Iterator[dict]:
    """The records of one part of a local source (`line_parts`), read from this process's own paths."""
    files, sample_by = local_files(source.name), source.sample_by or "document"
    for index, start, end in segments:
        yield from read_file(files[index], encoder.text_column(source), skip_bad_records, stats, sample_by, start, end)


def batched(payloads: Iterable, size: int = BATCH_DOCUMENTS, characters: int = BATCH_CHARACTERS) -> Iterator[list]:
    batch, chars = [], 0
    for payload in payloads:
        batch.append(payload)
        chars += len(payload) if isinstance(payload, str) else 0
        if len(batch) >= size or chars >= characters:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def prefetched(batches: Iterator, depth: int = 2) -> Iterator:
    """The next batches are read and parsed in a thread while the caller encodes the current one: the Rust
    tokenizer releases the GIL, so reading overlaps encoding instead of adding to it. A reading error is raised
    here, at the batch it stopped."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")  # one thread: the reads stay in order
    ahead = deque(pool.submit(next, batches, None) for _ in range(depth))
    try:
        while (batch := ahead.popleft().result()) is not None:
            ahead.append(pool.submit(next, batches, None))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def store_path(source, encoder, cache_dir: Path, skip_bad_records: bool) -> Path:
    fields = {
        "content": fingerprint(source.name, source.subset, source.split, source.revision),
        "name": source.name,
        "subset": source.subset,
        "split": source.split,
        "text_field": source.text_field or "text",
        "domains": sorted(source.domains),
        "encoder": encoder.fingerprint,
        "skip_bad_records": skip_bad_records,
    }
    if (source.sample_by or "document") != "document":  # a key change only where it changes what is read
        fields["sample_by"] = source.sample_by
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.name.rstrip("/")).name or "source")[:40]
    return Path(cache_dir) / f"{slug}-{key_of(fields)}"


def build_store(
    path: Path, source, encoder, skip_bad_records: bool, progress: bool, segments: list | None = None
) -> None:
    """Tokenize a source (or, given `segments`, one part of it: see `parts.share`) into a new store at `path`."""
    stats = DataStats()
    start, cpu = time.perf_counter(), time.process_time()
    records = None if segments is None else part_records(source, encoder, segments, skip_bad_records, stats)
    with (
        StoreWriter(path, encoder.dtype, encoder.with_labels) as writer,
        tqdm(desc=f"tokenizing {source.name}", unit="tok", unit_scale=True, disable=not progress) as bar,
    ):
        for batch in prefetched(batched(source_payloads(source, encoder, skip_bad_records, stats, records))):
            flat, lengths, mask = encoder.encode(batch)
            writer.add(flat, lengths, mask)
            bar.update(len(flat))
        if writer.documents == 0 and segments is None:  # a part may be empty; the whole source may not
            raise DataError(
                f"{source.name}: no documents"
                + (" left after the domain filter" if source.domains else " (empty source)")
            )
        writer.finish({"source": source.name, "stats": dict(stats)})
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    logger.info(
        "prepared %s: %d documents, %d tokens in %.1f s (%.0f tokens/s, %.0f per CPU-second), %.1f MB on disk in %s",
        source.name,
        writer.documents,
        writer.tokens,
        seconds,
        writer.tokens / max(seconds, 1e-9),
        writer.tokens / max(cpu, 1e-9),
        directory_size(path) / 1e6,
        path,
    )
