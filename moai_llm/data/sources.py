"""Where documents come from: local files (.txt .jsonl .json .parquet .csv), the Hub, or the bundled sample.

Records are read one at a time (`iter_records`), so preparing a corpus never holds it in memory.
"""

import glob
import json
import logging
from collections.abc import Iterator
from json.decoder import WHITESPACE
from pathlib import Path

import datasets

from ..loading import SAMPLE_CORPUS
from .stats import DataError, DataStats

logger = logging.getLogger(__name__)
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv")
TABULAR_SUFFIXES = (".parquet", ".csv")
WARN_SKIPS_PER_FILE = 3
SAMPLE_BY = ("document", "paragraph", "line")  # what a .txt document is (datasets' text loader: sample_by)
PREPARED_MARKERS = ("tokens.bin", "offsets.bin", "train_rows.npy")  # a store's (or its parts') or a plan's files
JSON_CHUNK = 1 << 20  # characters of a .json file read at a time
JSON_LARGEST_RECORD = 1 << 26  # characters: a longer element is taken to be malformed, not read to the file's end


def expand_files(spec: str) -> list[Path]:
    """A file, a folder (its files with known suffixes, recursively) or a glob; an error if nothing matches."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix in LOCAL_SUFFIXES and not _prepared_or_hidden(p.relative_to(path), path)
        )
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
    if not files:
        raise DataError(f"{spec}: no such file, or no {'/'.join(LOCAL_SUFFIXES)} files there")
    return files


def _prepared_or_hidden(relative: Path, root: Path) -> bool:
    """A file under a hidden folder, or inside a prepared store or plan (a data cache kept in the data folder,
    whose meta.json is not a document)."""
    if any(part.startswith(".") for part in relative.parts):
        return True
    folder = root / relative.parent
    return relative.parent != Path(".") and any((folder / name).exists() for name in PREPARED_MARKERS)


def is_local(name: str) -> bool:
    return name == "sample" or Path(name).exists() or glob.has_magic(name) or Path(name).suffix in LOCAL_SUFFIXES


def local_files(name: str) -> list[Path]:
    """The files of a local source, checked not to mix tabular and text formats."""
    files = [SAMPLE_CORPUS] if name == "sample" else expand_files(name)
    tabular = [p for p in files if p.suffix in TABULAR_SUFFIXES]
    if tabular and len(tabular) != len(files):
        raise DataError(f"{name}: mixes tabular (.parquet/.csv) and text files; give them as separate sources")
    return files


def fingerprint(name: str, subset: str | None, split: str, revision: str | None = None) -> dict:
    """What identifies a source's content: each local file's path, size and mtime; a Hub id, config, split and
    revision (the commit `resolve_revision` pinned)."""
    if not is_local(name):
        return {"hub": name, "subset": subset, "split": split, "revision": revision}
    return {"files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in local_files(name)]}


def _lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[tuple[str, str]]:
    """(where, line) of a file's lines from byte `start` to `end` (line starts), decoded strictly; `where` names
    the line by number, or by byte offset when reading starts inside the file (a part built by one of several
    processes)."""
    offset = start
    with open(path, "rb") as handle:
        handle.seek(start)
        for number, raw in enumerate(handle, 1):
            if end is not None and offset >= end:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                line_number = "" if start else f" (line {number})"
                raise DataError(f"{path}: invalid UTF-8 at byte offset {offset + err.start}{line_number}") from None
            yield (f"{path}:{number}" if not start else f"{path} (line at byte {offset})"), line
            offset += len(raw)


def read_jsonl(path: Path, text_column: str | None, skip_bad_records: bool, stats: DataStats, start=0, end=None):
    """Rows of a .jsonl file, checked line by line so errors name the line (datasets' json loader does not)."""
    skipped = 0
    for where, line in _lines(path, start, end):
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
                    logger.warning("%s: malformed JSON line skipped (%s)", where, err)
                continue
            raise DataError(f"{where}: malformed JSON line ({err}); fix it or pass --skip_bad_records") from None
        if text_column is not None and text_column not in row:
            raise DataError(f"{where}: no column {text_column!r}; columns: {sorted(row)}")
        yield row


def read_text_file(path: Path, text_column: str, sample_by: str = "document", start: int = 0, end: int | None = None):
    """A .txt file as one document (`sample_by` "document"), one per line ("line"), or one per block of lines
    between blank lines ("paragraph"), as datasets' text loader cuts them; empty ones are not documents."""
    if sample_by not in SAMPLE_BY:
        raise DataError(f"sample_by {sample_by!r}: expected one of {', '.join(SAMPLE_BY)}")
    if sample_by == "document":
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: invalid UTF-8 at byte offset {err.start}") from None
        if text.strip():
            yield {text_column: text}
        return
    block = []
    for _, line in _lines(path, start, end):
        line = line.rstrip("\r\n")
        if sample_by == "line":
            if line.strip():
                yield {text_column: line}
        elif line.strip():
            block.append(line)
        elif block:
            yield {text_column: "\n".join(block)}
            block = []
    if block:
        yield {text_column: "\n".join(block)}


def read_json(path: Path, text_column: str | None) -> Iterator[dict]:
    """Records of a .json file, one at a time: a JSON array of objects, or objects one after another (JSON Lines
    named .json, or a single object). The file is read in chunks, never whole."""
    decoder, buffer, position, number = json.JSONDecoder(), "", 0, 0
    with open(path, encoding="utf-8") as handle:

        def next_character() -> str:  # after whitespace, reading on as needed; "" at the end of the file
            nonlocal buffer, position
            while (position := WHITESPACE.match(buffer, position).end()) == len(buffer):
                buffer, position = handle.read(JSON_CHUNK), 0
                if not buffer:
                    return ""
            return buffer[position]

        try:
            array = next_character() == "["
            position += array
            while character := next_character():
                if array and character == "]":
                    position += 1
                    if next_character():
                        raise DataError(f"{path}: text after the closing ] of its JSON array")
                    return
                while True:
                    try:
                        row, position = decoder.raw_decode(buffer, position)
                        break
                    except ValueError as err:
                        more = handle.read(JSON_CHUNK)
                        if not more or len(buffer) - position > JSON_LARGEST_RECORD:
                            raise DataError(f"{path}[{number}]: malformed JSON ({err.msg})") from None
                        buffer, position = buffer[position:] + more, 0
                if not isinstance(row, dict):
                    raise DataError(f"{path}[{number}]: not a JSON object")
                if text_column is not None and text_column not in row:
                    raise DataError(f"{path}[{number}]: no column {text_column!r}; columns: {sorted(row)}")
                yield row
                number += 1
                if array and next_character() == ",":
                    position += 1
                elif array and next_character() not in ("", "]"):
                    raise DataError(f"{path}[{number}]: malformed JSON (expected , or ] between elements)")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: invalid UTF-8 ({err.reason})") from None


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


def splits_at_lines(path: Path, sample_by: str = "document") -> bool:
    """Whether a file's records are its lines, so that it can be read in byte ranges cut at line starts."""
    return path.suffix == ".jsonl" or (path.suffix == ".txt" and sample_by == "line")


def read_file(
    path: Path,
    text_column: str | None,
    skip_bad_records: bool,
    stats: DataStats,
    sample_by: str = "document",
    start: int = 0,
    end: int | None = None,
) -> Iterator[dict]:
    """The records of a file; of bytes `start` to `end` only (line starts) where `splits_at_lines`."""
    if (start or end is not None) and not splits_at_lines(path, sample_by):
        raise ValueError(f"{path} is not read in byte ranges")
    if path.suffix == ".jsonl":
        yield from read_jsonl(path, text_column, skip_bad_records, stats, start, end)
    elif path.suffix == ".txt":
        yield from read_text_file(path, text_column or "text", sample_by, start, end)
    elif path.suffix in TABULAR_SUFFIXES:
        yield from read_tabular(path, text_column)
    elif path.suffix == ".json":
        yield from read_json(path, text_column)
    else:
        raise DataError(f"{path}: unsupported file type (use {', '.join(LOCAL_SUFFIXES)})")


def resolve_revision(name: str, revision: str | None) -> str | None:
    """The commit a Hub dataset's `revision` (None: its main branch) points to now, so a store is keyed by content
    and a new revision prepares a new one. Offline, the revision as given (logged: a store may be reused)."""
    import huggingface_hub

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        try:
            return huggingface_hub.HfApi().dataset_info(name, revision=revision).sha
        except Exception as err:  # offline, unknown id: load_dataset reports the id; here only the key is weaker
            cause = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}" if str(err) else type(err).__name__
    else:
        cause = "HF_HUB_OFFLINE"
    logger.warning(
        "--dataset %s: its Hub revision could not be resolved (%s); keyed by %s, so a prepared store of an older "
        "revision may be reused",
        name,
        cause,
        revision or "the name alone",
    )
    return revision


def hub_dataset(name: str, subset: str | None, split: str, streaming: bool, revision: str | None = None):
    try:
        return datasets.load_dataset(name, subset, split=split, streaming=streaming, revision=revision)
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
    sample_by: str = "document",
    revision: str | None = None,
) -> Iterator[dict]:
    """Every record of a source, one at a time, in a fixed order (files sorted, then line order)."""
    stats = stats if stats is not None else DataStats()
    if is_local(name):
        for path in local_files(name):
            yield from read_file(path, text_column, skip_bad_records, stats, sample_by)
        return
    dataset = hub_dataset(name, subset, split, streaming=False, revision=revision)
    if text_column is not None and text_column not in dataset.column_names:
        raise DataError(f"--dataset {name}: no column {text_column!r}; columns: {dataset.column_names}")
    for batch in dataset.iter(batch_size=1024):
        keys = list(batch)
        yield from (dict(zip(keys, values)) for values in zip(*batch.values()))
