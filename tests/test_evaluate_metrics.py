"""eval.py's numbers: perplexity against transformers' Qwen3 unpacked, bits per byte, baselines, suites."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from moai_llm import MoaiForCausalLM
from moai_llm.errors import UsageError
from moai_llm.evaluation.benchmarks import BenchmarkResults, merge_run
from moai_llm.evaluation.model_card import model_card
from moai_llm.evaluation.perplexity import evaluate_perplexity, windows
from moai_llm.evaluation.suites import SUITES, resolve_tasks
from moai_llm.training.callbacks import ThroughputCallback

from .conftest import REPO, qwen3_twin, tiny_config

TOKENIZER = REPO / "moai_llm" / "assets" / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def documents():
    """Sample-corpus paragraphs, a Korean sentence, and one long document that needs several windows."""
    texts = [json.loads(line)["text"] for line in (REPO / "moai_llm/assets/sample/pretrain.jsonl").open()][:2]
    paragraphs = [p.strip() for text in texts for p in text.split("\n\n") if len(p.strip()) > 20][:40]
    return paragraphs + ["안녕하세요. 대한민국 헌법 제1조: 대한민국은 민주공화국이다.", texts[1][:4000]]


def reference_scores(model, tokenizer, documents, max_length):
    """Summed NLL (float64), correct argmax predictions, scored tokens and scored bytes, from transformers'
    Qwen3ForCausalLM with the same weights, one unpadded document window at a time (no packing)."""
    reference = qwen3_twin(model)
    nll, correct, count, scored_bytes = 0.0, 0, 0, 0
    with torch.no_grad():
        for text in documents:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            scored_bytes += len(text.encode()) - len(tokenizer.decode(ids[:1]).encode())
            for start in range(0, max(len(ids) - 1, 1), max_length - 1):
                window = torch.tensor([ids[start : start + max_length]])
                logits = reference(window).logits[0, :-1].double()  # [window - 1, vocab]
                target = window[0, 1:]
                nll += F.cross_entropy(logits, target, reduction="sum").item()
                correct += int((logits.argmax(-1) == target).sum())
                count += target.numel()
    return nll, correct, count, scored_bytes


def test_perplexity_matches_qwen3_unpacked(tokenizer, documents):
    """Packed rows + fused CE from hidden states == exp(token-weighted CE) of transformers' Qwen3 per document,
    whatever objective the model was trained with (focal here); bits per byte and accuracy from the same sums."""
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(vocab_size=8192, max_position_embeddings=512)).eval()
    model.config.loss_config = {"type": "focal", "params": {"gamma": 2.0}}
    max_length = 128
    result = evaluate_perplexity(model, tokenizer, documents, max_length=max_length, batch_size=4)
    nll, correct, count, scored_bytes = reference_scores(model, tokenizer, documents, max_length)
    assert result.windows > len(documents)  # the long document really was cut into windows
    assert result.rows < result.windows  # and windows really were packed several to a row
    assert result.tokens == count
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert result.bytes == scored_bytes
    assert result.bits_per_byte == pytest.approx(nll / (math.log(2) * scored_bytes), rel=1e-4)
    assert result.bits_per_byte == pytest.approx(result.nll / (math.log(2) * result.bytes), rel=1e-12)
    assert result.correct == correct
    assert result.token_accuracy == pytest.approx(correct / count)
    assert result.tokens_per_second > 0


def test_batch_size_and_row_length_change_nothing_but_windows(tokenizer, documents):
    torch.manual_seed(1)
    model = MoaiForCausalLM(tiny_config(vocab_size=8192, max_position_embeddings=512)).eval()
    short = documents[:10]  # all shorter than 256 tokens: no windows, so the row layout is the only difference
    one = evaluate_perplexity(model, tokenizer, short, max_length=256, batch_size=1)
    many = evaluate_perplexity(model, tokenizer, short, max_length=512, batch_size=8)
    assert one.windows == many.windows == len(short)
    assert one.tokens == many.tokens
    assert one.nll == pytest.approx(many.nll, rel=1e-5)


def test_windows_score_every_token_but_the_first_once():
    for n in (1, 2, 5, 9, 10, 11, 30):
        ids = list(range(n))
        pieces = windows(ids, 5)
        assert all(2 <= len(p) <= 5 for p in pieces) or n < 2
        scored = [t for p in pieces for t in p[1:]]
        assert scored == ids[1:]


def test_moe_model_card_and_perplexity(tokenizer):
    torch.manual_seed(0)
    config = tiny_config(
        vocab_size=8192, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[0]
    )
    model = MoaiForCausalLM(config).eval()
    card = model_card(model, "unused")
    assert "4 routed experts, top-2" in card["Mixture of Experts"]
    assert "MoE layers 1, dense 0" in card["Mixture of Experts"]
    total, active = (int(card[k].replace(",", "")) for k in ("total parameters", "active parameters per token"))
    assert active < total
    text = "The quick brown fox jumps over the lazy dog."
    result = evaluate_perplexity(model, tokenizer, [text], max_length=64)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]])
    with torch.no_grad():
        logits = model(ids, return_logits=True, output_router_logits=False).logits[0, :-1]
    expected = F.cross_entropy(logits.double(), ids[0, 1:]).item()
    assert math.log(result.perplexity) == pytest.approx(expected, rel=1e-5)


def test_baselines_from_scored_documents():
    """1/choices per multiple-choice document, mc2's share of true answers, 0 for generation; groups weighted."""

    def sample(n, **doc):
        return {"arguments": [("q", f" {i}") for i in range(n)], "doc": doc}

    out = {
        "results": {
            "grp": {"acc,none": 0.4},
            "a": {"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": "a"},
            "b": {"acc,none": 0.3},
            "tqa": {"acc,none": 0.2},
            "gen": {"exact_match,strict-match": 0.0},
        },
        "group_subtasks": {"grp": ["a", "b"]},
        "configs": {
            "a": {"output_type": "multiple_choice"},
            "b": {"output_type": "multiple_choice"},
            "tqa": {"output_type": "multiple_choice"},
            "gen": {"output_type": "generate_until"},
        },
        "samples": {
            "a": [sample(2), sample(4)],
            "b": [sample(5)],
            "tqa": [sample(4, mc2_targets={"labels": [1, 1, 0, 0]}), sample(3, mc2_targets={"labels": [1, 0, 0]})],
            "gen": [sample(1)],
        },
        "n-shot": {"a": 5, "b": 5, "tqa": 0, "gen": 8},
    }
    results = BenchmarkResults()
    merge_run(results, out)
    assert results.baselines["a"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert results.baselines["grp"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 5) / 3)
    assert results.baselines["tqa"] == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert results.baselines["gen"] == 0.0
    assert results.summary == ["grp", "tqa", "gen"]
    assert results.tasks["a"] == {"acc": 0.5, "acc_stderr": None}
    assert results.tasks["gen"] == {"exact_match,strict-match": 0.0}
    assert results.details["grp"] == {
        "output_type": "group",
        "num_fewshot": 5,
        "documents": 3,
        "limit": None,
        "version": None,
    }


@pytest.mark.integration  # lm-eval indexes its thousands of task files (about 4 s)
def test_suites_exist_in_lm_eval_registry():
    """Every suite task is a task or group of the installed lm-evaluation-harness, with the promised shots."""
    from moai_llm.evaluation.benchmarks import task_manager

    known = set(task_manager().all_tasks)
    for suite in SUITES.values():
        assert {spec.name for spec in suite.tasks} <= known
    shots = {spec.name: spec.num_fewshot for spec in SUITES["moellama"].tasks}
    assert shots == {"mmlu": 5, "hellaswag": 10, "arc_challenge": 25, "truthfulqa_mc2": 0, "gsm8k_cot": 8}
    assert {spec.name for spec in SUITES["korean"].tasks} == {"kobest", "kmmlu"}
    groups = set(task_manager().all_groups)
    assert {"mmlu", "kobest", "kmmlu"} <= groups


def test_task_lists():
    specs = resolve_tasks("mytask:3,other", "korean", None, 50)
    assert [(s.name, s.num_fewshot, s.limit) for s in specs] == [
        ("kobest", 0, 50),
        ("kmmlu", 5, 50),
        ("mytask", 3, 50),
        ("other", None, 50),
    ]
    assert all(s.num_fewshot == 1 for s in resolve_tasks(None, "leaderboard_v1", 1, None))
    for bad in ("mmlu:x", ",", "kobest"):
        with pytest.raises(UsageError):
            resolve_tasks(bad, "korean" if bad == "kobest" else None, None, None)


def test_tokens_seen_is_cumulative_and_survives_resume():
    meter = ThroughputCallback(flops_per_token=1.0, peak_tflops=None, world_size=2)
    state = SimpleNamespace(log_history=[{"step": 4, "loss": 1.0, "tokens_seen": 100}])
    meter.on_train_begin(None, state, None)
    ids = torch.tensor([[5, 6, 7, 0]])
    meter.observe(ids, ids, pad_token_id=0)
    assert meter.pop_logs()["tokens_seen"] == 100 + 3 * 2
    meter.observe(ids, ids, pad_token_id=0)
    assert meter.pop_logs()["tokens_seen"] == 112
