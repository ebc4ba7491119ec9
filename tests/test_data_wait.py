"""Processes waiting for another to prepare a store: a bounded wait, and the builder's failure reported by name."""

import socket
import subprocess
import sys
import threading
import time

import pytest

from moai_llm.data import DataError, store
from moai_llm.data.store import is_complete, prepare_once, publish, temporary_directory


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(store, "WAIT_POLL_SECONDS", 0.02)


def build_after(seconds):
    def build(path):
        time.sleep(seconds)
        tmp = temporary_directory(path)
        (tmp / "x.bin").write_bytes(b"x")
        publish(tmp, path, {})

    return build


def test_a_builder_that_fails_stops_every_waiting_process_with_its_error(tmp_path):
    path = tmp_path / "store-abc"

    def broken(_path):
        raise DataError("corpus.jsonl:7: malformed JSON line")

    with pytest.raises(DataError, match="malformed"):
        prepare_once(path, broken, True, "data for corpus.jsonl", wait_seconds=30)
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        prepare_once(path, broken, False, "data for corpus.jsonl", wait_seconds=30)
    assert time.monotonic() - started < 5
    assert f"preparing {path} failed on {socket.gethostname()} (pid " in str(caught.value)
    assert "corpus.jsonl:7: malformed JSON line" in str(caught.value)
    prepare_once(path, build_after(0), True, "data", wait_seconds=30)  # the next builder clears the marker
    prepare_once(path, broken, False, "data", wait_seconds=30)
    assert is_complete(path)


def test_waiting_for_a_store_nobody_prepares_is_bounded(tmp_path):
    started = time.monotonic()
    with pytest.raises(DataError, match=r"no process is preparing it there: is --data_cache_dir shared by every node"):
        prepare_once(tmp_path / "store-abc", build_after(0), False, "data for a.jsonl", wait_seconds=0.3)
    assert time.monotonic() - started < 5


def test_a_long_preparation_is_waited_for_while_its_builder_is_alive(tmp_path):
    path = tmp_path / "store-abc"
    builder = threading.Thread(target=prepare_once, args=(path, build_after(1.5), True, "data", 0.4))
    builder.start()
    time.sleep(0.1)
    prepare_once(path, build_after(0), False, "data", wait_seconds=0.4)  # waits 1.5 s > 0.4 s: the builder beats
    builder.join()
    assert is_complete(path) and not list(tmp_path.glob(".*building"))


def test_a_builder_killed_without_a_word_is_noticed(tmp_path):
    path = tmp_path / "store-abc"
    (tmp_path / ".store-abc.building").write_text("node7 pid 12\n")  # left by a builder that was SIGKILLed
    with pytest.raises(DataError, match=r"its builder \(node7 pid 12\) stopped updating .store-abc.building"):
        prepare_once(path, build_after(0), False, "data", wait_seconds=0.3)


def test_a_killed_builders_temporary_directory_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "store-abc"
    left = tmp_path / f".store-abc.tmp-{socket.gethostname()}-{dead.stdout.strip()}-0a1b2c3d"
    left.mkdir()
    (left / "tokens.bin").write_bytes(b"half")
    ours = temporary_directory(path)  # a live builder's (this process): kept
    prepare_once(path, build_after(0), True, "data", wait_seconds=30)
    assert not left.exists() and ours.exists() and is_complete(path)


def test_a_data_cache_inside_the_data_folder_is_not_read_as_data(tmp_path):
    from moai_llm.data.sources import expand_files

    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    store = tmp_path / "data_cache" / "a-1234"
    store.mkdir(parents=True)
    (store / "meta.json").write_text("{}")
    (store / "tokens.bin").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "b.jsonl").write_text('{"text": "y"}\n')
    assert expand_files(str(tmp_path)) == [tmp_path / "a.jsonl"]
