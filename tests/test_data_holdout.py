"""The default held-out set is capped at a token budget, the same for prepared and streamed data; what the cap
leaves out trains."""

import json

import numpy as np
import pytest

from moai_llm.data import DataSpec, MixtureSource, row_datasets, select_documents
from moai_llm.loading import load_tokenizer

from .data_helpers import first_pass


def test_a_fractional_holdout_is_cut_to_the_budget_and_the_rest_trains():
    rng = np.random.default_rng(0)
    lengths = [rng.integers(10, 100, 2000), rng.integers(10, 100, 500)]
    sources = [MixtureSource("a"), MixtureSource("b")]
    whole = select_documents(sources, lengths, 0.2, seed=1)
    capped = select_documents(sources, lengths, 0.2, seed=1, eval_max_tokens=5000)
    tokens = [int(n[e].sum()) for n, e in zip(lengths, capped.eval)]
    assert sum(tokens) <= 5000 and sum(tokens) > 4000
    assert abs(tokens[0] / sum(tokens) - 0.8) < 0.05  # each source keeps its share
    for n, t, e, w in zip(lengths, capped.train, capped.eval, whole.eval):
        assert set(e) <= set(w) and not set(e) & set(t) and sorted([*t, *e]) == list(range(len(n)))
    counted = select_documents(sources, lengths, 300, seed=1, eval_max_tokens=5000)  # a count is not capped
    assert sum(map(len, counted.eval)) == 300


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streamed"])
def test_the_cap_holds_for_prepared_and_streamed_data(tmp_path, streaming, caplog):
    path = tmp_path / "c.jsonl"
    texts = [f"doc{i} " + "word " * (5 + i % 20) for i in range(400)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokenizer = load_tokenizer()
    spec = DataSpec(
        train_files=[str(path)], streaming=streaming, eval_fraction=0.5, eval_max_tokens=300, cache_dir=str(tmp_path)
    )
    with caplog.at_level("INFO"):
        train, evaluation = row_datasets(spec, tokenizer, 64)
    held = sum(sum(evaluation[i]["seq_lengths"]) for i in range(len(evaluation)))
    assert 200 < held <= 300 and "eval documents capped at --eval_max_tokens 300" in caplog.text
    if streaming:
        trained = len(first_pass(train, tokenizer)[1])
    else:
        trained = sum(len(train[i]["seq_lengths"]) for i in range(len(train)))
    held_documents = sum(len(evaluation[i]["seq_lengths"]) for i in range(len(evaluation)))
    assert trained + held_documents == 400  # every document not held out after the cap trains
