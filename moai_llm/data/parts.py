"""Preparation shared by several processes: rank 0 cuts every source into parts (`share`), each builder tokenizes
its own parts into part-stores, and the main builder joins each source's parts into its store (`prepare_stores`).

A part is a contiguous run of a source's records: byte ranges cut at line starts inside files whose records are
lines, whole files otherwise. Parts are joined in the source's order whoever built them, so the store (and the plan
built from it) is, token for token, the one a single process writes.
"""

import functools
import logging
import shutil
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .encode import build_store, store_path
from .sources import is_local, local_files, splits_at_lines
from .stats import DataError, DataStats
from .store import (
    WAIT_SECONDS,
    TokenStore,
    claimed,
    is_complete,
    prepare_once,
    publish,
    temporary_directory,
)

logger = logging.getLogger(__name__)
PART_MIN_BYTES = 1 << 22  # a source is shared by several processes in parts of at least this many bytes
OFFSETS_CHUNK = 1 << 20  # document offsets rewritten at a time when parts are joined


def part_path(path: Path, index: int, count: int) -> Path:
    """Part `index` of `count` of the store at `path` (a hidden sibling, published on its own)."""
    return path.parent / f".{path.name}.part-{index:05d}-of-{count:05d}"


@dataclass
class Builders:
    """The processes that prepare together: this one is `index` of `count` (none of them if index >= count); the
    `main` one joins the parts and plans."""

    index: int = 0
    count: int = 1
    main: bool = True


def share(sources, encoder, cache_dir: Path, skip_bad_records: bool, count: int) -> list[dict]:
    """What to prepare (decided once, on rank 0, and sent to every rank): each source's store path and its parts
    for `count` processes (`line_parts`), with the sizes of its files, which every process checks against its own."""
    work = []
    for source in sources:
        path = store_path(source, encoder, cache_dir, skip_bad_records)
        parts, sizes = line_parts(source, count)
        work.append({"path": str(path), "parts": parts, "sizes": sizes})
    return work


def line_parts(source, count: int, min_bytes: int | None = None) -> tuple[list | None, list[int] | None]:
    """A local source cut into up to `count` contiguous parts of similar size in bytes, each a list of segments
    (file index, first byte, end byte or None for the whole file), and the sizes of its files. Cuts fall at line
    starts inside files whose records are lines (.jsonl; .txt one document per line), between files otherwise, so
    no record is cut and the parts in order hold the source's records in order. (None, None): one part (a Hub
    source, or one too small to be worth sharing: under `count` x PART_MIN_BYTES)."""
    min_bytes = PART_MIN_BYTES if min_bytes is None else min_bytes
    if count < 2 or not is_local(source.name):
        return None, None
    files, sample_by = local_files(source.name), source.sample_by or "document"
    sizes = np.array([p.stat().st_size for p in files], dtype=np.int64)
    ends = np.cumsum(sizes)
    count = int(min(count, ends[-1] // max(min_bytes, 1)))
    cuts = {(0, 0)}
    for i in range(1, count):
        target = int(ends[-1]) * i // count
        f = int(np.searchsorted(ends, target, side="right"))  # the file holding byte `target`
        inside = target - int(ends[f] - sizes[f])
        if splits_at_lines(files[f], sample_by):
            inside = _line_start(files[f], inside)
        else:
            inside = int(sizes[f]) if 2 * inside >= sizes[f] else 0
        cuts.add((f + 1, 0) if inside >= sizes[f] else (f, inside))
    cuts = sorted(c for c in cuts if c[0] < len(files))
    parts = []
    for (f0, b0), (f1, b1) in zip(cuts, [*cuts[1:], (len(files), 0)]):
        segments = []
        for f in range(f0, min(f1 + 1, len(files))):
            lo, hi = (b0 if f == f0 else 0), (b1 if f == f1 else int(sizes[f]))
            if f == f1 and hi == 0:
                continue
            segments.append([f, lo, None if lo == 0 and hi == sizes[f] else hi])
        parts.append(segments)
    return (parts, sizes.tolist()) if len(parts) > 1 else (None, None)


def _line_start(path: Path, offset: int) -> int:
    """The first line start at or after byte `offset`."""
    if offset <= 0:
        return 0
    with open(path, "rb") as handle:
        handle.seek(offset - 1)
        handle.readline()
        return handle.tell()


def _check_sizes(source, sizes: list[int]) -> None:
    here = [p.stat().st_size for p in local_files(source.name)]
    if here != sizes:
        raise DataError(
            f"{source.name} on {socket.gethostname()}: {len(here)} files of {sum(here):,} bytes here, "
            f"{len(sizes)} files of {sum(sizes):,} bytes on rank 0; every node must see the same data"
        )


def prepare_stores(
    sources,
    encoder,
    work: list[dict],
    builders: Builders | None = None,
    *,
    skip_bad_records: bool = False,
    stats: DataStats | None = None,
    progress: bool = False,
    wait_seconds: float = WAIT_SECONDS,
) -> list[TokenStore]:
    """Every source's store (`work`: from `share`), memory-mapped. The parts of all sources, in order, are dealt to
    the builders in turn (part j to builder j mod count), each builds its own and publishes it; the main builder
    then joins each source's parts into its store (`publish_union`), while the others wait. Every wait is bounded,
    and a builder that fails hands its one line to everyone waiting for what it would have built."""
    builders = builders or Builders()
    jobs, unions = [], []
    for source, item in zip(sources, work):
        path, parts = Path(item["path"]), item["parts"] or [None]
        unions += [path] if len(parts) > 1 else []
        for i, segments in enumerate(parts):
            jobs.append((source, item, path if len(parts) == 1 else part_path(path, i, len(parts)), segments))
    mine = jobs[builders.index :: builders.count] if builders.index < builders.count else []
    mine = [job for job in mine if not is_complete(Path(job[1]["path"]))]
    with claimed([target for _, _, target, _ in mine] + (unions if builders.main else []), wait_seconds):
        for source, item, target, segments in mine:
            if segments is not None:
                _check_sizes(source, item["sizes"])
                encoder.settle(source, skip_bad_records)
            build = functools.partial(
                build_store,
                source=source,
                encoder=encoder,
                skip_bad_records=skip_bad_records,
                progress=progress,
                segments=segments,
            )
            prepare_once(target, build, True, f"data for {source.name}", wait_seconds)
        return [_joined(source, item, builders.main, wait_seconds, stats) for source, item in zip(sources, work)]


def _joined(source, item: dict, main: bool, wait_seconds: float, stats: DataStats | None) -> TokenStore:
    path, parts, what = Path(item["path"]), item["parts"], f"data for {source.name}"
    if parts is None:
        prepare_once(path, None, False, what, wait_seconds)
    else:
        targets = [part_path(path, i, len(parts)) for i in range(len(parts))]

        def join(final: Path) -> None:
            for target in targets:
                prepare_once(target, None, False, what, wait_seconds)
            if not any(TokenStore(target, source.name).documents for target in targets):
                empty = " left after the domain filter" if source.domains else " (empty source)"
                raise DataError(f"{source.name}: no documents{empty}")  # as one process building it says
            publish_union(final, targets, {"source": source.name})
            logger.info("joined %d parts of %s into %s", len(targets), source.name, final)

        prepare_once(path, join, main, what, wait_seconds)
    store = TokenStore(path, source.name)
    if stats is not None:
        stats.update(store.meta.get("stats", {}))  # skips counted at preparation are reported by every run
    return store


def publish_union(final: Path, parts: list[Path], meta: dict) -> None:
    """The store at `final` as the union of complete part-stores, in this order: offsets.bin of every document
    (each part's offsets shifted by the tokens before it), written a part at a time, and meta.json naming the parts.
    Their counts and skips add up; their tokens stay where they are."""
    tmp = temporary_directory(final)
    try:
        documents, tokens, stats, labels = 0, 0, Counter(), []
        with open(tmp / "offsets.bin", "wb") as handle:
            handle.write(np.zeros(1, dtype=np.int64).tobytes())
            for part in parts:
                store = TokenStore(part, meta.get("source", str(final)))
                for lo in range(1, store.documents + 1, OFFSETS_CHUNK):
                    handle.write((np.asarray(store.offsets[lo : lo + OFFSETS_CHUNK]) + tokens).tobytes())
                documents, tokens = documents + store.documents, tokens + store.num_tokens
                stats.update(store.meta.get("stats", {}))
                labels.append(store.meta["labels"])
                dtype = store.meta["dtype"]
        publish(
            tmp,
            final,
            {
                **meta,
                "stats": dict(stats),
                "documents": documents,
                "tokens": tokens,
                "dtype": dtype,
                "labels": all(labels),
                "parts": [part.name for part in parts],
            },
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
