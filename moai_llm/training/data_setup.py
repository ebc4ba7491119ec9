"""Datasets and collator for a run: the data arguments mapped onto moai_llm.data; `--prepare_only`."""

import logging
import os
import time

from ..data import DataSpec, DataStats, PackedCollator, PaddingCollator, prepare, pretraining_datasets, sft_datasets
from ..data.mixing import parse_mixture
from ..data.pipeline import reading_plan
from ..data.store import WAIT_SECONDS, directory_size
from ..errors import UsageError

logger = logging.getLogger(__name__)


SOURCE_FLAGS = ("train_file", "dataset")  # with `mixture`: the three ways to name the data


def reads_a_stream(data_args) -> bool:
    """--streaming, or `streaming: true` on a mixture source: then every rank reads its own shard of the stream."""
    return bool(data_args.streaming or any(s.streaming for s in parse_mixture(list(data_args.mixture or []))))


def command_line_sources(yaml_values: dict, values: dict, path: str) -> dict:
    """The data flags after the command line went over a YAML --config: --train_file/--dataset on the command line
    replace the YAML's mixture (and the YAML's own files); a YAML naming both a mixture and files is an error."""
    if not yaml_values.get("mixture"):
        return values
    both = [flag for flag in SOURCE_FLAGS if yaml_values.get(flag)]
    if both:
        raise UsageError(f"--config {path}: gives both a mixture and {both[0]}; give the data one way")
    given = [flag for flag in SOURCE_FLAGS if values.get(flag)]
    if not given:
        return values
    logger.info("--%s on the command line replaces the mixture of %s", given[0], path)
    return {**values, "mixture": None}


def stage_sources(data_overrides: dict, stage: str) -> dict:
    """A stage's data overrides: a stage that names its data (mixture, train_file or dataset) replaces all of the
    run's sources, not only the key it gives; naming a mixture and files in one stage is an error."""
    named = [flag for flag in ("mixture", *SOURCE_FLAGS) if data_overrides.get(flag)]
    if not named:
        return data_overrides
    if "mixture" in named and len(named) > 1:
        raise UsageError(f"stage {stage}: gives both a mixture and {named[1]}; give the data one way")
    return {"mixture": None, "train_file": None, "dataset": None, **data_overrides}


def _names(value) -> list[str]:
    """A YAML `train_file: a.jsonl` is one name (list() would split it into characters)."""
    return [value] if isinstance(value, str) else list(value or [])


def data_spec(data_args, training_args=None) -> DataSpec:
    """The data flags as a DataSpec; with `training_args`, the cache defaults to <output_dir>/data_cache."""
    datasets = _names(data_args.dataset)
    if data_args.dataset_config:
        datasets = [entry if ":" in entry else f"{entry}:{data_args.dataset_config}" for entry in datasets]
    return DataSpec(
        datasets=datasets,
        train_files=_names(data_args.train_file),
        mixture=list(data_args.mixture or []),
        text_column=data_args.text_column,
        sample_by=data_args.sample_by,
        streaming=data_args.streaming,
        stopping_strategy=data_args.stopping_strategy,
        eval_fraction=data_args.eval_fraction,
        eval_max_tokens=data_args.eval_max_tokens,
        packing=data_args.packing,
        packing_bins=data_args.packing_bins,
        sft_format=data_args.sft_format,
        skip_bad_records=data_args.skip_bad_records,
        cache_dir=data_args.data_cache_dir
        or (os.path.join(training_args.output_dir, "data_cache") if training_args is not None else None),
        shared_cache=data_args.data_cache_dir is not None,
        wait_seconds=training_args.ddp_timeout if training_args is not None else WAIT_SECONDS,
        progress=training_args is not None and not training_args.disable_tqdm,
    )


def build_datasets(data_args, tokenizer, training_args, flash: bool = False):
    """(train_dataset, eval_dataset or None, collator) for `training_args.mode`."""
    stats, start = DataStats(), time.perf_counter()
    build = sft_datasets if training_args.mode == "sft" else pretraining_datasets
    # One micro-step reads world_size x per-device batch consecutive rows of the sampler's order (see
    # MoaiTrainer._get_train_sampler); the balance is logged for that step size.
    rows_per_step = training_args.world_size * training_args.per_device_train_batch_size
    train, evaluation = build(
        data_spec(data_args, training_args),
        tokenizer,
        data_args.max_seq_length,
        seed=training_args.seed,
        rows_per_step=rows_per_step,
        stats=stats,
    )
    stats.log()
    logger.info("data ready in %.1f s", time.perf_counter() - start)
    if data_args.packing:
        collator = PackedCollator(tokenizer.pad_token_id, return_flash_kwargs=flash)
    else:
        collator = PaddingCollator(tokenizer.pad_token_id)
    return train, evaluation, collator


def prepare_only(model_args, data_args, training_args) -> list[str]:
    """`train.py --prepare_only`: tokenize every source and plan the rows, as the training run will; no model."""
    from .run import load_tokenizer

    if training_args.stages:
        raise UsageError(
            "--prepare_only prepares one run's data: run it with each stage's data flags (and one "
            "--data_cache_dir) instead of a stages config"
        )
    if reads_a_stream(data_args):
        raise UsageError("--prepare_only: streamed data is read during training; there is nothing to prepare")
    spec = data_spec(data_args, training_args)
    sources, encoder, truncate = reading_plan(spec, load_tokenizer(model_args), sft=training_args.mode == "sft")
    start, stats = time.perf_counter(), DataStats()
    prepared = prepare(
        spec,
        encoder,
        data_args.max_seq_length,
        seed=training_args.seed,
        stats=stats,
        truncate=truncate,
        sources=sources,
    )
    stats.log()
    lines = []
    for store in prepared.stores:
        size = directory_size(store.path)
        lines.append(
            f"store {store.path}: {store.documents:,} documents, {store.num_tokens:,} tokens, "
            f"{size / 1e6:,.1f} MB ({size / max(store.num_tokens, 1):.2f} bytes/token)"
        )
    for split, summary in prepared.meta["splits"].items():
        lines.append(
            f"plan {prepared.plan}: {split} {summary['rows']:,} rows of {data_args.max_seq_length} "
            f"({summary['tokens']:,} tokens, packing efficiency {100 * summary['efficiency']:.2f}%)"
        )
    total = sum(directory_size(s.path) for s in prepared.stores) + directory_size(prepared.plan)
    lines.append(f"prepared in {time.perf_counter() - start:.1f} s; {total / 1e6:,.1f} MB on disk in {spec.cache_dir}")
    return lines
