"""From sources to train/eval datasets of rows ready for the collators: what train.py calls.

Map-style data: every source is tokenized once into a memory-mapped store, the mixture rules choose documents,
the packer plans rows from the lengths, and `PackedRows` gathers each row when it is read. Every rank tokenizes a
share of the sources (each node's ranks for a cache per node, every rank with a shared cache); the main process
joins the parts and plans the rows while the others wait.
Streaming data: each rank reads, tokenizes and packs its own shard on the fly (`streaming.py`), with the same
cutter and packer (`packing.py`); its held-out documents become a small store read like prepared data.
"""

import logging
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import datasets
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from .encode import DialogueEncoder, TextEncoder
from .mixing import MixtureSource, check_disjoint, parse_mixture, select_documents
from .parts import Builders, prepare_stores, share
from .plan import build_plan, pieces
from .rows import PackedRows
from .sources import is_local, resolve_revision
from .stats import DataError, DataStats
from .store import WAIT_SECONDS, key_of, prepare_once, read_meta
from .streaming import held_out_rows, stream_mixture, streamed_rows

logger = logging.getLogger(__name__)
PLAN_VERSION = 1
EVAL_MAX_TOKENS = 1_000_000  # the default cap on a fractional eval holdout, which otherwise grows with the corpus


@dataclass
class DataOptions:
    """How to read and cut the data, one declaration for both sides: train.py's data flags of these names are these
    fields (`DataArguments` inherits them, defaults and help included), and a `DataSpec` carries them to the readers."""

    text_column: str = field(default="text", metadata={"help": "Text column for pretraining data."})
    sample_by: Literal["document", "paragraph", "line"] = field(
        default="document",
        metadata={"help": "A .txt file is one document, or one per paragraph (blank-line separated) or per line."},
    )
    sft_format: str | None = field(
        default=None, metadata={"help": "alpaca | sharegpt | messages | prompt_completion | qa (default: detected)."}
    )
    packing: bool = field(default=True, metadata={"help": "Pack documents into full rows (false: pad to longest)."})
    eval_fraction: float = field(
        default=0.05, metadata={"help": "Documents held out for evaluation: a fraction (< 1) or a count (0 = none)."}
    )
    eval_max_tokens: int = field(
        default=EVAL_MAX_TOKENS,
        metadata={
            "help": "A fractional --eval_fraction holds out at most this many tokens (0: no cap); the rest trains."
        },
    )
    packing_bins: int = field(default=8, metadata={"help": "Length groups of the hierarchical balance packer."})
    streaming: bool = field(
        default=False, metadata={"help": "Stream sources instead of downloading (needs max_steps)."}
    )
    skip_bad_records: bool = field(default=False, metadata={"help": "Skip (and count) malformed records."})
    stopping_strategy: Literal["all_exhausted", "first_exhausted"] = field(
        default="all_exhausted", metadata={"help": "When a streamed mixture with ratios ends."}
    )


@dataclass
class DataSpec(DataOptions):
    """What to read and how to cut it: the options, the sources, and where prepared data goes (train.py builds it
    from its arguments in one place, `training.data_setup.data_spec`)."""

    datasets: list[str] = field(default_factory=list)  # hub ids or local paths, "name:config" allowed
    train_files: list[str] = field(default_factory=list)
    mixture: list[dict] = field(default_factory=list)
    cache_dir: str | None = None  # stores and plans (default: <HF_DATASETS_CACHE>/moai_llm)
    shared_cache: bool = False  # cache_dir is seen by every node: prepared once, by every rank of every node
    wait_seconds: float = WAIT_SECONDS  # a waiting process stops when nothing changed at a store for this long
    progress: bool = False  # progress bars while tokenizing

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir or Path(datasets.config.HF_DATASETS_CACHE) / "moai_llm")


def mixture_sources(spec: DataSpec) -> list[MixtureSource]:
    """The sources to read: the YAML mixture, else every --train_file and --dataset (no ratios), else the sample.
    A mixture source without `text_field` reads --text_column. A mixture and files/datasets together: an error."""
    if spec.mixture and (spec.train_files or spec.datasets):
        given = ", ".join([*spec.train_files, *spec.datasets])
        raise DataError(
            f"data sources given twice: a mixture and --train_file/--dataset ({given}); give one of them "
            "(a mixture can list those files)"
        )
    if spec.mixture:
        sources = [
            replace(s, text_field=s.text_field or spec.text_column, sample_by=s.sample_by or spec.sample_by)
            for s in parse_mixture(spec.mixture)
        ]
    else:
        sources = _flag_sources(spec)
    sources = [s if is_local(s.name) else replace(s, revision=resolve_revision(s.name, s.revision)) for s in sources]
    check_disjoint(sources)
    return sources


def _flag_sources(spec: DataSpec) -> list[MixtureSource]:
    sources = [
        MixtureSource(name=f, text_field=spec.text_column, streaming=spec.streaming, sample_by=spec.sample_by)
        for f in spec.train_files
    ]
    for entry in spec.datasets:
        entry, _, revision = entry.partition("@")
        name, _, subset = entry.partition(":")
        sources.append(
            MixtureSource(
                name=name,
                subset=subset or None,
                revision=revision or None,
                text_field=spec.text_column,
                streaming=spec.streaming,
            )
        )
    return sources or [MixtureSource(name="sample", text_field="text")]


@dataclass
class Prepared:
    """A prepared mixture: the sources' stores and the stored packing plan."""

    plan: Path
    stores: list
    meta: dict


def prepare(
    spec: DataSpec,
    encoder,
    max_seq_length: int,
    *,
    seed: int = 0,
    stats: DataStats | None = None,
    truncate: bool = False,
    sources: list[MixtureSource] | None = None,
) -> Prepared:
    """Stores for every source and the packing plan of the mixture, prepared once, memory-mapped by all."""
    stats = stats if stats is not None else DataStats()
    sources = sources or mixture_sources(spec)
    state = PartialState()
    builders = _builders(state, spec.shared_cache)
    # decided once, on rank 0: other nodes may mount the files elsewhere or see other modification times
    work = _on_rank_zero(state, lambda: share(sources, encoder, spec.cache, spec.skip_bad_records, builders.count))
    stores = prepare_stores(
        sources,
        encoder,
        work,
        builders,
        skip_bad_records=spec.skip_bad_records,
        stats=stats,
        progress=spec.progress,
        wait_seconds=spec.wait_seconds,
    )
    fields = {
        "version": PLAN_VERSION,
        "stores": [s.path.name for s in stores],
        "seed": seed,
        "ratios": [s.ratio for s in sources],
        "percentages": [s.percentage for s in sources],
        "eval_fraction": spec.eval_fraction,
        "eval_max_tokens": spec.eval_max_tokens if 0 < spec.eval_fraction < 1 else 0,
        "max_seq_length": max_seq_length,
        "packing": spec.packing,
        "truncate": truncate,
    }
    path = spec.cache / f"plan-{key_of(fields)}"

    def build(path: Path) -> None:
        plan_stats = DataStats()
        lengths = [s.lengths for s in stores]
        selection = select_documents(sources, lengths, spec.eval_fraction, seed, spec.eval_max_tokens)
        splits = {"train": pieces(stores, selection.train, max_seq_length, truncate, plan_stats)}
        if not len(splits["train"]["length"]):
            raise DataError("no documents left to train on")
        if any(len(e) for e in selection.eval):
            splits["eval"] = pieces(stores, selection.eval, max_seq_length, truncate, DataStats())
        build_plan(
            path,
            splits,
            max_seq_length,
            spec.packing,
            seed,
            {**fields, "stats": dict(plan_stats), "mixture": selection.summary},
        )

    prepare_once(path, build, builders.main, "packing plan", spec.wait_seconds)
    meta = read_meta(path, "packing plan")
    stats.update(meta.get("stats", {}))
    logger.info("data mixture per epoch: %s", "; ".join(meta["mixture"]))
    return Prepared(path, stores, meta)


def _builders(state: PartialState, shared_cache: bool) -> Builders:
    """Who tokenizes: with a shared cache every rank of every node, each a share; else each node's local ranks (their
    number from torchrun's LOCAL_WORLD_SIZE; where it is not set, the node's local main process alone)."""
    if shared_cache:
        return Builders(state.process_index, state.num_processes, state.is_main_process)
    if "LOCAL_WORLD_SIZE" in os.environ:
        return Builders(state.local_process_index, int(os.environ["LOCAL_WORLD_SIZE"]), state.is_local_main_process)
    return Builders(0 if state.is_local_main_process else 1, 1, state.is_local_main_process)


def _on_rank_zero(state: PartialState, decide):
    """`decide()` on rank 0, its result sent to every rank; a DataError there stops every rank with its line."""
    if state.num_processes == 1:
        return decide()
    box = [None]
    if state.is_main_process:
        try:
            box = [(decide(), None)]
        except DataError as error:
            box = [(None, f"{error} (on rank 0, {socket.gethostname()})")]
    result, error = broadcast_object_list(box, from_process=0)[0]
    if error is not None:
        raise DataError(error)
    return result


def reading_plan(spec: DataSpec, tokenizer, sft: bool = False):
    """(sources, encoder, truncate) for pretraining or SFT; SFT needs its own data and no text_field."""
    sources = mixture_sources(spec)
    if not sft:
        return sources, TextEncoder(tokenizer), False
    if sources[0].name == "sample" and len(sources) == 1:
        raise DataError(
            "SFT needs data: give --train_file or --dataset (bundled examples: moai_llm/assets/sample/sft_*.jsonl)"
        )
    for source in sources:
        if source.text_field not in (None, "text"):
            raise DataError(
                f"mixture source {source.name}: text_field is for pretraining; SFT records are "
                "recognised by their columns (set --sft_format to choose)"
            )
    return sources, DialogueEncoder(tokenizer, spec.sft_format), True


def row_datasets(
    spec: DataSpec,
    tokenizer,
    max_seq_length: int,
    *,
    sft: bool = False,
    seed: int = 0,
    rows_per_step: int = 1,
    stats: DataStats | None = None,
):
    """(train, eval) rows from the sources/mixture; eval documents never appear in train. Pretraining documents, or
    with `sft` chat-formatted dialogues with labels only on assistant tokens. `rows_per_step`: rows read per
    micro-step by all ranks together (processes x per-device batch), the unit the packer balances."""
    sources, encoder, truncate = reading_plan(spec, tokenizer, sft=sft)
    stats = stats if stats is not None else DataStats()
    if spec.streaming or any(s.streaming for s in sources):
        return _streamed(spec, encoder, sources, stats, max_seq_length=max_seq_length, truncate=truncate, seed=seed)
    prepared = prepare(spec, encoder, max_seq_length, seed=seed, stats=stats, truncate=truncate, sources=sources)
    plan, stores = prepared.plan, prepared.stores
    train = PackedRows(plan, "train", stores, rows_per_step, spec.packing_bins)
    evaluation = PackedRows(plan, "eval", stores) if "eval" in prepared.meta["splits"] else None
    logger.info(
        "%d train rows%s; attention balance over steps of %d rows: %.3f",
        len(train),
        f", {len(evaluation)} eval rows" if evaluation is not None else "",
        rows_per_step,
        train.balance(),
    )
    return train, evaluation


def _streamed(spec: DataSpec, encoder, sources, stats: DataStats, **shape):
    """Streamed train rows, and the held-out documents as a small prepared store (`held_out_rows`)."""
    mixed, held = stream_mixture(
        sources,
        encoder,
        seed=shape["seed"],
        stopping_strategy=spec.stopping_strategy,
        eval_fraction=spec.eval_fraction,
        eval_max_tokens=spec.eval_max_tokens,
        skip_bad_records=spec.skip_bad_records,
        stats=stats,
    )
    state = PartialState()
    shape["packing"] = spec.packing
    train = streamed_rows(mixed, encoder, num_processes=state.num_processes, stats=stats, **shape)
    if not held:
        return train, None
    builder = state.is_main_process if spec.shared_cache else state.is_local_main_process
    return train, held_out_rows(held, encoder, spec.cache, builder, wait_seconds=spec.wait_seconds, **shape)
