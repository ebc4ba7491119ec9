"""Streaming text readers for tokenizer training: bounded memory, seeded sampling, per-language balance. Files are
read by the training data's reader (`data.sources`), so both accept the same formats with the same errors."""

import logging
import random
from collections.abc import Iterable, Iterator

from ..data.sources import SAMPLE_BY, is_local, iter_records, local_files
from ..errors import UsageError

logger = logging.getLogger(__name__)

LANGUAGES = {"ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "ru", "th", "vi", "zh"}


def sample(texts: Iterable[str], fraction: float = 1.0, max_samples: int | None = None, seed: int = 0):
    """A seeded Bernoulli sample of the stream (never just the first rows), capped at max_samples."""
    rng = random.Random(seed)
    taken = 0
    for text in texts:
        if max_samples is not None and taken >= max_samples:
            return
        if fraction >= 1.0 or rng.random() < fraction:
            taken += 1
            yield text


def file_texts(specs: Iterable[str], text_column: str = "text", sample_by: str = "line") -> Iterator[str]:
    """Documents of files, folders or globs, read as training reads them (`data.sources.iter_records`: .txt
    .jsonl .json .parquet .csv, the same errors); a .txt document is a line by default (bounded memory), a
    paragraph or the whole file with `sample_by`. Empty texts are skipped and counted; a file without text is an
    error."""
    if sample_by not in SAMPLE_BY:
        raise UsageError(f"--sample_by {sample_by!r}: expected one of {', '.join(SAMPLE_BY)}")
    files = []
    for spec in specs:  # every name checked before the first document is read
        if spec == "sample" or not is_local(spec):
            raise UsageError(f"{spec}: no such file")
        files += local_files(spec)
    for path in files:
        count, empty = 0, 0
        for number, record in enumerate(iter_records(str(path), text_column=text_column, sample_by=sample_by)):
            text = record[text_column]
            if text is None or text == "":
                empty += 1
                continue
            if not isinstance(text, str):
                raise UsageError(f"{path} record {number}: {text_column!r} is {type(text).__name__}, not text")
            count += 1
            yield text
        if empty:
            logger.info("%s: %d empty records skipped", path, empty)
        if count == 0:
            raise UsageError(f"{path}: file has no text")


def hub_texts(dataset: str, config: str | None, text_column: str) -> Iterator[str]:
    """A HuggingFace Hub dataset, streamed (needs network access)."""
    from datasets import load_dataset

    try:
        stream = load_dataset(dataset, config, split="train", streaming=True)
        for row in stream:
            if not isinstance(row, dict) or text_column not in row:
                columns = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise UsageError(f"{dataset}: no column {text_column!r}; columns: {columns} (set --text_column)")
            yield row[text_column]
    except UsageError:
        raise
    except Exception as err:  # no network, unknown dataset: one line, not the datasets traceback
        raise UsageError(
            f"--dataset {dataset}: could not be streamed from the Hub ({type(err).__name__}); "
            "use local files (--input_files / --lang_files)"
        ) from err


def language_streams(
    languages, lang_files: dict[str, list[str]], text_column: str, sample_by: str = "line"
) -> dict[str, Iterator[str]]:
    """One text stream per language: local files when given, else that language's Wikipedia on the Hub."""
    streams = {}
    for lang in languages:
        if lang not in LANGUAGES:
            raise UsageError(f"--multilingual: unknown language code {lang!r} (known: {' '.join(sorted(LANGUAGES))})")
        if lang in lang_files:
            streams[lang] = file_texts(lang_files[lang], text_column, sample_by)
        else:
            streams[lang] = hub_texts("wikimedia/wikipedia", f"20231101.{lang}", text_column)
    return streams


def balanced(streams: dict[str, Iterator[str]], per_lang: int | None, fraction: float, seed: int) -> Iterator[str]:
    """Round-robin over languages, at most `per_lang` samples of each, so no language dominates."""
    sampled = {lang: sample(it, fraction, per_lang, seed) for lang, it in streams.items()}
    counts = dict.fromkeys(sampled, 0)
    while sampled:
        for lang in list(sampled):
            try:
                yield next(sampled[lang])
                counts[lang] += 1
            except StopIteration:
                del sampled[lang]
    logger.info("samples per language: %s", counts)
