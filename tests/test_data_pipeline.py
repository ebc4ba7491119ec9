"""Sources, mixing, SFT formats and bad input."""

import itertools
import json

import numpy as np
import pytest

from moai_llm.data import (
    DataError,
    DataSpec,
    DataStats,
    MixtureSource,
    detect_format,
    row_datasets,
    select_documents,
    to_messages,
    tokenize_dialogue,
)
from moai_llm.data.sources import iter_records
from moai_llm.loading import load_tokenizer

from .conftest import REPO
from .data_helpers import first_pass

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
        rows = [
            json.loads(line) for line in open(SAMPLE / f"sft_{fmt.split('_')[0] if fmt == 'alpaca' else fmt}.jsonl")
        ]
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
    trained = [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != -100]
    text = tokenizer.decode(trained)
    assert text == "William Shakespeare.<|im_end|>\nAround 1606.<|im_end|>\n"
    assert all(label in (-100, t) for t, label in zip(encoded["input_ids"], encoded["labels"]))


def test_sft_datasets_and_ambiguous_or_unknown_formats(tmp_path, tokenizer):
    spec = DataSpec(
        train_files=[str(SAMPLE / "sft_sharegpt.jsonl")], eval_fraction=0, packing=False, cache_dir=str(tmp_path)
    )
    train, _ = row_datasets(spec, tokenizer, 256, sft=True)
    assert len(train) == 8 and all(-100 in r["labels"] for r in train)
    with pytest.raises(DataError, match="fit several formats"):
        detect_format(["prompt", "completion", "question", "answer"])
    with pytest.raises(DataError, match="no known format"):
        detect_format(["foo"])


def test_percentage_is_a_seeded_random_sample():
    lengths = [np.full(2000, 5)]

    def sample(seed):
        return select_documents([MixtureSource("a", percentage=10)], lengths, 0, seed).train[0].tolist()

    assert len(sample(1)) == 200 and sample(1) == sample(1) and sample(1) != sample(2)
    assert sample(1) != list(range(200))  # not the first documents


def test_domains_filter_and_empty_after_filter(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "domain": "law"}, {"text": "y", "domain": "news"}])
    spec = DataSpec(mixture=[{"name": str(path), "domains": ["law"]}], eval_fraction=0, cache_dir=str(tmp_path))
    train, _ = row_datasets(spec, tokenizer, 64)
    assert len(train) == 1 and tokenizer.decode(train[0]["input_ids"][:-1]) == "x"
    spec.mixture = [{"name": str(path), "domains": ["finance"]}]
    with pytest.raises(DataError, match="no documents left after the domain filter"):
        row_datasets(spec, tokenizer, 64)


def test_streaming_reads_every_document_in_shuffled_packs(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "s.jsonl", [{"text": f"doc {i} " + "word " * (i % 13)} for i in range(300)])
    spec = DataSpec(train_files=[str(path)], streaming=True, eval_fraction=0)
    train, _ = row_datasets(spec, tokenizer, 64)
    rows, docs = first_pass(train, tokenizer)  # the stream then starts again, without end
    assert sorted(docs) == sorted(f"doc {i} " + "word " * (i % 13) for i in range(300))
    widths = [len(r["input_ids"]) for r in rows]
    assert widths != sorted(widths, reverse=True)  # packs leave each buffer shuffled, not by length
    again = [r["input_ids"] for r in itertools.islice(train, len(rows))]
    assert again == [r["input_ids"] for r in rows]  # seeded: the same order again

    spec.eval_fraction = 0.1  # a seeded tenth of the first documents, at most 1,000, never in the train stream
    train, evaluation = row_datasets(spec, tokenizer, 64)
    held = {tokenizer.decode(r["input_ids"][:-1]) for r in evaluation if len(r["seq_lengths"]) == 1}
    streamed = first_pass(train, tokenizer)[1]
    assert 10 <= sum(len(r["seq_lengths"]) for r in evaluation) <= 60 and not held & set(streamed)
    spec.eval_fraction = 400
    with pytest.raises(DataError, match="fewer than the 400 held out for eval"):
        row_datasets(spec, tokenizer, 64)


def records(name: str) -> list[dict]:
    return list(iter_records(name))


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n{"text": "fine"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        records(str(path))
    stats = DataStats()
    assert [r["text"] for r in iter_records(str(path), skip_bad_records=True, stats=stats)] == ["ok", "fine"]
    assert stats["bad_records_skipped"] == 1


def test_missing_column_lists_existing_ones(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", [{"body": "x", "title": "t"}])
    with pytest.raises(DataError, match=r"no column 'text'; columns: \['body', 'title'\]"):
        records(str(path))


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"u.jsonl: invalid UTF-8 at byte offset 25"):
        records(str(path))
    txt = tmp_path / "u.txt"
    txt.write_bytes(b"abc\xfe")
    with pytest.raises(DataError, match=r"invalid UTF-8 at byte offset 3"):
        records(str(txt))


@pytest.mark.integration  # three train.py runs
def test_a_streamed_run_resumes_to_the_same_weights(tmp_path):
    """Resuming re-reads the rank's shard and skips the batches already trained (README, Data: streaming)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from .train_helpers import fast_args, recording_steps, run_inprocess, write_tiny_config

    config = write_tiny_config(tmp_path)
    flags = ["--max_steps", "6", "--save_steps", "3", "--streaming", "true", "--eval_fraction", "0"]
    for name in ("whole", "cut"):
        run_inprocess(fast_args(tmp_path / name, config, *flags))
    for leftover in ("final_model", "checkpoint-6"):  # as if killed right after checkpoint-3
        shutil.rmtree(tmp_path / "cut" / leftover)
    with recording_steps() as runs:
        run_inprocess(fast_args(tmp_path / "cut", config, *flags, "--resume_from_checkpoint", "auto"))
    assert runs[0].steps == [4, 5, 6]  # resumed at checkpoint-3, not a fresh run with the same seed
    whole, cut = (load_file(str(tmp_path / n / "final_model" / "model.safetensors")) for n in ("whole", "cut"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
