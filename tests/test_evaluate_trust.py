"""What makes eval.py's numbers comparable: sample settings and the chat template chosen by the run's mode,
--compare's warnings and standard errors, suites that are what they say, a checkpoint's own history, provenance,
the sliding-window perplexity and the precision rule. No trained model: tiny random models and written files."""

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from moai_llm import MoaiForCausalLM
from moai_llm.chat.generation import SamplingParams
from moai_llm.errors import UsageError
from moai_llm.evaluation.history import load_run, training_summary
from moai_llm.evaluation.perplexity import evaluate_perplexity, sliding_windows
from moai_llm.evaluation.report import comparison_warnings, render_comparison, render_report
from moai_llm.evaluation.runner import precision_context, suite_averages, training_plot
from moai_llm.evaluation.samples import sample_settings, use_chat_template
from moai_llm.evaluation.suites import SUITES, headline_metric, resolve_tasks

from .conftest import REPO, qwen3_twin, tiny_config

TOKENIZER = REPO / "moai_llm" / "assets" / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


def test_chat_template_follows_the_run_mode(tokenizer):
    assert tokenizer.chat_template  # every MOAI tokenizer carries ChatML: the case that misled samples
    assert use_chat_template("auto", "pretrain", tokenizer) == (False, "off (auto: a pretrain run)")
    assert use_chat_template("auto", "sft", tokenizer) == (True, "on (auto: a sft run)")
    assert use_chat_template("auto", None, tokenizer)[0] is True
    assert use_chat_template("off", "sft", tokenizer) == (False, "off (--chat_template off)")
    tokenizer_without = type("T", (), {"chat_template": None})()
    assert use_chat_template("auto", "sft", tokenizer_without)[0] is False
    with pytest.raises(UsageError, match="no chat template"):
        use_chat_template("on", None, tokenizer_without)


def test_sample_defaults_are_plain_greedy_and_recorded():
    """eval.py's samples no longer inherit chat's top_k 50, top_p 0.9 and repetition penalty 1.1."""
    from moai_llm.evaluation.runner import EvalOptions

    params = EvalOptions(model_path="x").sampling
    assert params.greedy and params.repetition_penalty == 1.0 and params.generate_kwargs()["do_sample"] is False
    assert params.max_new_tokens == 128  # eval.py's --max_new_tokens default and docs/evaluation.md
    settings = sample_settings(params, "off (auto: a pretrain run)")
    assert settings["decoding"] == "greedy" and settings["repetition_penalty"] == 1.0 and settings["top_k"] is None
    sampled = sample_settings(SamplingParams(temperature=0.8, top_k=40, top_p=0.95, seed=3), "on")
    assert (sampled["top_k"], sampled["top_p"], sampled["seed"]) == (40, 0.95, 3)


def results(limit, shots=0, acc=0.5, stderr=0.022, name="eval.jsonl", text_hash="abc", precision="fp32"):
    return {
        "model": f"runs/{limit}/final_model",
        "tasks": {"arc_easy": {"acc": acc, "acc_stderr": stderr, "acc_norm": acc + 0.01, "acc_norm_stderr": stderr}},
        "summary_tasks": ["arc_easy"],
        "task_details": {"arc_easy": {"num_fewshot": shots, "documents": limit or 2376, "limit": limit}},
        "baselines": {"arc_easy": 0.25},
        "perplexity": {
            name: {
                "perplexity": 10.0,
                "bits_per_byte": 1.0,
                "token_accuracy": 0.3,
                "tokens": 9,
                "content_sha256": text_hash,
            }
        },
        "settings": {"precision": precision, "max_length": 2048},
        "provenance": {"versions": {"lm_eval": "0.4.13"}},
        "sample_settings": {"chat_template": "off (auto: a pretrain run)", "temperature": 0.0},
    }


def test_compare_warns_on_every_differing_setting_and_shows_stderr():
    runs = {"quick": results(500), "full": results(None, shots=5, precision="bf16 autocast", name="copy.jsonl")}
    warnings = comparison_warnings(runs)
    assert "arc_easy: limit differs (quick: 500; full: all)" in warnings
    assert "arc_easy: documents differs (quick: 500; full: 2376)" in warnings
    assert "arc_easy: num_fewshot differs (quick: 0; full: 5)" in warnings
    assert any(w.startswith("settings.precision differs") for w in warnings)
    runs["full"]["sample_settings"]["chat_template"] = "on (auto: a sft run)"
    assert "sample_settings.chat_template differs (quick: off (auto: a pretrain run); full: on (auto: a sft run))" in (
        comparison_warnings(runs)
    )
    assert any("the same text is named differently" in w for w in warnings)
    report = render_comparison(runs)
    assert "⚠" in report and "0.5000 ± 0.0220" in report
    assert "| arc_easy | acc_norm ★ |" in report  # ARC's headline metric
    # perplexity rows are keyed by content: one row per metric for the two names of one text
    assert report.count("| eval.jsonl / copy.jsonl | perplexity |") == 1
    assert comparison_warnings({"a": results(None), "b": results(None)}) == []


def test_same_name_different_content_is_kept_apart():
    runs = {"a": results(None, text_hash="one"), "b": results(None, text_hash="two")}
    assert any("content differs" in w for w in comparison_warnings(runs))
    assert render_comparison(runs).count("| eval.jsonl | perplexity |") == 2


def test_suites_are_what_they_say():
    shots = {s.name: s.num_fewshot for s in SUITES["leaderboard_v1"].tasks}
    assert shots == {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0, "winogrande": 5, "gsm8k": 5}
    assert {s.name: s.num_fewshot for s in SUITES["moellama"].tasks}["gsm8k_cot"] == 8
    with pytest.raises(UsageError, match="standard: renamed; .*leaderboard_v1"):
        resolve_tasks(None, "standard", None, None)
    assert headline_metric("hellaswag", {"acc": 0.3, "acc_norm": 0.4}) == "acc_norm"
    assert headline_metric("mmlu", {"acc": 0.3, "acc_stderr": 0.01}) == "acc"
    assert headline_metric("gsm8k", {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.2}) == (
        "exact_match,strict-match"
    )


def test_leaderboard_average_uses_each_headline_metric():
    specs = resolve_tasks(None, "leaderboard_v1", None, None)
    scores = {
        "arc_challenge": {"acc": 0.2, "acc_norm": 0.3},
        "hellaswag": {"acc": 0.3, "acc_norm": 0.4},
        "mmlu": {"acc": 0.25},
        "truthfulqa_mc2": {"acc": 0.45},
        "winogrande": {"acc": 0.5},
        "gsm8k": {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 0.1},
    }
    bench = type("Bench", (), {"tasks": scores})()
    assert suite_averages(bench, specs) == {"leaderboard_v1": pytest.approx((0.3 + 0.4 + 0.25 + 0.45 + 0.5) / 6)}
    del scores["gsm8k"]
    assert suite_averages(bench, specs) == {}


def write_run(tmp_path):
    """A run directory: a checkpoint at step 4 and the finished run's files (step 8)."""
    run = tmp_path / "run"
    history = [{"step": s, "loss": 10.0 - s, "tokens_seen": 100 * s} for s in range(1, 9)]
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "final_model").mkdir()
    state = {"global_step": 4, "max_steps": 8, "log_history": history[:4]}
    (run / "checkpoint-4" / "trainer_state.json").write_text(json.dumps(state))
    (run / "trainer_state.json").write_text(json.dumps({"global_step": 8, "max_steps": 8, "log_history": history}))
    (run / "all_results.json").write_text(json.dumps({"train_runtime": 120.0, "train_loss": 5.5, "eval_loss": 2.0}))
    return run


def test_a_checkpoint_reports_its_own_state(tmp_path):
    run = write_run(tmp_path)
    checkpoint = training_summary(load_run(run / "checkpoint-4"))
    final = training_summary(load_run(run / "final_model"))
    assert checkpoint["steps"] == "4 of 8" and checkpoint["final train loss"] == "6.0000"
    assert checkpoint["wall time"] is None and checkpoint["final eval loss"] is None
    assert final["steps"] == "8 of 8" and final["final train loss"] == "2.0000" and final["wall time"]


def test_missing_matplotlib_skips_plots_with_one_warning(tmp_path, monkeypatch, caplog):
    run = write_run(tmp_path)
    monkeypatch.delitem(sys.modules, "moai_llm.evaluation.plots", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    summary, plot = training_plot(str(run / "final_model"), tmp_path / "eval")
    assert plot is None and summary["steps"] == "8 of 8"
    assert "plots skipped" in caplog.text and "pip install" in caplog.text


def test_report_marks_headlines_and_gives_provenance_and_the_lm_eval_difference():
    result = results(None)
    result.update(provenance={"versions": {"torch": "2.13", "lm_eval": "0.4.13"}, "code_commit": "abc123"})
    result["averages"] = {"leaderboard_v1": 0.41}
    result["samples"] = [{"prompt": "Once upon a time", "text": "there was", "tokens": 2, "tokens_per_second": 9.0}]
    report = render_report(result)
    assert "| arc_easy | acc |" in report and "| acc_norm ★ |" in report
    assert "| code commit | abc123 |" in report and "| lm_eval | 0.4.13 |" in report
    assert "rolling log-likelihood" in report and "--stride" in report
    assert "**leaderboard_v1 average**" in report
    assert "Produced with chat_template off (auto: a pretrain run)" in report


def test_sliding_windows_score_every_target_once():
    for n in (1, 2, 5, 9, 10, 11, 30):
        ids = list(range(n))
        for stride in (1, 2, 3, 4):
            pieces, contexts = sliding_windows(ids, 5, stride)
            scored = [t for p, c in zip(pieces, contexts) for t in p[c:]]
            assert scored == ids[1:], (n, stride)
            assert all(len(p) <= 5 for p in pieces)
        if n > 5:  # every window, the last too, reads a full max_length (the disjoint windows' last may be short)
            assert all(len(p) == 5 for p in sliding_windows(ids, 5, 2)[0])


def test_stride_matches_a_sliding_window_reference(tokenizer):
    """Packed sliding windows == transformers' Qwen3 run window by window, scoring each window's new targets."""
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(vocab_size=8192, max_position_embeddings=512)).eval()
    text = json.loads((REPO / "moai_llm/assets/sample/pretrain.jsonl").open().readline())["text"][:1500]
    max_length, stride = 64, 16
    result = evaluate_perplexity(model, tokenizer, [text], max_length, batch_size=4, stride=stride)
    reference = qwen3_twin(model)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    nll, count, end = 0.0, 0, 1
    with torch.no_grad():
        for stop in range(max_length, len(ids) + stride, stride):
            stop = min(stop, len(ids))
            begin = max(0, stop - max_length)
            window = torch.tensor([ids[begin:stop]])
            logits = reference(window).logits[0, :-1].double()  # [window - 1, vocab]
            new = end - begin - 1  # targets before the previous window's end were scored already
            nll += F.cross_entropy(logits[new:], window[0, 1:][new:], reduction="sum").item()
            count += window.shape[1] - 1 - new
            end = stop
            if stop == len(ids):
                break
    assert result.tokens == count == len(ids) - 1
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-4)
    plain = evaluate_perplexity(model, tokenizer, [text], max_length, batch_size=4)
    assert plain.tokens == result.tokens and plain.windows < result.windows


def test_precision_follows_training(monkeypatch):
    import moai_llm.training.resolve as resolve

    model = MoaiForCausalLM(tiny_config())
    monkeypatch.setattr(resolve, "cpu_has_native_bf16", lambda: True)
    context, label = precision_context("auto", model)
    assert label.startswith("bf16 autocast") and isinstance(context, torch.autocast)
    monkeypatch.setattr(resolve, "cpu_has_native_bf16", lambda: False)
    assert precision_context("auto", model)[1] == "fp32"
    assert precision_context("bf16", model)[1].startswith("bf16 autocast")
    assert precision_context("auto", model.to(torch.bfloat16))[1] == "model dtype bfloat16"


def test_lm_eval_options_and_seeds_reach_simple_evaluate(monkeypatch):
    """--seed, --apply_chat_template, --fewshot_as_multiturn and --gen_kwargs are passed to lm-eval as given."""
    import lm_eval
    import lm_eval.models.huggingface

    from moai_llm.evaluation import benchmarks

    calls = []
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kwargs: calls.append(kwargs) or None)
    monkeypatch.setattr(lm_eval.models.huggingface, "HFLM", lambda **kwargs: "lm")
    monkeypatch.setattr(benchmarks, "task_manager", lambda include_path=(): None)
    monkeypatch.setattr(benchmarks, "merge_run", lambda results, out, limit=None: None)
    options = benchmarks.LmEvalOptions(True, True, "temperature=0", seed=7)
    benchmarks.run_benchmarks(None, None, resolve_tasks("t:2", None, None, 5), options=options)
    assert calls[0]["apply_chat_template"] is True and calls[0]["fewshot_as_multiturn"] is True
    assert calls[0]["gen_kwargs"] == "temperature=0" and (calls[0]["num_fewshot"], calls[0]["limit"]) == (2, 5)
    assert {calls[0][k] for k in ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")} == {
        7
    }
    benchmarks.run_benchmarks(None, None, resolve_tasks("t", None, None, None))
    assert (calls[1]["random_seed"], calls[1]["fewshot_random_seed"]) == (0, 1234)  # lm-eval's own defaults


def test_samples_take_the_static_cache(tokenizer):
    """--decoding static: the same greedy answers as the dynamic cache, and the setting recorded."""
    from moai_llm.evaluation.samples import generate_samples

    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=64)).eval()
    params = SamplingParams(temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=6, seed=0)
    dynamic = generate_samples(model, tokenizer, ["Once upon a time"], params, chat=False)
    static = generate_samples(model, tokenizer, ["Once upon a time"], params, chat=False, decoding="static")
    assert static[0]["text"] == dynamic[0]["text"] and static[0]["tokens"] == dynamic[0]["tokens"] == 6
    assert sample_settings(params, "off", "static")["kv_cache"] == "static"
