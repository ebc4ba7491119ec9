"""Datasets and collator for a run: the data arguments mapped onto moai_llm.data."""

import logging

from ..data import DataSpec, DataStats, PackedCollator, PaddingCollator, pretraining_datasets, sft_datasets

logger = logging.getLogger(__name__)


def data_spec(data_args) -> DataSpec:
    datasets = list(data_args.dataset or [])
    if data_args.dataset_config:
        datasets = [entry if ":" in entry else f"{entry}:{data_args.dataset_config}" for entry in datasets]
    return DataSpec(
        datasets=datasets,
        train_files=list(data_args.train_file or []),
        mixture=list(data_args.mixture or []),
        text_column=data_args.text_column,
        streaming=data_args.streaming,
        stopping_strategy=data_args.stopping_strategy,
        eval_fraction=data_args.eval_fraction,
        packing=data_args.packing,
        packing_bins=data_args.packing_bins,
        sft_format=data_args.sft_format,
        skip_bad_records=data_args.skip_bad_records,
    )


def build_datasets(data_args, tokenizer, training_args, flash: bool = False):
    """(train_dataset, eval_dataset or None, collator) for `training_args.mode`."""
    stats = DataStats()
    build = sft_datasets if training_args.mode == "sft" else pretraining_datasets
    train, evaluation = build(data_spec(data_args), tokenizer, data_args.max_seq_length, seed=training_args.seed,
                              world_size=training_args.world_size, stats=stats)
    stats.log()
    if data_args.packing:
        collator = PackedCollator(tokenizer.pad_token_id, return_flash_kwargs=flash)
    else:
        collator = PaddingCollator(tokenizer.pad_token_id)
    return train, evaluation, collator
