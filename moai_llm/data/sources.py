"""Where documents come from: local files (.txt .jsonl .json .parquet .csv), the Hub, or the bundled sample."""

import glob
import json
import logging
from pathlib import Path

import datasets

from .errors import DataError, DataStats

logger = logging.getLogger(__name__)
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "assets" / "sample" / "pretrain.jsonl"
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv")


def expand_files(spec: str) -> list[Path]:
    """A file, a folder (its files with known suffixes, recursively) or a glob; an error if nothing matches."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
    if not files:
        raise DataError(f"{spec}: no such file, or no {'/'.join(LOCAL_SUFFIXES)} files there")
    return files


def read_jsonl(path: Path, text_column: str | None, skip_bad_records: bool, stats: DataStats):
    """Rows of a .jsonl file, checked line by line so errors name the line (datasets' json loader does not)."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: invalid UTF-8 at byte offset {offset + err.start} (line {number})") from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                if skip_bad_records:
                    stats["bad_records_skipped"] += 1
                    continue
                raise DataError(f"{path}:{number}: malformed JSON line ({err}); "
                                "fix it or pass --skip_bad_records") from None
            if text_column is not None and text_column not in row:
                raise DataError(f"{path}:{number}: no column {text_column!r}; columns: {sorted(row)}")
            yield row


def read_text_file(path: Path, text_column: str):
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: invalid UTF-8 at byte offset {err.start}") from None
    if text.strip():
        yield {text_column: text}


def _local_rows(files, text_column, skip_bad_records, stats):
    for path in files:
        if path.suffix == ".jsonl":
            yield from read_jsonl(path, text_column, skip_bad_records, stats)
        elif path.suffix == ".txt":
            yield from read_text_file(path, text_column or "text")
        elif path.suffix == ".json":
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as err:
                raise DataError(f"{path}: malformed JSON ({err})") from None
            for number, row in enumerate(rows if isinstance(rows, list) else [rows]):
                if text_column is not None and text_column not in row:
                    raise DataError(f"{path}[{number}]: no column {text_column!r}; columns: {sorted(row)}")
                yield row


def load_local(spec: str, text_column: str | None = "text", skip_bad_records: bool = False,
               stats: DataStats | None = None) -> datasets.Dataset:
    """One map-style dataset of all rows; .txt files are one document each. `text_column=None`: any columns."""
    stats = stats if stats is not None else DataStats()
    files = expand_files(spec)
    tabular = [p for p in files if p.suffix in (".parquet", ".csv")]
    if tabular:
        if len(tabular) != len(files):
            raise DataError(f"{spec}: mixes tabular (.parquet/.csv) and text files; give them as separate sources")
        kind = "parquet" if tabular[0].suffix == ".parquet" else "csv"
        dataset = datasets.load_dataset(kind, data_files=[str(p) for p in files], split="train")
    else:
        rows = list(_local_rows(files, text_column, skip_bad_records, stats))
        if not rows:
            raise DataError(f"{spec}: no records")
        dataset = datasets.Dataset.from_list(rows)
    if text_column is not None and text_column not in dataset.column_names:
        raise DataError(f"{spec}: no column {text_column!r}; columns: {dataset.column_names}")
    return dataset


def load_source(name: str, subset: str | None = None, split: str = "train", text_column: str | None = "text",
                streaming: bool = False, skip_bad_records: bool = False, stats: DataStats | None = None):
    """`name` is a local path/glob, "sample" (the bundled corpus) or a HuggingFace Hub dataset id."""
    if name == "sample":
        return load_local(str(SAMPLE_CORPUS), text_column, skip_bad_records, stats)
    if Path(name).exists() or glob.has_magic(name) or Path(name).suffix in LOCAL_SUFFIXES:
        dataset = load_local(name, text_column, skip_bad_records, stats)
        return dataset.to_iterable_dataset() if streaming else dataset
    try:
        dataset = datasets.load_dataset(name, subset, split=split, streaming=streaming)
    except Exception as err:  # offline, unknown id, bad config: one line instead of the datasets traceback
        raise DataError(f"--dataset {name}{':' + subset if subset else ''}: could not be loaded "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
    columns = dataset.column_names or []
    if text_column is not None and columns and text_column not in columns:
        raise DataError(f"--dataset {name}: no column {text_column!r}; columns: {columns}")
    return dataset
