"""Mixtures of sources (the moellama mixture config): ratios, seeded percentage samples, domain filters."""

import logging
from collections import Counter
from dataclasses import dataclass, field

import datasets

from .errors import DataError, DataStats
from .sources import load_source

logger = logging.getLogger(__name__)


@dataclass
class MixtureSource:
    name: str
    subset: str | None = None
    split: str = "train"
    ratio: float = 1.0
    percentage: float = 100.0  # a seeded random sample of this share of the rows, never the first rows
    streaming: bool = False
    domains: list[str] = field(default_factory=list)  # keep rows whose `domain` column is one of these
    text_field: str = "text"

    def __post_init__(self):
        if self.ratio <= 0:
            raise DataError(f"mixture source {self.name}: ratio must be > 0, got {self.ratio}")
        if not 0 < self.percentage <= 100:
            raise DataError(f"mixture source {self.name}: percentage must be in (0, 100], got {self.percentage}")


def parse_mixture(entries: list[dict]) -> list[MixtureSource]:
    known = set(MixtureSource.__dataclass_fields__)
    sources = []
    for i, entry in enumerate(entries):
        unknown = sorted(set(entry) - known)
        if unknown or "name" not in entry:
            raise DataError(f"data mixture entry {i}: unknown keys {unknown} or no 'name' (keys: {sorted(known)})")
        sources.append(MixtureSource(**entry))
    return sources


def _prepare(source: MixtureSource, seed: int, stats: DataStats, skip_bad_records: bool):
    """One source as a dataset with columns `text` and `source`, filtered and sampled."""
    ds = load_source(source.name, source.subset, source.split, source.text_field, source.streaming,
                     skip_bad_records, stats)
    if source.domains:
        if "domain" not in (ds.column_names or []):
            raise DataError(f"mixture source {source.name}: domains given but no 'domain' column "
                            f"(columns: {ds.column_names})")
        wanted = set(source.domains)
        ds = ds.filter(lambda row: row["domain"] in wanted)
    if source.text_field != "text":
        ds = ds.rename_column(source.text_field, "text")
    ds = ds.select_columns(["text"]).map(lambda _: {"source": source.name})
    if source.percentage < 100:
        if isinstance(ds, datasets.IterableDataset):
            keep = source.percentage / 100
            ds = ds.shuffle(seed=seed, buffer_size=10_000).filter(
                lambda _, idx: (hash((seed, idx)) % 1_000_000) / 1_000_000 < keep, with_indices=True)
        else:
            count = max(1, round(len(ds) * source.percentage / 100))
            ds = ds.shuffle(seed=seed).select(range(count))
    if not isinstance(ds, datasets.IterableDataset) and len(ds) == 0:
        raise DataError(f"mixture source {source.name}: no rows left after filtering")
    return ds


def build_mixture(sources: list[MixtureSource], seed: int = 0, stopping_strategy: str = "all_exhausted",
                  stats: DataStats | None = None, skip_bad_records: bool = False):
    """Interleave the sources with normalised ratios (datasets.interleave_datasets); log the effective mix."""
    if stopping_strategy not in ("all_exhausted", "first_exhausted"):
        raise DataError(f"stopping_strategy={stopping_strategy!r} is not all_exhausted or first_exhausted")
    if not sources:
        raise DataError("data mixture is empty")
    stats = stats if stats is not None else DataStats()
    parts = [_prepare(s, seed, stats, skip_bad_records) for s in sources]
    streaming = [isinstance(p, datasets.IterableDataset) for p in parts]
    if any(streaming) and not all(streaming):
        parts = [p if s else p.to_iterable_dataset() for p, s in zip(parts, streaming)]
    total = sum(s.ratio for s in sources)
    probabilities = [s.ratio / total for s in sources]
    if len(parts) == 1:
        mixed = parts[0]
    else:
        mixed = datasets.interleave_datasets(parts, probabilities=probabilities, seed=seed,
                                             stopping_strategy=stopping_strategy)
    if isinstance(mixed, datasets.IterableDataset):
        logger.info("data mixture (streaming, planned): %s",
                    {s.name: round(p, 3) for s, p in zip(sources, probabilities)})
    else:
        logger.info("data mixture (rows): %s", dict(Counter(mixed["source"])))
    return mixed
