"""Data pipeline: sources and mixing, tokenisation, SFT formats, hierarchical balance packing, collators."""

from .collator import PackedCollator, PaddingCollator
from .errors import DataError, DataStats
from .mixing import MixtureSource, build_mixture
from .packing import HierarchicalBalancePacker, attention_balance_ratio, packing_efficiency, split_long_documents
from .pipeline import DataSpec, pretraining_datasets, sft_datasets
from .sft import detect_format, to_messages, tokenize_dialogue
from .sources import SAMPLE_CORPUS, load_source

__all__ = [
    "DataError", "DataSpec", "DataStats", "HierarchicalBalancePacker", "MixtureSource", "PackedCollator",
    "PaddingCollator", "SAMPLE_CORPUS", "attention_balance_ratio", "build_mixture", "detect_format", "load_source",
    "packing_efficiency", "pretraining_datasets", "sft_datasets", "split_long_documents", "to_messages",
    "tokenize_dialogue",
]
