"""Datasets and collator for a run: the data arguments mapped onto moai_llm.data; `--prepare_only`."""

import dataclasses
import json
import logging
import os
import time

from ..data import DataSpec, DataStats, PackedCollator, PaddingCollator, prepare, row_datasets
from ..data.mixing import parse_mixture
from ..data.pipeline import DataOptions, reading_plan
from ..data.store import WAIT_SECONDS, directory_size
from ..errors import UsageError
from ..loading import load_tokenizer

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


def _with_config(entry: str, config: str) -> str:
    """`name[@revision]` -> `name:config[@revision]`; an entry naming its own config keeps it."""
    base, at, revision = entry.partition("@")
    return (base if ":" in base else f"{base}:{config}") + at + revision


def _names(value) -> list[str]:
    """A YAML `train_file: a.jsonl` is one name (list() would split it into characters)."""
    return [value] if isinstance(value, str) else list(value or [])


DATA_POSITION = "data_position.json"  # in each checkpoint: what the data position of its step means


def global_batch(training_args) -> int:
    """Rows one optimizer step reads across all ranks: per-device batch x ranks x gradient accumulation. The
    sampler's order is cut in blocks of this size, so it is the same for any split of one global batch into ranks
    and accumulation steps, and a checkpoint resumes on another number of ranks at the same rows."""
    args = training_args
    return args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps


def write_data_position(checkpoint: str, training_args, streaming: bool) -> None:
    """DATA_POSITION in a checkpoint: the global batch, how it was split, and whether the data was streamed."""
    with open(os.path.join(checkpoint, DATA_POSITION), "w", encoding="utf-8") as handle:
        json.dump({**_split(training_args), "streaming": streaming}, handle)


def _split(args) -> dict:
    return {
        "global_batch": global_batch(args),
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "world_size": args.world_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
    }


def check_data_position(checkpoint: str | None, training_args, streaming: bool) -> None:
    """Resuming on another number of ranks (elastic resume): allowed for prepared data when the global batch is the
    same (the sampler then reads the rows the checkpointed run would have read next); a changed global batch, or
    streamed data on another number of ranks (each rank reads its own shard), is one line giving both."""
    path = os.path.join(checkpoint, DATA_POSITION) if checkpoint else None
    if path is None or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        then = json.load(handle)
    now = _split(training_args)

    def describe(split):
        return (
            f"{split['global_batch']} rows ({split['per_device_train_batch_size']} per device x "
            f"{split['world_size']} ranks x {split['gradient_accumulation_steps']} accumulation)"
        )

    if then["global_batch"] != now["global_batch"]:
        raise UsageError(
            f"--resume_from_checkpoint {checkpoint}: it was trained with a global batch of {describe(then)}, this "
            f"run has {describe(now)}; keep the global batch to resume at its data position"
        )
    if then["world_size"] != now["world_size"]:
        if streaming or then.get("streaming"):
            raise UsageError(
                f"--resume_from_checkpoint {checkpoint}: streamed data was read by {then['world_size']} ranks, each "
                f"its own shard; resume it on {then['world_size']} ranks (this run has {now['world_size']})"
            )
        logger.info("elastic resume: %s, now %s: the same rows per step", describe(then), describe(now))


def data_spec(data_args, training_args=None) -> DataSpec:
    """The one place a run's DataSpec is built: the data options as given (`DataOptions`, shared by both), the
    sources as the readers name them; with `training_args`, the cache defaults to <output_dir>/data_cache."""
    datasets = _names(data_args.dataset)
    if data_args.dataset_config:
        datasets = [_with_config(entry, data_args.dataset_config) for entry in datasets]
    return DataSpec(
        **{option.name: getattr(data_args, option.name) for option in dataclasses.fields(DataOptions)},
        datasets=datasets,
        train_files=_names(data_args.train_file),
        mixture=list(data_args.mixture or []),
        cache_dir=data_args.data_cache_dir
        or (os.path.join(training_args.output_dir, "data_cache") if training_args is not None else None),
        shared_cache=data_args.data_cache_dir is not None,
        wait_seconds=training_args.ddp_timeout if training_args is not None else WAIT_SECONDS,
        progress=training_args is not None and not training_args.disable_tqdm,
    )


def build_datasets(data_args, tokenizer, training_args, flash: bool = False):
    """(train_dataset, eval_dataset or None, collator) for `training_args.mode`."""
    stats, start = DataStats(), time.perf_counter()
    train, evaluation = row_datasets(
        data_spec(data_args, training_args),
        tokenizer,
        data_args.max_seq_length,
        sft=training_args.mode == "sft",
        seed=training_args.seed,
        rows_per_step=global_batch(training_args),  # the sampler's step (MoaiTrainer._get_train_sampler)
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
    if training_args.stages:
        raise UsageError(
            "--prepare_only prepares one run's data: run it with each stage's data flags (and one "
            "--data_cache_dir) instead of a stages config"
        )
    if reads_a_stream(data_args):
        raise UsageError("--prepare_only: streamed data is read during training; there is nothing to prepare")
    spec = data_spec(data_args, training_args)
    tokenizer = load_tokenizer(model_args.tokenizer_path, model_args.pretrained_model, training=True)
    sources, encoder, truncate = reading_plan(spec, tokenizer, sft=training_args.mode == "sft")
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
