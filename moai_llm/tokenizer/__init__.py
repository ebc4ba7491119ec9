"""Tokenizer training, extension and evaluation on HuggingFace `tokenizers` (byte-level BPE by default)."""

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ..errors import UsageError
from .specials import CHAT_TEMPLATE, SPECIAL_TOKENS

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "tokenizer"


def default_tokenizer_path() -> str:
    """The small byte-level BPE tokenizer shipped with the package (trained on the bundled sample corpus)."""
    return str(ASSET_DIR)


def load_tokenizer(path: str | None = None) -> PreTrainedTokenizerFast:
    """AutoTokenizer from `path` (default: the bundled one); a clear error when the directory has none."""
    path = path or default_tokenizer_path()
    if (
        Path(path).is_dir()
        and not (Path(path) / "tokenizer.json").exists()
        and not (Path(path) / "tokenizer_config.json").exists()
    ):
        raise UsageError(f"tokenizer: {path} has no tokenizer.json")
    return AutoTokenizer.from_pretrained(path)


__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "default_tokenizer_path", "load_tokenizer"]
