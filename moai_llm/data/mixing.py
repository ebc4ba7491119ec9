"""Mixtures of sources: which documents of each prepared source an epoch reads (docs/data.md, Mixing rules).

No ratios: concatenated, every document once per epoch. Ratios: each source's share of the epoch's tokens, by whole
copies plus a seeded random part, or a subsample. `percentage` samples first; eval documents are held out per source
before any repetition. Streams apply the ratios as `interleave_datasets` probabilities.
"""

import logging
from dataclasses import dataclass, field

import numpy as np

from .sources import SAMPLE_BY, is_local, local_files
from .stats import DataError

logger = logging.getLogger(__name__)


@dataclass
class MixtureSource:
    name: str
    subset: str | None = None
    split: str = "train"
    ratio: float | None = None  # None on every source: concatenate; else this source's share of the tokens
    percentage: float = 100.0  # a seeded random sample of this share of the documents, never the first ones
    streaming: bool = False
    domains: list[str] = field(default_factory=list)  # keep records whose `domain` column is one of these
    text_field: str | None = None  # None: --text_column (default "text")
    sample_by: str | None = None  # a .txt document: document | paragraph | line (None: --sample_by)
    revision: str | None = None  # a Hub dataset's branch, tag or commit (pinned to its commit when read)

    def __post_init__(self):
        for name in ("ratio", "percentage"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(f"mixture source {self.name}: {name} must be a number, got {value!r}")
        if self.ratio is not None and not self.ratio > 0:
            raise DataError(f"mixture source {self.name}: ratio must be > 0, got {self.ratio}")
        if not 0 < self.percentage <= 100:
            raise DataError(f"mixture source {self.name}: percentage must be in (0, 100], got {self.percentage}")
        if self.sample_by not in (None, *SAMPLE_BY):
            raise DataError(f"mixture source {self.name}: sample_by must be one of {', '.join(SAMPLE_BY)}")


def parse_mixture(entries: list) -> list[MixtureSource]:
    """YAML mixture entries (mappings; already parsed sources pass through) as validated sources."""
    known = set(MixtureSource.__dataclass_fields__)
    if not isinstance(entries, list):
        raise DataError(f"data mixture: expected a list of sources, got {type(entries).__name__}")
    sources = []
    for i, entry in enumerate(entries):
        if isinstance(entry, MixtureSource):
            sources.append(entry)
            continue
        if not isinstance(entry, dict):
            raise DataError(f"data mixture entry {i}: expected a mapping with 'name', got {entry!r}")
        unknown = sorted(set(entry) - known)
        if unknown or "name" not in entry:
            raise DataError(f"data mixture entry {i}: unknown keys {unknown} or no 'name' (keys: {sorted(known)})")
        sources.append(MixtureSource(**entry))
    given = [s.ratio is not None for s in sources]
    if any(given) and not all(given):
        missing = [s.name for s, g in zip(sources, given) if not g]
        raise DataError(f"data mixture: give a ratio for every source or for none (no ratio: {', '.join(missing)})")
    return sources


def check_disjoint(sources: list[MixtureSource]) -> None:
    """A file (or Hub split) in two sources whose domain filters can keep the same record would be read twice, and
    its documents could be held out for eval by one source and trained on by the other: refused. Filters overlap
    when they share a domain, or when either has none (it keeps every record). Use ratios to read a source more."""
    seen: dict[tuple, list[MixtureSource]] = {}
    for source in sources:
        if is_local(source.name):
            items = [str(path.resolve()) for path in local_files(source.name)]
        else:
            items = [f"{source.name}:{source.subset or ''}[{source.split}]"]
        for item in items:
            earlier = seen.setdefault((item, source.text_field), [])
            for other in earlier:
                shared = set(other.domains) & set(source.domains)
                if shared or not other.domains or not source.domains:
                    overlap = f" (both keep domain {sorted(shared)[0]!r})" if shared else ""
                    raise DataError(
                        f"{item} is in two sources ({other.name} and {source.name}){overlap}; give it once "
                        "(ratios read a source more often; disjoint domains split a file)"
                    )
            earlier.append(source)


def eval_counts(documents: list[int], eval_fraction: float) -> list[int]:
    """Documents held out per source: a fraction of each, or a count split across sources by size."""
    if not eval_fraction:
        return [0] * len(documents)
    total = sum(documents)
    if total < 2:
        raise DataError(f"{total} document(s): too few to hold out an eval split (set --eval_fraction 0)")
    if eval_fraction < 1:
        counts = [round(n * eval_fraction) for n in documents]
        if not sum(counts):
            counts[int(np.argmax(documents))] = 1
    else:
        wanted = int(eval_fraction)
        if wanted >= total:
            raise DataError(f"--eval_fraction {eval_fraction}: holds out {wanted} of {total} documents, none left")
        exact = np.array(documents) * wanted / total
        counts = np.floor(exact).astype(int)
        counts[np.argsort(-(exact - counts), kind="stable")[: wanted - counts.sum()]] += 1
        counts = counts.tolist()
    return [min(c, n - 1) if n > 1 else 0 for c, n in zip(counts, documents)]


def _sample(rng, documents: np.ndarray, count: int) -> np.ndarray:
    return np.sort(documents[rng.permutation(len(documents))[:count]])


def _repeat(rng, documents: np.ndarray, lengths: np.ndarray, factor: float) -> np.ndarray:
    """Whole copies of `documents` plus a seeded random part holding the remaining fraction of their tokens."""
    whole, part = int(factor), factor - int(factor)
    pieces = [documents] * whole
    if part > 1e-9 and len(documents):
        order = documents[rng.permutation(len(documents))]
        cumulative = np.cumsum(lengths[order])
        take = min(len(order), int(np.searchsorted(cumulative, part * cumulative[-1])) + 1)
        pieces.append(np.sort(order[:take]))
    return np.concatenate(pieces) if pieces else documents[:0]


def cap_tokens(held: list[np.ndarray], lengths: list[np.ndarray], budget: int, seed: int) -> list[np.ndarray]:
    """Held-out documents per source cut to `budget` tokens in all, each source keeping its share of the tokens
    (a seeded random part of its documents, at least one); logged."""
    tokens = np.array([int(n[d].sum()) for n, d in zip(lengths, held)], dtype=np.float64)
    if tokens.sum() <= budget:
        return held
    capped = []
    for index, (documents, n, share) in enumerate(zip(held, lengths, tokens / tokens.sum())):
        order = documents[np.random.default_rng([seed, index, 3]).permutation(len(documents))]
        keep = int(np.searchsorted(np.cumsum(n[order]), share * budget, side="right"))
        capped.append(np.sort(order[: max(keep, min(1, len(order)))]))
    kept = sum(int(n[d].sum()) for n, d in zip(lengths, capped))
    logger.info(
        "eval documents capped at --eval_max_tokens %d: %d documents, %d tokens held out (of %d documents, %d tokens); "
        "the others train",
        budget,
        sum(map(len, capped)),
        kept,
        sum(map(len, held)),
        int(tokens.sum()),
    )
    return capped


@dataclass
class Selection:
    """Document indices into each source's store: train (repeats allowed) and held-out eval."""

    train: list[np.ndarray]
    eval: list[np.ndarray]
    summary: list[str]  # one line per source, logged by every run


def select_documents(
    sources: list[MixtureSource],
    lengths: list[np.ndarray],
    eval_fraction: float,
    seed: int,
    eval_max_tokens: int = 0,
) -> Selection:
    """Apply percentage, eval holdout and ratios to prepared sources (`lengths`: tokens of each document). A
    fractional holdout larger than `eval_max_tokens` (0: no cap) is cut to it, each source keeping its share; the
    documents cut stay in training."""
    kept = []
    for index, (source, n) in enumerate(zip(sources, lengths)):
        documents = np.arange(len(n), dtype=np.int64)
        if source.percentage < 100:
            rng = np.random.default_rng([seed, index, 0])
            documents = _sample(rng, documents, max(1, round(len(n) * source.percentage / 100)))
        kept.append(documents)
    held = eval_counts([len(d) for d in kept], eval_fraction)
    train, evaluation = [], []
    for index, (documents, count) in enumerate(zip(kept, held)):
        rng = np.random.default_rng([seed, index, 1])
        evaluation.append(_sample(rng, documents, count))
    if 0 < eval_fraction < 1 and eval_max_tokens:
        evaluation = cap_tokens(evaluation, lengths, eval_max_tokens, seed)
    for documents, chosen in zip(kept, evaluation):
        train.append(np.setdiff1d(documents, chosen, assume_unique=True))
    own = np.array([int(n[d].sum()) for n, d in zip(lengths, train)], dtype=np.float64)
    if sources[0].ratio is not None:
        shares = np.array([s.ratio for s in sources], dtype=np.float64)
        factors = shares / shares.sum() * own.sum() / np.maximum(own, 1)
        train = [
            _repeat(np.random.default_rng([seed, i, 2]), d, n, f)
            for i, (d, n, f) in enumerate(zip(train, lengths, factors))
        ]
    read = np.array([int(n[d].sum()) for n, d in zip(lengths, train)], dtype=np.float64)
    repetition = (read / np.maximum(own, 1)).tolist()
    how = "concatenated" if sources[0].ratio is None else "ratios"
    summary = [
        f"{s.name}: {r:.2f}x ({how}), {len(d):,} documents, {int(t):,} tokens "
        f"({100 * t / max(read.sum(), 1):.1f}%), {len(e):,} eval documents"
        for s, d, t, r, e in zip(sources, train, read, repetition, evaluation)
    ]
    return Selection(train, evaluation, summary)
