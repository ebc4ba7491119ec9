"""Train a byte-level BPE (or, in --ultrafast mode, a byte-level Unigram) tokenizer with fixed special tokens, and
wrap it for transformers with MOAI's special tokens (ids 0..6 of moai_llm.loading) and ChatML chat template."""

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..errors import UsageError
from ..loading import SPECIAL_TOKENS

logger = logging.getLogger(__name__)
BYTE_ALPHABET = pre_tokenizers.ByteLevel.alphabet()
MIN_VOCAB = len(SPECIAL_TOKENS) + len(BYTE_ALPHABET)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class SpeedMode:
    """What each speed mode trades: the share of documents read, pair pruning and the model type."""

    sample_fraction: float
    min_frequency: int
    max_token_length: int | None
    model: str  # "bpe" or "unigram"


MODES = {
    "default": SpeedMode(1.0, 2, None, "bpe"),
    "fast": SpeedMode(0.5, 2, 16, "bpe"),
    "turbo": SpeedMode(0.25, 3, 12, "bpe"),
    "ultrafast": SpeedMode(0.1, 2, 12, "unigram"),
}


def new_tokenizer(model: str, normalization: str | None) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE() if model == "bpe" else models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    if normalization == "nfkc":
        tokenizer.normalizer = normalizers.NFKC()
    elif normalization not in (None, "none"):
        raise UsageError(f"--normalization {normalization!r} is not one of none, nfkc")
    return tokenizer


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    mode: str = "default",
    min_frequency: int | None = None,
    normalization: str | None = None,
    show_progress: bool = True,
) -> Tokenizer:
    """Byte-level: every UTF-8 string round-trips and no token is unknown. Specials get ids 0..6."""
    if vocab_size < MIN_VOCAB:
        raise UsageError(
            f"--vocab_size {vocab_size} is smaller than {MIN_VOCAB} "
            f"({len(SPECIAL_TOKENS)} special tokens + {len(BYTE_ALPHABET)} byte symbols)"
        )
    spec = MODES[mode]
    tokenizer = new_tokenizer(spec.model, normalization)
    if spec.model == "bpe":
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency or spec.min_frequency,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=BYTE_ALPHABET,
            max_token_length=spec.max_token_length,
            show_progress=show_progress,
        )
    else:
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            unk_token="<unk>",
            initial_alphabet=BYTE_ALPHABET,
            max_piece_length=spec.max_token_length or 16,
            show_progress=show_progress,
        )
    counted = _Counter(texts)
    start = time.perf_counter()
    tokenizer.train_from_iterator(counted, trainer=trainer)
    if counted.documents == 0:
        raise UsageError("no training text: the inputs are empty after sampling")
    seconds = time.perf_counter() - start
    logger.info(
        "trained %s tokenizer (%s mode): %d tokens from %d documents, %.1f MB in %.1fs (%.2f MB/s)",
        spec.model,
        mode,
        tokenizer.get_vocab_size(),
        counted.documents,
        counted.bytes / 1e6,
        seconds,
        counted.bytes / 1e6 / max(seconds, 1e-9),
    )
    return tokenizer


def wrap(tokenizer_object) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer with MOAI's special tokens and chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


class _Counter:
    """Passes texts through while counting documents and bytes (for throughput logs)."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.documents, self.bytes = texts, 0, 0

    def __iter__(self):
        for text in self.texts:
            self.documents += 1
            self.bytes += len(text.encode("utf-8"))
            yield text
