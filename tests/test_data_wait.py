"""Processes waiting for another to prepare a store: a bounded wait, and the builder's failure reported by name."""

import socket
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
