"""Prepared stores and mixing: what an epoch reads, eval held out per source, lazy rows, invalidation, bad input."""

import json
import logging
from collections import Counter

import numpy as np
import pytest

from moai_llm.data import DataError, DataSpec, DataStats, TextEncoder, row_datasets
from moai_llm.data.pipeline import prepare
from moai_llm.data.sft import to_messages, tokenize_dialogue
from moai_llm.loading import load_tokenizer

from .data_helpers import first_pass, rows_from_documents

WORDS = "the quick brown fox jumps over a lazy dog while rain falls on quiet hills and rivers".split()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def write_docs(path, tag: str, count: int, words: int = 12, seed: int = 0) -> list[str]:
    """`count` documents "<tag><i> ..." of varied length (a unique first word identifies each)."""
    rng = np.random.default_rng(seed)
    texts = [f"{tag}{i} " + " ".join(rng.choice(WORDS, int(rng.integers(1, 2 * words)))) for i in range(count)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return texts


def texts_of(rows, tokenizer) -> list[str]:
    """Every document piece of every row, decoded (EOS dropped)."""
    out = []
    for row in (rows[i] for i in range(len(rows))):
        ids, start = list(row["input_ids"]), 0
        for length in row["seq_lengths"]:
            out.append(tokenizer.decode(ids[start : start + length - 1]))
            start += length
    return out


def spec(tmp_path, **kwargs) -> DataSpec:
    return DataSpec(cache_dir=str(tmp_path / "cache"), **{"eval_fraction": 0, "packing_bins": 4, **kwargs})


def test_without_ratios_every_document_once_whatever_the_spelling(tmp_path, tokenizer):
    folder = tmp_path / "corpus"
    folder.mkdir()
    expected = write_docs(folder / "a.jsonl", "a", 10) + write_docs(folder / "b.jsonl", "b", 300, seed=1)
    spellings = {
        "folder": dict(train_files=[str(folder)]),
        "files": dict(train_files=[str(folder / "a.jsonl"), str(folder / "b.jsonl")]),
        "glob": dict(train_files=[str(folder / "*.jsonl")]),
        "dataset": dict(datasets=[str(folder)]),
        "mixture": dict(mixture=[{"name": str(folder / "a.jsonl")}, {"name": str(folder / "b.jsonl")}]),
    }
    for name, kwargs in spellings.items():
        train, evaluation = row_datasets(spec(tmp_path, **kwargs), tokenizer, 256)
        assert evaluation is None
        assert Counter(texts_of(train, tokenizer)) == Counter(expected), name  # each document exactly once


def test_ratios_sample_to_shares_and_log_each_source_repetition(tmp_path, tokenizer, caplog):
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    write_docs(small, "s", 10)
    write_docs(large, "l", 400, seed=1)
    mixture = [{"name": str(small), "ratio": 1}, {"name": str(large), "ratio": 3}]
    with caplog.at_level(logging.INFO):
        train, _ = row_datasets(spec(tmp_path, mixture=mixture), tokenizer, 256)
    lengths = np.concatenate([train[i]["seq_lengths"] for i in range(len(train))])
    texts = texts_of(train, tokenizer)
    small_tokens = sum(n for n, t in zip(lengths, texts) if t.startswith("s"))
    assert abs(small_tokens / lengths.sum() - 0.25) < 0.02  # shares of tokens, as asked
    repeats = Counter(t for t in texts if t.startswith("s"))
    assert len(repeats) == 10 and min(repeats.values()) >= 9  # the small source is repeated ~10x, all of it
    line = next(r.getMessage() for r in caplog.records if "data mixture per epoch" in r.getMessage())
    factor = float(line.split(f"{small}: ")[1].split("x")[0])
    assert 9 < factor < 12 and f"{large}: 0." in line  # "small.jsonl: 10.4x (ratios)", the large one subsampled


def test_eval_held_out_per_source_before_repetition(tmp_path, tokenizer):
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    write_docs(small, "s", 20)
    write_docs(large, "l", 400, seed=1)
    mixture = [{"name": str(small), "ratio": 1}, {"name": str(large), "ratio": 1}]
    train, evaluation = row_datasets(spec(tmp_path, mixture=mixture, eval_fraction=0.1), tokenizer, 256)
    train_docs, eval_docs = set(texts_of(train, tokenizer)), texts_of(evaluation, tokenizer)
    assert not train_docs & set(eval_docs)
    assert Counter(t[0] for t in eval_docs) == {"s": 2, "l": 40}  # 10% of each source, never mixed first


def test_lazy_rows_equal_the_eager_rows(tmp_path, tokenizer):
    path = tmp_path / "docs.jsonl"
    texts = write_docs(path, "d", 120, words=60)
    train, _ = row_datasets(spec(tmp_path, train_files=[str(path)]), tokenizer, 64)
    docs = [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    eager = rows_from_documents(docs, max_seq_length=64, packing=True, rows_per_step=1, seed=0, stats=DataStats())

    def as_tuples(rows):
        return sorted(
            (tuple(int(t) for t in r["input_ids"]), tuple(r["seq_lengths"]))
            for r in map(rows.__getitem__, range(len(rows)))
        )

    assert len(train) == len(eager) and as_tuples(train) == as_tuples(eager)

    sft_file = tmp_path / "sft.jsonl"
    records = [
        {"prompt": f"question {i} " + " ".join(WORDS[: i % 9 + 1]), "completion": f"answer {i}"} for i in range(30)
    ]
    sft_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    train, _ = row_datasets(spec(tmp_path, train_files=[str(sft_file)]), tokenizer, 96, sft=True)
    encoded = [tokenize_dialogue(to_messages(r, "prompt_completion"), tokenizer, 96) for r in records]
    eager = rows_from_documents(
        [e["input_ids"] for e in encoded],
        max_seq_length=96,
        packing=True,
        rows_per_step=1,
        seed=0,
        stats=DataStats(),
        labels=[e["labels"] for e in encoded],
    )

    def with_labels(rows):
        return sorted(
            (tuple(map(int, r["input_ids"])), tuple(map(int, r["labels"])))
            for r in map(rows.__getitem__, range(len(rows)))
        )

    assert with_labels(train) == with_labels(eager)


def _store_dirs(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith("plan-"))


def test_a_changed_tokenizer_or_source_makes_a_new_store(tmp_path, tokenizer, caplog):
    path = tmp_path / "docs.jsonl"
    write_docs(path, "d", 50)
    data = spec(tmp_path, train_files=[str(path)])
    first, _ = row_datasets(data, tokenizer, 128)
    with caplog.at_level(logging.INFO, logger="moai_llm.data.encode"):
        again, _ = row_datasets(data, tokenizer, 128)
    assert not [r for r in caplog.records if "prepared" in r.getMessage()]  # reused, not tokenized again
    assert len(_store_dirs(tmp_path)) == 1
    other = load_tokenizer()
    other.add_tokens(["brownfox"])  # one more token: a different tokenizer
    row_datasets(data, other, 128)
    assert len(_store_dirs(tmp_path)) == 2
    write_docs(path, "d", 51)  # the source changed
    changed, _ = row_datasets(data, tokenizer, 128)
    assert len(_store_dirs(tmp_path)) == 3 and "d50" in " ".join(texts_of(changed, tokenizer))


def test_a_half_written_store_is_ignored_and_an_unreadable_one_is_an_error(tmp_path, tokenizer, caplog):
    path = tmp_path / "docs.jsonl"
    texts = write_docs(path, "d", 40)
    data = spec(tmp_path, train_files=[str(path)])
    encoder = TextEncoder(tokenizer)
    store = prepare(data, encoder, 128).stores[0].path
    for leftover in (tmp_path / "cache").iterdir():
        if leftover.is_dir():
            for file in leftover.iterdir():
                file.unlink()
            leftover.rmdir()
    store.mkdir()
    (store / "tokens.bin").write_bytes(b"\x01\x00" * 7)  # what a crash mid-write would leave: no meta.json
    (tmp_path / "cache" / f".{store.name}.tmp-1-dead").mkdir()
    with caplog.at_level(logging.WARNING):
        train, _ = row_datasets(data, tokenizer, 128)
    assert "half-written" in caplog.text and Counter(texts_of(train, tokenizer)) == Counter(texts)

    tokens = store / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-10])  # a complete store whose data was cut short later
    with pytest.raises(DataError) as error:
        row_datasets(data, tokenizer, 128)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "tokens.bin" in message and "delete" in message


def test_bad_inputs_are_one_line_errors_naming_the_source(tmp_path, tokenizer):
    good, empty, broken = tmp_path / "good.jsonl", tmp_path / "empty.jsonl", tmp_path / "broken.jsonl"
    write_docs(good, "g", 5)
    empty.write_text("\n")
    broken.write_text('{"text": "fine"}\n' * 3000 + '{"text": oops}\n')  # found while tokenizing, read ahead
    cases = [
        (dict(train_files=[str(broken)]), f"{broken}:3001: malformed JSON line"),
        (dict(train_files=[str(good), str(empty)]), f"{empty}: no documents"),
        (dict(mixture=[{"name": str(good), "ratio": 0}]), f"{good}: ratio must be > 0"),
        (dict(mixture=[{"name": str(good), "ratio": -1.0}]), f"{good}: ratio must be > 0"),
        (dict(mixture=[{"name": str(good), "ratio": 1}, {"name": str(empty)}]), f"no ratio: {empty}"),
        (dict(train_files=[str(good), str(tmp_path / "*.jsonl")]), f"{good} is in two sources"),
        (dict(train_files=[str(tmp_path / "missing.jsonl")]), "missing.jsonl: no such file"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(DataError) as error:
            row_datasets(spec(tmp_path, **kwargs), tokenizer, 64)
        assert expected in str(error.value) and "\n" not in str(error.value), (kwargs, str(error.value))


def _sft_file(path, tag, count):
    rows = [
        {"instruction": f"{tag}{i} " + " ".join(WORDS[: i % 7 + 1]), "output": f"reply {tag}{i}"} for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_sft_honours_ratio_percentage_and_packing_bins(tmp_path, tokenizer):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _sft_file(a, "a", 40)
    _sft_file(b, "b", 200)

    def user_turns(rows):
        return [t.split("user\n")[1].split(" ")[0] for t in texts_of(rows, tokenizer) for _ in [0]]

    train, _ = row_datasets(
        spec(tmp_path, mixture=[{"name": str(a), "percentage": 25}, {"name": str(b)}]), tokenizer, 128, sft=True
    )
    seen = Counter(x[0] for x in user_turns(train))
    assert seen == {"a": 10, "b": 200}  # 25% of a (a seeded sample), all of b
    mixed, _ = row_datasets(
        spec(tmp_path, mixture=[{"name": str(a), "ratio": 1}, {"name": str(b), "ratio": 1}]), tokenizer, 128, sft=True
    )
    tokens = Counter()
    for i in range(len(mixed)):
        row = mixed[i]
        for text, n in zip(texts_of([row], tokenizer), row["seq_lengths"]):
            tokens[text.split("user\n")[1][0]] += n
    assert abs(tokens["a"] / sum(tokens.values()) - 0.5) < 0.03  # half the tokens from the 40-dialogue source

    orders = {}
    for bins in (1, 4):
        rows, _ = row_datasets(spec(tmp_path, train_files=[str(b)], packing_bins=bins), tokenizer, 64, sft=True)
        orders[bins] = rows.train_sampler(2, seed=0).order()
        assert sorted(orders[bins]) == list(range(len(rows)))
    steps = len(orders[4]) // 2
    groups = np.array_split(np.arange(steps), 4)
    first = [int(orders[4][2 * k]) // 2 for k in range(4)]  # the first 4 steps come one from each cost group
    assert [next(g for g, members in enumerate(groups) if s in members) for s in first] == [0, 1, 2, 3]
    assert not np.array_equal(orders[1], orders[4])


def test_repeating_a_source_flag_adds_sources(tmp_path):
    from moai_llm.training.cli import parse_args

    base = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    for argv in (["--train_file", "a.jsonl", "b.jsonl"], ["--train_file", "a.jsonl", "--train_file", "b.jsonl"]):
        assert parse_args(base + argv)[1].train_file == ["a.jsonl", "b.jsonl"]
    for argv in (["--dataset", "x", "y"], ["--dataset", "x", "--dataset", "y"]):
        assert parse_args(base + argv)[1].dataset == ["x", "y"]
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  train_file: [from_yaml.jsonl]\n")
    assert parse_args(base + ["--config", str(config)])[1].train_file == ["from_yaml.jsonl"]
    assert parse_args(base + ["--config", str(config), "--train_file", "a", "--train_file", "b"])[1].train_file == [
        "a",
        "b",
    ]  # the command line replaces the YAML list, then each use adds


def test_sft_streams_with_ratios_and_assistant_labels(tmp_path, tokenizer):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _sft_file(a, "a", 40)
    _sft_file(b, "b", 40)
    mixture = [{"name": str(a), "ratio": 3, "streaming": True}, {"name": str(b), "ratio": 1, "streaming": True}]
    train, evaluation = row_datasets(
        spec(tmp_path, mixture=mixture, eval_fraction=4, stopping_strategy="first_exhausted"), tokenizer, 128, sft=True
    )
    rows = first_pass(train, tokenizer)[0]  # the stream then starts again
    assert_trains_the_replies_only(rows, tokenizer)
    firsts = Counter(text.split("user\n")[1][0] for text in texts_of(rows, tokenizer))
    assert firsts["a"] > 2 * firsts["b"]  # drawn 3:1 until the first source ends
    assert len(evaluation) >= 1
    assert_trains_the_replies_only([evaluation[i] for i in range(len(evaluation))], tokenizer)


def assert_trains_the_replies_only(rows, tokenizer) -> None:
    """In every dialogue of every row the labelled tokens are its own assistant reply and end of turn, unshifted."""
    for row in rows:
        ids, labels = np.asarray(row["input_ids"]), np.asarray(row["labels"])
        starts = np.cumsum([0, *row["seq_lengths"]])
        for a, b in zip(starts[:-1], starts[1:]):
            trained = labels[a:b] != -100
            assert (labels[a:b][trained] == ids[a:b][trained]).all()
            tag = tokenizer.decode(ids[a:b]).split("user\n")[1].split()[0]  # "a12": its reply is "reply a12"
            assert tokenizer.decode(ids[a:b][trained]) == f"reply {tag}<|im_end|>\n"


def test_dataset_flag_with_its_config_reaches_the_hub_loader(tmp_path, tokenizer, monkeypatch):
    import datasets

    from moai_llm.training.cli import parse_args
    from moai_llm.training.data_setup import data_spec

    calls = []

    def load_dataset(name, config=None, split="train", streaming=False, **kwargs):  # the Hub, offline
        calls.append((name, config, split, streaming))
        return datasets.Dataset.from_dict({"text": [f"hub document {i}" for i in range(5)]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    _, data_args, training_args = parse_args(
        [
            "--dataset",
            "wikitext",
            "--dataset_config",
            "wikitext-2-raw-v1",
            "--eval_fraction",
            "0",
            "--use_cpu",
            "true",
            "--output_dir",
            str(tmp_path),
        ]
    )
    train, _ = row_datasets(data_spec(data_args, training_args), tokenizer, 64)
    assert calls == [("wikitext", "wikitext-2-raw-v1", "train", False)]
    assert sorted(texts_of(train, tokenizer)) == [f"hub document {i}" for i in range(5)]
