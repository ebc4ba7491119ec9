"""Data pipeline: sources and mixing, prepared memory-mapped stores, SFT formats, balance packing, collators."""

from .collator import PackedCollator, PaddingCollator
from .encode import DialogueEncoder, TextEncoder
from .errors import DataError, DataStats
from .mixing import MixtureSource, select_documents
from .packing import HierarchicalBalancePacker, attention_balance_ratio, packing_efficiency, split_long_documents
from .pipeline import DataSpec, prepare, pretraining_datasets, sft_datasets
from .rows import PackedRows, StepSampler
from .sft import detect_format, to_messages, tokenize_dialogue
from .sources import SAMPLE_CORPUS, load_source
from .store import TokenStore

__all__ = [
    "DataError",
    "DataSpec",
    "DataStats",
    "DialogueEncoder",
    "HierarchicalBalancePacker",
    "MixtureSource",
    "PackedCollator",
    "PackedRows",
    "PaddingCollator",
    "SAMPLE_CORPUS",
    "StepSampler",
    "TextEncoder",
    "TokenStore",
    "attention_balance_ratio",
    "detect_format",
    "load_source",
    "packing_efficiency",
    "prepare",
    "pretraining_datasets",
    "select_documents",
    "sft_datasets",
    "split_long_documents",
    "to_messages",
    "tokenize_dialogue",
]
