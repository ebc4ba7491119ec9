"""Prepared data on disk: flat token arrays that every rank memory-maps, written once and atomically.

One store directory holds one source tokenized by one tokenizer:

    tokens.bin    token ids of every document back to back: uint16 when the vocabulary fits, else uint32
    offsets.bin   int64 [documents + 1]: document i is tokens[offsets[i] : offsets[i + 1]]
    labels.bin    uint8 per token, 1 where the token is trained (SFT: assistant turns); absent for pretraining
    meta.json     what was prepared and from what (the key), counts, skipped records; written last

Flat arrays rather than Arrow tables: a packed row is one memmap slice per piece, ids take 2 bytes, and the files
are appended batch by batch (ARCHITECTURE.md, Data).

Atomicity: written in a hidden temporary directory beside the final path, fsynced, renamed into place after
meta.json; a final directory without meta.json (or a temporary one) is never used.

Parts: a source prepared by several processes is written as part-stores (hidden siblings `.<store>.part-I-of-N`,
each a whole store of a contiguous run of records); the store then holds only offsets.bin of every document and a
meta.json naming its parts, through which `TokenStore` reads the same array a single process writes.
"""

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from ..loading import write_atomically
from .stats import DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META = "meta.json"
WAIT_POLL_SECONDS = 1.0
WAIT_SECONDS = 600.0  # a waiting process gives up when nothing changed at the store's path for this long


def key_of(fields: dict) -> str:
    """A short stable hash of everything a store depends on (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def directory_size(path: Path) -> int:
    """Bytes of a store or plan on disk, with the parts of a store prepared in parts."""
    path = Path(path)
    folders = [path, *path.parent.glob(f".{glob.escape(path.name)}.part-*")]
    return sum(p.stat().st_size for folder in folders for p in folder.iterdir() if p.is_file())


def read_meta(directory: Path, what: str) -> dict:
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(
            f"{what}: data store {directory} is unreadable ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120]}); delete it to prepare the data again"
        ) from None
    if meta.get("version") != FORMAT_VERSION:
        raise DataError(
            f"{what}: data store {directory} has format version {meta.get('version')}, expected "
            f"{FORMAT_VERSION}; delete it to prepare the data again"
        )
    return meta


def temporary_directory(final: Path) -> Path:
    """A new hidden directory beside `final`, named after this host and process (see `discard_abandoned`)."""
    tmp = final.parent / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def discard_abandoned(final: Path) -> None:
    """Temporary directories of `final` left by killed builders of this host (their process is gone)."""
    prefix = f".{final.name}.tmp-{socket.gethostname()}-"
    for tmp in final.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix) :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            logger.warning("removing %s, left by a killed preparation", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(tmp: Path, final: Path, meta: dict) -> None:
    """fsync every file, write meta.json last, rename into place. If another process won the race, keep theirs."""
    for path in tmp.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    write_atomically(tmp / META, json.dumps({**meta, "version": FORMAT_VERSION}, indent=1, sort_keys=True))
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / META).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        logger.info("%s was prepared by another process meanwhile; using it", final)
        return
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def is_complete(path: Path) -> bool:
    return (path / META).is_file()


class BuildFailed(DataError):
    """A builder's failure, seen by a waiting process: `marker` is its one line (path, node, process, cause), handed
    on unchanged when the waiting process itself was building something that needed that store."""

    def __init__(self, what: str, marker: str):
        super().__init__(f"{what}: preparing {marker}; fix that and start again")
        self.marker = marker


def _marker(path: Path, kind: str) -> Path:
    """Files beside a store while it is prepared: `.<name>.building` (touched while the builder works) and
    `.<name>.failed` (the builder's one-line error)."""
    return path.parent / f".{path.name}.{kind}"


@contextlib.contextmanager
def claimed(paths: list[Path], wait_seconds: float = WAIT_SECONDS):
    """This process will prepare `paths`, one after another: a thread touches their building markers from now on,
    so a process waiting for the last one (on any node) waits, bounded, while this one works on the first; if this
    process fails, each unfinished one gets the failure marker with its one line, so no process waits for what will
    not come."""
    building, stop = [_marker(path, "building") for path in paths], threading.Event()
    for path, marker in zip(paths, building):
        with contextlib.suppress(OSError):  # a failure of an earlier run is not this one's
            _marker(path, "failed").unlink()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{socket.gethostname()} pid {os.getpid()}\n")

    def beat():
        while not stop.wait(max(wait_seconds / 8, 0.05)):
            for marker in building:
                with contextlib.suppress(OSError):
                    os.utime(marker)

    heartbeat = threading.Thread(target=beat, daemon=True, name="data-heartbeat")
    heartbeat.start()
    try:
        yield
    except BaseException as error:
        unfinished = [path for path in paths if not is_complete(path)]
        if isinstance(error, BuildFailed):  # a store this one needed failed elsewhere: its line, not a nested one
            line = error.marker
        elif unfinished:
            cause = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            line = f"{unfinished[0]} failed on {socket.gethostname()} (pid {os.getpid()}): {cause}"
        for path in unfinished:
            with contextlib.suppress(OSError):
                write_atomically(_marker(path, "failed"), line + "\n")
        raise
    finally:
        stop.set()
        heartbeat.join()
        for marker in building:
            with contextlib.suppress(OSError):
                marker.unlink()


def prepare_once(path: Path, build, builder: bool, what: str, wait_seconds: float = WAIT_SECONDS) -> None:
    """Run `build(path)` in the one process that prepares (`builder`); every other process waits for the store.

    Waiting polls the file system for meta.json instead of a collective barrier, so preparation may take longer
    than the process group's timeout. The wait is bounded: the builder touches a building marker while it works
    and writes a failure marker (its node and error) if it fails; a waiting process stops with one line when the
    builder failed, or when nothing changed at the path for `wait_seconds` (no builder visible: a --data_cache_dir
    that is not shared by every node, or stores keyed differently; or a builder killed without a word).
    """
    if builder:
        discard_abandoned(path)
        if path.exists() and not is_complete(path):  # a copy or crash left it half-written: never used
            logger.warning("ignoring half-written data store %s (no %s); preparing it again", path, META)
            shutil.rmtree(path)
        if not is_complete(path):
            with claimed([path], wait_seconds):
                build(path)
        return
    started = last_change = time.monotonic()
    failed, building, seen, logged = _marker(path, "failed"), _marker(path, "building"), None, False
    while not is_complete(path):
        now = time.monotonic()
        with contextlib.suppress(OSError):
            if failed.stat().st_mtime > time.time() - wait_seconds - (now - started):  # not a marker of an old run
                raise BuildFailed(what, failed.read_text().strip())
        try:
            state = building.stat().st_mtime_ns
        except OSError:
            state = None
        if state != seen:
            seen, last_change = state, now
        if now - last_change > wait_seconds:
            who = ""
            with contextlib.suppress(OSError):
                who = f" ({building.read_text().strip()})"
            why = (
                f"its builder{who} stopped updating {building.name}"
                if seen is not None
                else "no process is preparing it there: is --data_cache_dir shared by every node? (leave it "
                "unset for a cache per node)"
            )
            raise DataError(f"{what} on {socket.gethostname()}: waited {now - started:.0f} s for {path}; {why}")
        if not logged:
            logger.info("waiting for %s to be prepared by the main process: %s", what, path)
            logged = True
        time.sleep(WAIT_POLL_SECONDS)
    if logged:
        logger.info("%s ready after %.0f s", what, time.monotonic() - started)


class StoreWriter:
    """Appends tokenized documents to a new store in a temporary directory; `finish` publishes it. As a context
    manager, an error removes the temporary directory."""

    def __init__(self, final: Path, dtype: np.dtype, with_labels: bool):
        self.final, self.dtype = Path(final), np.dtype(dtype)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_directory(self.final)
        self._tokens = open(self.tmp / "tokens.bin", "wb")
        self._offsets = open(self.tmp / "offsets.bin", "wb")
        self._labels = open(self.tmp / "labels.bin", "wb") if with_labels else None
        self._offsets.write(np.zeros(1, dtype=np.int64).tobytes())
        self.documents = 0
        self.tokens = 0
        self.limit = np.iinfo(self.dtype).max

    def add(self, flat: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None = None) -> None:
        """One batch: `flat` ids of the documents back to back, their `lengths`, and the trained-token mask."""
        if len(flat) and int(flat.max()) > self.limit:
            raise DataError(f"token id {int(flat.max())} does not fit the store's {self.dtype} (vocab too large)")
        self._tokens.write(flat.astype(self.dtype, copy=False).tobytes())
        if self._labels is not None:
            self._labels.write(mask.astype(np.uint8, copy=False).tobytes())
        ends = self.tokens + np.cumsum(lengths, dtype=np.int64)
        self._offsets.write(ends.tobytes())
        self.documents += len(lengths)
        self.tokens = int(ends[-1]) if len(ends) else self.tokens

    def finish(self, meta: dict) -> None:
        for handle in (self._tokens, self._offsets, self._labels):
            if handle is not None:
                handle.close()
        meta = {
            **meta,
            "documents": self.documents,
            "tokens": self.tokens,
            "dtype": self.dtype.name,
            "labels": self._labels is not None,
        }
        publish(self.tmp, self.final, meta)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is not None:
            for handle in (self._tokens, self._offsets, self._labels):
                if handle is not None and not handle.closed:
                    handle.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


class PartedArray:
    """Token ids (or labels) of a store prepared in parts, read as one array: a slice inside one part (every
    document, so every piece of a row, lies in one part) is that part's memory map, without a copy."""

    def __init__(self, arrays: list):
        self.arrays = arrays
        self.ends = np.cumsum([len(a) for a in arrays], dtype=np.int64)
        self.dtype = arrays[0].dtype

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, index: slice):
        lo, hi, _ = index.indices(len(self))  # contiguous slices: what rows and tests read
        first = int(np.searchsorted(self.ends, lo, side="right"))
        pieces = []
        for part in range(first, len(self.arrays)):
            begin = int(self.ends[part]) - len(self.arrays[part])
            if begin >= hi:
                break
            pieces.append(self.arrays[part][max(lo - begin, 0) : hi - begin])
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[0 : len(self)], dtype=dtype)


def _memmap(path: Path, dtype, count: int, what: str):
    expected, problem = count * np.dtype(dtype).itemsize, None
    try:
        size = path.stat().st_size
        problem = f"has {size} bytes, expected {expected}" if size != expected else None
    except OSError as err:
        problem = f"is unreadable ({err.strerror})"
    if problem:
        raise DataError(f"{what}: data store file {path} {problem}; delete {path.parent} to prepare the data again")
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class TokenStore:
    """A prepared source, memory-mapped: `tokens`, `offsets`, optional `labels` mask, and `meta`."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        self.meta = read_meta(self.path, what)
        self.documents, self.num_tokens = int(self.meta["documents"]), int(self.meta["tokens"])
        self.offsets = _memmap(self.path / "offsets.bin", np.int64, self.documents + 1, what)
        if "parts" in self.meta:  # prepared in parts: tokens and labels are read through them
            parts = [TokenStore(self.path.parent / name, what) for name in self.meta["parts"]]
            self.tokens = PartedArray([part.tokens for part in parts])
            self.labels = PartedArray([part.labels for part in parts]) if self.meta["labels"] else None
            return
        self.tokens = _memmap(self.path / "tokens.bin", self.meta["dtype"], self.num_tokens, what)
        self.labels = (
            _memmap(self.path / "labels.bin", np.uint8, self.num_tokens, what) if self.meta["labels"] else None
        )

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getstate__(self):  # DataLoader workers reopen the maps instead of pickling their pages
        return {"path": self.path, "what": self.what}

    def __setstate__(self, state):
        self.__init__(state["path"], state["what"])
