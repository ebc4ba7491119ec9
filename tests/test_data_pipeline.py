"""Sources, mixing, SFT formats and bad input."""

import json
from collections import Counter

import pytest

from moai_llm.data import (
    DataError, DataSpec, DataStats, MixtureSource, build_mixture, detect_format, load_source, pretraining_datasets,
    sft_datasets, to_messages, tokenize_dialogue,
)
from moai_llm.tokenizer import load_tokenizer

from .conftest import REPO

SAMPLE = REPO / "moai_llm/assets/sample"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_every_sft_format_renders_the_same_chat(tokenizer):
    rendered = {}
    for fmt in ("alpaca", "prompt_completion", "question_answer", "messages", "sharegpt"):
        rows = [json.loads(line) for line in open(SAMPLE / f"sft_{fmt.split('_')[0] if fmt == 'alpaca' else fmt}.jsonl")]
        assert detect_format(rows[0].keys()) == fmt
        rendered[fmt] = [tokenizer.apply_chat_template(to_messages(r, fmt), tokenize=False) for r in rows[:6]]
    first = rendered["alpaca"]
    assert all(texts == first for texts in rendered.values())
    assert "Hamlet asks" in first[1] and "To be, or not to be" in first[1]  # alpaca keeps instruction and input
    assert first[1].startswith("<|im_start|>user\nSummarise the text in one sentence.\n\nTo be")


def test_labels_cover_exactly_the_assistant_spans(tokenizer):
    row = json.loads(open(SAMPLE / "sft_messages.jsonl").readlines()[6])  # system + two user/assistant turns
    messages = to_messages(row, "messages")
    encoded = tokenize_dialogue(messages, tokenizer, 512)
    trained = [t for t, l in zip(encoded["input_ids"], encoded["labels"]) if l != -100]
    text = tokenizer.decode(trained)
    assert text == "William Shakespeare.<|im_end|>\nAround 1606.<|im_end|>\n"
    assert all(l in (-100, t) for t, l in zip(encoded["input_ids"], encoded["labels"]))


def test_sft_datasets_and_ambiguous_or_unknown_formats(tmp_path, tokenizer):
    spec = DataSpec(train_files=[str(SAMPLE / "sft_sharegpt.jsonl")], eval_fraction=0, packing=False)
    train, _ = sft_datasets(spec, tokenizer, 256)
    assert len(train) == 8 and all(-100 in r["labels"] for r in train)
    with pytest.raises(DataError, match="fit several formats"):
        detect_format(["prompt", "completion", "question", "answer"])
    with pytest.raises(DataError, match="no known format"):
        detect_format(["foo"])


def test_mixing_ratios_hold_and_percentage_is_seeded_random(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}"} for i in range(2000)])
    b = _write_jsonl(tmp_path / "b.jsonl", [{"text": f"b{i}"} for i in range(2000)])
    mixed = build_mixture([MixtureSource(str(a), ratio=3), MixtureSource(str(b), ratio=1)], seed=0,
                          stopping_strategy="first_exhausted")
    counts = Counter(mixed["source"])
    share = counts[str(a)] / sum(counts.values())
    assert abs(share - 0.75) < 0.03  # ~4 sigma for this many rows
    sampled = build_mixture([MixtureSource(str(a), percentage=10)], seed=1)["text"]
    again = build_mixture([MixtureSource(str(a), percentage=10)], seed=1)["text"]
    other = build_mixture([MixtureSource(str(a), percentage=10)], seed=2)["text"]
    assert len(sampled) == 200 and sampled == again and sampled != other
    assert sampled != [f"a{i}" for i in range(200)]  # not the first rows


def test_domains_filter_and_empty_after_filter(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "domain": "law"}, {"text": "y", "domain": "news"}])
    assert build_mixture([MixtureSource(str(path), domains=["law"])])["text"] == ["x"]
    with pytest.raises(DataError, match="no rows left"):
        build_mixture([MixtureSource(str(path), domains=["finance"])])


def test_streaming_yields_same_documents_and_ranks_get_disjoint_shards(tmp_path):
    path = _write_jsonl(tmp_path / "s.jsonl", [{"text": f"doc {i}"} for i in range(40)])
    mapped = load_source(str(path))["text"]
    streamed = [r["text"] for r in load_source(str(path), streaming=True)]
    assert streamed == mapped
    from datasets.distributed import split_dataset_by_node

    shards = [[r["text"] for r in split_dataset_by_node(load_source(str(path), streaming=True), rank, 2)]
              for rank in range(2)]
    assert shards[0] and shards[1]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == sorted(mapped)


def test_eval_split_never_overlaps_train(tokenizer):
    train, evaluation = pretraining_datasets(DataSpec(eval_fraction=0.1, packing=False), tokenizer, 4096)
    train_docs = {tuple(r["input_ids"]) for r in train}
    assert evaluation is not None and not any(tuple(r["input_ids"]) in train_docs for r in evaluation)


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n{"text": "fine"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        load_source(str(path))
    stats = DataStats()
    assert load_source(str(path), skip_bad_records=True, stats=stats)["text"] == ["ok", "fine"]
    assert stats["bad_records_skipped"] == 1


def test_missing_column_lists_existing_ones(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", [{"body": "x", "title": "t"}])
    with pytest.raises(DataError, match=r"no column 'text'; columns: \['body', 'title'\]"):
        load_source(str(path))


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"u.jsonl: invalid UTF-8 at byte offset 25"):
        load_source(str(path))
    txt = tmp_path / "u.txt"
    txt.write_bytes(b"abc\xfe")
    with pytest.raises(DataError, match=r"invalid UTF-8 at byte offset 3"):
        load_source(str(txt))


def test_missing_file_and_empty_dataset(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_source(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        load_source(str(tmp_path / "empty.jsonl"))
