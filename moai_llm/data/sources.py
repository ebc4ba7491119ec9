"""Where documents come from: local files (.txt .jsonl .json .parquet .csv), the Hub, or the bundled sample.

Records are read one at a time (`iter_records`), so preparing a corpus never holds it in memory; `load_source`
builds a `datasets.Dataset` of one (small) source for inspection and tests.
"""

import glob
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import datasets

from .errors import DataError, DataStats

logger = logging.getLogger(__name__)
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "assets" / "sample" / "pretrain.jsonl"
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv")
TABULAR_SUFFIXES = (".parquet", ".csv")
WARN_SKIPS_PER_FILE = 3


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


def is_local(name: str) -> bool:
    return name == "sample" or Path(name).exists() or glob.has_magic(name) or Path(name).suffix in LOCAL_SUFFIXES


def local_files(name: str) -> list[Path]:
    """The files of a local source, checked not to mix tabular and text formats."""
    files = [SAMPLE_CORPUS] if name == "sample" else expand_files(name)
    tabular = [p for p in files if p.suffix in TABULAR_SUFFIXES]
    if tabular and len(tabular) != len(files):
        raise DataError(f"{name}: mixes tabular (.parquet/.csv) and text files; give them as separate sources")
    return files


def fingerprint(name: str, subset: str | None, split: str) -> dict:
    """What identifies a source's content: each local file's path, size and mtime; a Hub id, config and split."""
    if not is_local(name):
        return {"hub": name, "subset": subset, "split": split}
    return {"files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in local_files(name)]}


def read_jsonl(path: Path, text_column: str | None, skip_bad_records: bool, stats: DataStats):
    """Rows of a .jsonl file, checked line by line so errors name the line (datasets' json loader does not)."""
    offset, skipped = 0, 0
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
                    skipped += 1
                    if skipped <= WARN_SKIPS_PER_FILE:
                        logger.warning("%s:%d: malformed JSON line skipped (%s)", path, number, err)
                    continue
                raise DataError(
                    f"{path}:{number}: malformed JSON line ({err}); fix it or pass --skip_bad_records"
                ) from None
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


def read_tabular(path: Path, text_column: str | None) -> Iterator[dict]:
    """Rows of a .parquet or .csv file, read in record batches (pyarrow) rather than all at once."""
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if path.suffix == ".parquet":
            parquet = pyarrow.parquet.ParquetFile(path)
            columns, batches = parquet.schema_arrow.names, parquet.iter_batches(batch_size=1024)
        else:
            reader = pyarrow.csv.open_csv(path)
            columns, batches = reader.schema.names, reader
        if text_column is not None and text_column not in columns:
            raise DataError(f"{path}: no column {text_column!r}; columns: {columns}")
        for batch in batches:
            yield from batch.to_pylist()
    except (OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: unreadable {path.suffix[1:]} ({str(err).splitlines()[0][:160]})") from None


def read_file(path: Path, text_column: str | None, skip_bad_records: bool, stats: DataStats) -> Iterator[dict]:
    if path.suffix == ".jsonl":
        yield from read_jsonl(path, text_column, skip_bad_records, stats)
    elif path.suffix == ".txt":
        yield from read_text_file(path, text_column or "text")
    elif path.suffix in TABULAR_SUFFIXES:
        yield from read_tabular(path, text_column)
    elif path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise DataError(f"{path}: malformed JSON ({err})") from None
        for number, row in enumerate(rows if isinstance(rows, list) else [rows]):
            if text_column is not None and text_column not in row:
                raise DataError(f"{path}[{number}]: no column {text_column!r}; columns: {sorted(row)}")
            yield row


def hub_dataset(name: str, subset: str | None, split: str, streaming: bool):
    try:
        return datasets.load_dataset(name, subset, split=split, streaming=streaming)
    except Exception as err:  # offline, unknown id, bad config: one line instead of the datasets traceback
        raise DataError(
            f"--dataset {name}{':' + subset if subset else ''}: could not be loaded "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160]})"
        ) from None


def iter_records(
    name: str,
    *,
    subset: str | None = None,
    split: str = "train",
    text_column: str | None = "text",
    skip_bad_records: bool = False,
    stats: DataStats | None = None,
) -> Iterator[dict]:
    """Every record of a source, one at a time, in a fixed order (files sorted, then line order)."""
    stats = stats if stats is not None else DataStats()
    if is_local(name):
        for path in local_files(name):
            yield from read_file(path, text_column, skip_bad_records, stats)
        return
    dataset = hub_dataset(name, subset, split, streaming=False)
    if text_column is not None and text_column not in dataset.column_names:
        raise DataError(f"--dataset {name}: no column {text_column!r}; columns: {dataset.column_names}")
    for batch in dataset.iter(batch_size=1024):
        keys = list(batch)
        yield from (dict(zip(keys, values)) for values in zip(*batch.values()))


def load_source(
    name: str,
    *,
    subset: str | None = None,
    split: str = "train",
    text_column: str | None = "text",
    streaming: bool = False,
    skip_bad_records: bool = False,
    stats: DataStats | None = None,
):
    """One source as a `datasets.Dataset` (or a Hub `IterableDataset` when streaming); for small data."""
    if not is_local(name):
        dataset = hub_dataset(name, subset, split, streaming)
        columns = dataset.column_names or []
        if text_column is not None and columns and text_column not in columns:
            raise DataError(f"--dataset {name}: no column {text_column!r}; columns: {columns}")
        return dataset
    rows = list(
        iter_records(
            name, subset=subset, split=split, text_column=text_column, skip_bad_records=skip_bad_records, stats=stats
        )
    )
    if not rows:
        raise DataError(f"{name}: no records")
    dataset = datasets.Dataset.from_list(rows)
    return dataset.to_iterable_dataset() if streaming else dataset
