"""Preparation shared by several builders: a source cut into parts at record starts (byte ranges of one large
.jsonl file, or whole files), part-stores joined into one store equal to a single process's, failures handed on."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from moai_llm.data import DataError, DialogueEncoder, TextEncoder, store
from moai_llm.data.encode import part_records
from moai_llm.data.mixing import MixtureSource
from moai_llm.data.parts import Builders, line_parts, part_path, prepare_stores, share
from moai_llm.data.sources import iter_records
from moai_llm.loading import load_tokenizer

WORDS = "alpha beta gamma delta 한국어 문장 épée naïve ε λ".split()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(store, "WAIT_POLL_SECONDS", 0.02)


def write_jsonl(path, count: int, seed: int = 0, newline: str = "\n") -> list[str]:
    """Records of very different lengths (some far longer than a part), multi-byte text, and blank lines."""
    rng = np.random.default_rng(seed)
    texts = [f"doc{i} " + " ".join(rng.choice(WORDS, int(rng.choice([1, 5, 40, 400])))) for i in range(count)]
    lines = [json.dumps({"text": t}, ensure_ascii=bool(i % 2)) + newline for i, t in enumerate(texts)]
    lines.insert(count // 3, newline)  # a blank line: no record
    path.write_bytes("".join(lines).encode())
    return texts


def records_of_parts(source, parts):
    encoder = type("E", (), {"text_column": staticmethod(lambda source: "text")})
    return [[r["text"] for r in part_records(source, encoder, part, False, {})] for part in parts]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_one_large_jsonl_file_is_cut_in_byte_ranges_at_record_starts(tmp_path, newline):
    path = tmp_path / "large.jsonl"
    texts = write_jsonl(path, 300, newline=newline)
    data = path.read_bytes()
    source = MixtureSource(name=str(path))
    for count in (2, 3, 7):
        parts, sizes = line_parts(source, count, min_bytes=1000)
        assert sizes == [len(data)] and len(parts) == count
        starts = [part[0][1] for part in parts]
        assert starts[0] == 0 and all(data[s - 1 : s] == b"\n" for s in starts[1:])  # every cut at a line start
        assert [part[0][2] for part in parts] == [*starts[1:], len(data)]  # contiguous, to the end
        sizes_of_parts = np.diff([*starts, len(data)])
        assert sizes_of_parts.max() < 2.5 * len(data) / count  # similar sizes (records are up to ~5 kB)
        got = records_of_parts(source, parts)
        assert all(got) and [t for part in got for t in part] == texts  # no record cut, lost or repeated
    assert line_parts(source, 3, min_bytes=len(data))[0] is None  # too small to share: one part


def test_a_folder_is_cut_between_files_it_cannot_split_and_inside_those_it_can(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", 100, seed=1)
    (folder / "b.json").write_text(json.dumps([{"text": f"json {i} " + "x " * 200} for i in range(40)]))
    (folder / "c.txt").write_text("\n".join(f"line {i} " + "y " * (i % 50) for i in range(300)))
    (folder / "d.jsonl").write_text("")  # an empty file is read like any other
    write_jsonl(folder / "e.jsonl", 100, seed=2)
    whole = [r["text"] for r in iter_records(str(folder), sample_by="line")]
    for sample_by in ("line", "document"):
        source = MixtureSource(name=str(folder), sample_by=sample_by)
        expected = [r["text"] for r in iter_records(str(folder), sample_by=sample_by)]
        for count in (2, 4, 9):
            parts, _ = line_parts(source, count, min_bytes=100)
            for part in parts:  # a .json file, or a .txt file that is one document, is never cut
                for index, start, end in part:
                    assert (start, end) == (0, None) or index in ((0, 2, 4) if sample_by == "line" else (0, 4))
            assert [t for part in records_of_parts(source, parts) for t in part] == expected
    assert len(whole) > 500


def joined_by(builders: int, sources, encoder, cache, **kwargs):
    """The stores of `sources` prepared by `builders` builders (threads here; processes in a run)."""
    work = share(sources, encoder, cache, False, builders)
    errors, stores = [], {}

    def run(index):
        try:
            stores[index] = prepare_stores(
                sources, encoder, work, Builders(index, builders, index == 0), wait_seconds=20, **kwargs
            )
        except DataError as error:
            errors.append((index, str(error)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(builders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return stores, sorted(errors), work


@pytest.mark.parametrize("sft", [False, True])
def test_parts_of_three_builders_join_into_the_store_one_builder_writes(tmp_path, tokenizer, monkeypatch, sft):
    monkeypatch.setattr("moai_llm.data.parts.PART_MIN_BYTES", 500)
    big, folder = tmp_path / "big.jsonl", tmp_path / "folder"
    folder.mkdir()
    if sft:
        rows = [{"prompt": f"question {i} " + "w " * (i % 30), "completion": f"answer {i}"} for i in range(200)]
        big.write_text("".join(json.dumps(r) + "\n" for r in rows))
        encoder, sources = DialogueEncoder(tokenizer, "prompt_completion"), [MixtureSource(name=str(big))]
    else:
        write_jsonl(big, 200)
        write_jsonl(folder / "x.jsonl", 30, seed=3)
        (folder / "y.txt").write_text("one document " * 50)
        encoder = TextEncoder(tokenizer)
        sources = [MixtureSource(name=str(big)), MixtureSource(name=str(folder)), MixtureSource(name="sample")]
    one, errors, _ = joined_by(1, sources, encoder, tmp_path / "one")
    three, errors, work = joined_by(3, sources, encoder, tmp_path / "three")
    assert not errors and work[0]["parts"] is not None and len(work[0]["parts"]) == 3
    for index in range(3):  # every builder memory-maps the same stores
        for reference, joined in zip(one[0], three[index]):
            assert "parts" in joined.meta or joined.documents == reference.documents
            assert joined.path.name == reference.path.name  # the same key whoever builds
            np.testing.assert_array_equal(np.asarray(joined.tokens), np.asarray(reference.tokens))
            np.testing.assert_array_equal(joined.offsets, reference.offsets)
            np.testing.assert_array_equal(joined.lengths, reference.lengths)
            if sft:
                np.testing.assert_array_equal(np.asarray(joined.labels), np.asarray(reference.labels))
            assert joined.meta["tokens"] == reference.meta["tokens"] and joined.meta["stats"] == reference.meta["stats"]
    assert len(three[0][0].meta["parts"]) == 3
    a, b = int(three[0][0].offsets[5]), int(three[0][0].offsets[6])  # a document's slice, read through its part
    np.testing.assert_array_equal(three[0][0].tokens[a:b], one[0][0].tokens[a:b])


def test_the_builder_of_a_later_part_reads_records_in_the_format_of_the_first(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr("moai_llm.data.parts.PART_MIN_BYTES", 100)
    path = tmp_path / "sft.jsonl"
    first = [json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"}).ljust(64) for i in range(20)]
    later = [json.dumps({"question": f"ask {i}", "answer": f"reply {i}"}).ljust(64) for i in range(20)]
    assert len({len(line) for line in first + later}) == 1  # equal lines: the part boundary falls between the two
    path.write_text("".join(line + "\n" for line in first + later))
    sources, encoder = [MixtureSource(name=str(path))], DialogueEncoder(tokenizer)
    assert [p[0][1] for p in line_parts(sources[0], 2, 100)[0]] == [0, 20 * (len(first[0]) + 1)]
    _, errors, _ = joined_by(1, sources, DialogueEncoder(tokenizer), tmp_path / "one")
    assert "record 20: not a prompt_completion record" in errors[0][1]
    _, errors, _ = joined_by(2, sources, encoder, tmp_path / "two")
    assert [i for i, _ in errors] == [0, 1]  # as one process: the later records are not read as another format
    assert all("not a prompt_completion record" in e for _, e in errors)


def test_a_failing_builder_stops_the_others_with_its_line(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr("moai_llm.data.parts.PART_MIN_BYTES", 500)
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, 200)
    data = path.read_bytes()
    sources, encoder = [MixtureSource(name=str(path))], TextEncoder(tokenizer)
    parts, _ = line_parts(sources[0], 3, min_bytes=500)
    cut = parts[1][0][1] + 10  # inside the second part: a malformed line there
    bad = data.index(b"\n", cut) + 1
    path.write_bytes(data[:bad] + b"{not json\n" + data[bad:])
    _, errors, work = joined_by(3, sources, encoder, tmp_path / "cache")
    assert len(work[0]["parts"]) == 3 and [index for index, _ in errors] == [0, 1, 2]
    own = f"{path} (line at byte {bad}): malformed JSON line"
    assert errors[1][1].startswith(own)  # the builder of part 1 stops with its own error
    part = part_path(tmp_path / "cache" / work[0]["path"].split("/")[-1], 1, 3)
    for index in (0, 2):  # the others with one line naming the part, the node and the cause
        assert errors[index][1].startswith(f"data for {path}: preparing {part} failed on ")
        assert own in errors[index][1] and "\n" not in errors[index][1]


WORKER = r"""
import json, logging, os, sys, time
from pathlib import Path

from accelerate import PartialState

from moai_llm.data import DataError, DataSpec, parts, store
from moai_llm.data.pipeline import prepare, reading_plan
from moai_llm.loading import load_tokenizer


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


parts.PART_MIN_BYTES, store.WAIT_POLL_SECONDS = 500, 0.05
PartialState(cpu=True, backend="gloo")
out, runs = Path(sys.argv[1]), json.loads(sys.argv[2])
rank, tokenizer, collect = int(os.environ["RANK"]), load_tokenizer(), Collect()
logging.getLogger("moai_llm.data").addHandler(collect)
logging.getLogger("moai_llm.data").setLevel(logging.INFO)
line_parts = parts.line_parts


def broken(*args):
    raise DataError("a file rank 0 cannot read")


for name, files in runs.items():
    shared = name != "local"  # "local": a cache per node, shared by the node's ranks (LOCAL_WORLD_SIZE)
    cache = str(out / name)
    spec = DataSpec(train_files=files, cache_dir=cache, shared_cache=shared, wait_seconds=60, eval_fraction=0.1)
    sources, encoder, truncate = reading_plan(spec, tokenizer)
    start, collect.messages = time.monotonic(), []
    parts.line_parts = broken if name == "rank0" and rank == 0 else line_parts
    try:
        prepared = prepare(spec, encoder, 64, seed=3, truncate=truncate, sources=sources)
        result = {"plan": str(prepared.plan), "stores": [str(s.path) for s in prepared.stores]}
    except DataError as error:  # written, not raised: torchrun would stop the other ranks itself
        result = {"error": str(error)}
    result["seconds"] = time.monotonic() - start
    result["prepared"] = [m for m in collect.messages if m.startswith("prepared ")]
    (out / f"{name}-rank{rank}.json").write_text(json.dumps(result))
"""


def plan_arrays(plan) -> dict:
    return {p.name: np.load(p) for p in sorted(plan.glob("*.npy"))}


@pytest.mark.integration  # three ranks in subprocesses
def test_three_ranks_prepare_in_parts_what_one_process_prepares_and_a_failure_stops_them_all(tmp_path, tokenizer):
    from moai_llm.data import DataSpec
    from moai_llm.data.pipeline import prepare, reading_plan

    from .distributed_helpers import torchrun

    big, folder, bad = tmp_path / "big.jsonl", tmp_path / "folder", tmp_path / "bad.jsonl"
    folder.mkdir()
    write_jsonl(big, 150)
    write_jsonl(folder / "x.jsonl", 40, seed=3)
    (folder / "y.json").write_text(json.dumps([{"text": f"json {i} " + "z " * 90} for i in range(10)]))
    write_jsonl(bad, 150, seed=4)
    data = bad.read_bytes()
    at = data.index(b"\n", len(data) // 2) + 1  # the middle third: rank 1's part
    bad.write_bytes(data[:at] + b"{not json\n" + data[at:])
    runs = {
        "good": [str(big), str(folder)],
        "local": [str(big), str(folder)],
        "failing": [str(bad)],
        "rank0": [str(big)],
    }
    out = tmp_path / "out"
    out.mkdir()
    result = torchrun(WORKER, [out, json.dumps(runs)], tmp_path, timeout=240, nproc=3)
    assert result.returncode == 0, result.stdout[-4000:]
    ranks = [json.loads((out / f"good-rank{r}.json").read_text()) for r in range(3)]
    local = [json.loads((out / f"local-rank{r}.json").read_text()) for r in range(3)]
    for run in (ranks, local):  # a shared cache: every rank; a cache per node: the node's local ranks
        assert all("error" not in r for r in run), run
        assert all(r["prepared"] for r in run)  # every rank tokenized a share
        assert run[0]["plan"] == run[1]["plan"] == run[2]["plan"]

    spec = DataSpec(train_files=runs["good"], cache_dir=str(tmp_path / "one"), eval_fraction=0.1)
    sources, encoder, truncate = reading_plan(spec, tokenizer)
    one = prepare(spec, encoder, 64, seed=3, truncate=truncate, sources=sources)  # one process
    parted = [store.TokenStore(path, "parted") for path in ranks[0]["stores"]]
    assert [len(s.meta.get("parts", [])) for s in parted] == [3, 3]  # a large file and a folder, in 3 parts each
    for reference, joined in zip(one.stores, parted):
        assert joined.path.name == reference.path.name
        np.testing.assert_array_equal(np.asarray(joined.tokens), np.asarray(reference.tokens))
        np.testing.assert_array_equal(joined.offsets, reference.offsets)
    expected = plan_arrays(one.plan)
    for run in (ranks, local):  # the same plan key, the same rows, split and order
        assert Path(run[0]["plan"]).name == one.plan.name
        got = plan_arrays(Path(run[0]["plan"]))
        assert expected.keys() == got.keys() and "eval_rows.npy" in got
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)

    failing = [json.loads((out / f"failing-rank{r}.json").read_text()) for r in range(3)]
    own = f"{bad} (line at byte {at}): malformed JSON line"
    assert failing[1]["error"].startswith(own)
    for r in (0, 2):  # stopped with one line naming the part, the node and the cause, well before the 60 s wait
        assert failing[r]["error"].startswith(f"data for {bad}: preparing ")
        assert ".part-00001-of-00003 failed on " in failing[r]["error"]
        assert own in failing[r]["error"] and failing[r]["seconds"] < 30

    stopped = [json.loads((out / f"rank0-rank{r}.json").read_text()) for r in range(3)]
    for r in range(3):  # an error while rank 0 decides what to prepare: every rank stops with its line, none waits
        assert stopped[r]["error"].startswith("a file rank 0 cannot read (on rank 0, ") and stopped[r]["seconds"] < 30


def test_a_cache_prepared_in_parts_inside_the_data_folder_is_not_read_as_data(tmp_path, tokenizer, monkeypatch):
    from moai_llm.data.sources import expand_files

    monkeypatch.setattr("moai_llm.data.parts.PART_MIN_BYTES", 500)
    write_jsonl(tmp_path / "a.jsonl", 100)
    sources = [MixtureSource(name=str(tmp_path / "a.jsonl"))]
    stores, errors, _ = joined_by(2, sources, TextEncoder(tokenizer), tmp_path / "data_cache")
    assert not errors and len(stores[0][0].meta["parts"]) == 2  # the store: offsets.bin and meta.json only
    assert expand_files(str(tmp_path)) == [tmp_path / "a.jsonl"]


def test_a_source_whose_parts_are_all_empty_is_refused_by_every_builder(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr("moai_llm.data.parts.PART_MIN_BYTES", 100)
    path = tmp_path / "web.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}", "domain": "web"}) + "\n" for i in range(100)))
    sources = [MixtureSource(name=str(path), domains=["news"])]
    _, errors, work = joined_by(2, sources, TextEncoder(tokenizer), tmp_path / "cache")
    assert len(work[0]["parts"]) == 2 and [i for i, _ in errors] == [0, 1]
    assert all(f"{path}: no documents left after the domain filter" in e for _, e in errors)
    assert not (tmp_path / "cache" / work[0]["path"].split("/")[-1]).exists()  # nothing published to reuse
