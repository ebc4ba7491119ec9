"""Streaming text readers for tokenizer training: bounded memory, seeded sampling, per-language balance."""

import glob
import json
import logging
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
LANGUAGES = {"ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "ru", "th", "vi", "zh"}


class InputError(ValueError):
    """A user mistake in the inputs: one line naming the file, flag or value."""


def expand_paths(specs: Iterable[str]) -> list[Path]:
    """Files from file names, folders (recursively, known suffixes) and globs; each must exist."""
    files = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{spec}: folder has no {'/'.join(SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(spec) and glob.glob(spec):
            files.extend(sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file()))
        else:
            raise InputError(f"{spec}: no such file")
    for file in files:
        if file.suffix not in SUFFIXES:
            raise InputError(f"{file}: unsupported file type (use {', '.join(SUFFIXES)})")
    return files


def read_texts(path: Path, text_column: str = "text") -> Iterator[str]:
    """Documents of one file: non-empty lines of .txt, the text column of .jsonl/.json/.parquet."""
    if path.suffix == ".txt":
        with open(path, encoding="utf-8", newline="") as f:
            for line in f:
                if line.strip():
                    yield line
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield _column(json.loads(line), text_column, f"{path}:{number}")
    elif path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        for number, row in enumerate(rows if isinstance(rows, list) else [rows]):
            yield _column(row, text_column, f"{path}[{number}]")
    else:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if text_column not in parquet.schema_arrow.names:
            raise InputError(f"{path}: no column {text_column!r} (columns: {parquet.schema_arrow.names})")
        for batch in parquet.iter_batches(columns=[text_column], batch_size=1024):
            yield from (t for t in batch.column(0).to_pylist() if t)


def _column(row, text_column: str, where: str) -> str:
    if not isinstance(row, dict) or text_column not in row:
        columns = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise InputError(f"{where}: no field {text_column!r} (found {columns}); set --text_column")
    return row[text_column]


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


def file_texts(specs, text_column="text") -> Iterator[str]:
    for path in expand_paths(specs):
        count = 0
        for text in read_texts(path, text_column):
            count += 1
            yield text
        if count == 0:
            raise InputError(f"{path}: file has no text")


def hub_texts(dataset: str, config: str | None, text_column: str) -> Iterator[str]:
    """A HuggingFace Hub dataset, streamed (needs network access)."""
    from datasets import load_dataset

    try:
        stream = load_dataset(dataset, config, split="train", streaming=True)
        for row in stream:
            yield _column(row, text_column, f"{dataset}")
    except InputError:
        raise
    except Exception as err:  # no network, unknown dataset: one line, not the datasets traceback
        raise InputError(
            f"--dataset {dataset}: could not be streamed from the Hub ({type(err).__name__}); "
            "use local files (--input_files / --lang_files)"
        ) from err


def language_streams(languages, lang_files: dict[str, list[str]], text_column: str) -> dict[str, Iterator[str]]:
    """One text stream per language: local files when given, else that language's Wikipedia on the Hub."""
    streams = {}
    for lang in languages:
        if lang not in LANGUAGES:
            raise InputError(f"--multilingual: unknown language code {lang!r} (known: {' '.join(sorted(LANGUAGES))})")
        if lang in lang_files:
            streams[lang] = file_texts(lang_files[lang], text_column)
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
