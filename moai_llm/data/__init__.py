"""Data pipeline: sources and mixing, prepared memory-mapped stores, SFT formats, balance packing, collators."""

from .collator import PackedCollator, PaddingCollator
from .encode import DialogueEncoder, TextEncoder
from .mixing import MixtureSource, select_documents
from .packing import HierarchicalBalancePacker, cut, pack
from .pipeline import DataSpec, prepare, row_datasets
from .rows import PackedRows, StepSampler
from .sft import detect_format, to_messages, tokenize_dialogue
from .stats import DataError, DataStats
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
    "StepSampler",
    "TextEncoder",
    "TokenStore",
    "cut",
    "detect_format",
    "pack",
    "prepare",
    "row_datasets",
    "select_documents",
    "to_messages",
    "tokenize_dialogue",
]
