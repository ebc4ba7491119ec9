"""eval.py end to end on a tiny trained model: lm-eval parity, results.json, report.md, plots, bad inputs, LoRA
adapters, --compare, and the report train.py writes at the end of a run. No Hub: local task YAMLs and data.
The pieces that need no trained model are in test_evaluate_pieces.py."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.image import imread

import eval as eval_cli  # the repo's eval.py

from .conftest import REPO
from .eval_helpers import go_offline, write_local_tasks
from .train_helpers import fast_args, run_inprocess, write_tiny_config

pytestmark = pytest.mark.integration  # a whole train.py run (module fixture), eval.py runs on it


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    go_offline(monkeypatch)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return write_local_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tasks_dir):
    """A tiny model trained for a few steps by train.py's code, with eval, a local benchmark and checkpoints along
    the way."""
    root = tmp_path_factory.mktemp("evaluate")
    out = root / "run"
    run_inprocess(
        fast_args(
            out,
            write_tiny_config(root),
            "--max_steps",
            "8",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "4",
            "--save_steps",
            "4",
            "--eval_tasks",
            "local_mc",
            "--eval_tasks_include_path",
            str(tasks_dir),
            "--eval_tasks_limit",
            "6",
        )
    )
    return out


def png_ok(path) -> None:
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert float(np.var(image)) > 0


def main_exit(argv, capsys) -> tuple[int, str]:
    code = eval_cli.main(argv)
    return code, capsys.readouterr().err


def test_train_writes_report_and_plots(run_dir):
    state = json.loads((run_dir / "trainer_state.json").read_text())
    seen = [e["tokens_seen"] for e in state["log_history"] if "loss" in e]  # the training logs
    assert len(seen) == 8 and seen == sorted(seen) and seen[0] > 0
    arguments = json.loads((run_dir / "run_arguments.json").read_text())
    assert arguments["data"]["max_seq_length"] == 64 and arguments["training"]["max_steps"] == 8
    report = (run_dir / "training_report.md").read_text()
    assert f"| tokens seen | {seen[-1]:,} |" in report
    assert "| steps | 8 of 8 |" in report and "warmup_stable_decay" in report
    assert "![training history](plots/training.png)" in report
    png_ok(run_dir / "plots" / "training.png")

    # final_model/README.md: a Hub model card (metadata the Hub reads), language from the training text
    from huggingface_hub import ModelCard

    card = ModelCard.load(run_dir / "final_model" / "README.md")
    assert card.data.library_name == "transformers" and "moai-llm" in card.data.tags and "pretrain" in card.data.tags
    assert card.data.language == ["en"]  # the bundled corpus is English prose
    assert "| total parameters |" in card.text and "Not evaluated yet." in card.text

    # --eval_tasks: the benchmark scored on the model in memory at each evaluation, logged against tokens seen
    bench = [e for e in state["log_history"] if "bench/local_mc/acc" in e]
    assert [e["step"] for e in bench] == [4, 8]
    assert all(0 <= e["bench/local_mc"] <= 1 and e["bench_seconds"] > 0 for e in bench)
    assert bench[-1]["tokens_seen"] == seen[-1]  # logged at the last step: all its tokens counted


def scores_by_hand(model_dir, data_file) -> dict[str, tuple[list[float], float, float]]:
    """local_mc by hand, question -> (each choice's summed log-probability after the prompt under the model's own
    forward, acc, acc_norm): the best choice, or the best per character, is the label (lm-eval's definitions)."""
    from transformers import AutoTokenizer

    from moai_llm import MoaiForCausalLM

    model = MoaiForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    scores = {}
    for row in map(json.loads, data_file.read_text().splitlines()):
        context = f"{row['question']}\nAnswer:"
        context_ids = tokenizer(context)["input_ids"]
        totals = []
        for choice in row["choices"]:
            ids = tokenizer(f"{context} {choice}")["input_ids"]
            assert ids[: len(context_ids)] == context_ids
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
            totals.append(sum(logprobs[i - 1, ids[i]].item() for i in range(len(context_ids), len(ids))))
        per_character = np.array(totals) / np.array([len(choice) for choice in row["choices"]])
        hit, norm_hit = np.argmax(totals) == row["label"], np.argmax(per_character) == row["label"]
        scores[row["question"]] = (totals, float(hit), float(norm_hit))
    return scores


def test_evaluate_benchmarks_perplexity_samples_report(run_dir, tasks_dir, tmp_path, capsys):
    import lm_eval

    model_dir = run_dir / "final_model"
    eval_file = tmp_path / "held_out.jsonl"
    eval_file.write_text(
        "".join(json.dumps({"text": f"To be, or not to be, that is question {i}."}) + "\n" for i in range(5))
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n\nThe king said\n")
    out = tmp_path / "eval"
    argv = [
        "--model_path",
        str(model_dir),
        "--tasks",
        "local_mc,local_hub_only",
        "--include_path",
        str(tasks_dir),
        "--eval_file",
        str(eval_file),
        "--prompts",
        str(prompts),
        "--max_new_tokens",
        "8",
        "--batch_size",
        "4",
        "--precision",
        "fp32",  # the scores by hand below are fp32 on the CPU
        "--output_dir",
        str(out),
    ]
    assert eval_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "local_hub_only: FAILED (" in printed and "tokens/s" in printed

    results = json.loads((out / "results.json").read_text())
    assert results["model"] == str(model_dir)
    assert set(results) >= {"model", "tasks", "perplexity", "samples"}
    # the same task scored by hand: each choice's summed log-probability under the model's own forward
    by_hand = scores_by_hand(model_dir, tasks_dir / "mc.jsonl")
    acc, acc_norm = np.mean([hits for _, *hits in by_hand.values()], axis=0)
    assert acc != acc_norm  # choices of different lengths: a swap of the two metrics would show
    assert results["tasks"]["local_mc"]["acc"] == pytest.approx(acc, abs=1e-9)
    assert results["tasks"]["local_mc"]["acc_norm"] == pytest.approx(acc_norm, abs=1e-9)
    assert results["baselines"]["local_mc"] == pytest.approx(np.mean([1 / (3 + i % 2) for i in range(10)]))
    assert "ConnectionError" in results["failed_tasks"]["local_hub_only"]
    assert "local_hub_only" not in results["tasks"]

    ppl = results["perplexity"][str(eval_file)]
    assert set(ppl) >= {"perplexity", "bits_per_byte", "tokens", "token_accuracy"}
    assert ppl["documents"] == 5 and ppl["perplexity"] > 1 and 0 <= ppl["token_accuracy"] <= 1
    assert [s["prompt"] for s in results["samples"]] == ["Once upon a time", "The king said"]
    assert all(isinstance(s["text"], str) and s["tokens"] > 0 for s in results["samples"])

    report = (out / "report.md").read_text()
    assert "| total parameters |" in report and "| context (max_position_embeddings) | 256 |" in report
    assert "| steps | 8 of 8 |" in report and "![training history](plots/training.png)" in report
    baseline = f"{results['baselines']['local_mc']:.4f}"
    assert f"| local_mc | acc ★ | {results['tasks']['local_mc']['acc']:.4f} |" in report and baseline in report
    assert "`local_hub_only`: ConnectionError" in report
    assert f"| {eval_file} | 5 |" in report
    assert "**Once upon a time**" in report
    png_ok(out / "plots" / "training.png")

    # how the numbers were produced: a pretraining run's samples are plain greedy continuations, without ChatML
    assert results["sample_settings"]["chat_template"] == "off (auto: a pretrain run)"
    assert results["sample_settings"]["decoding"] == "greedy" and results["sample_settings"]["repetition_penalty"] == 1
    assert results["settings"]["precision"] == "fp32"
    assert results["settings"]["lm_eval_options"]["fewshot_random_seed"] == 1234
    assert results["task_details"]["local_mc"]["documents"] == 10
    versions = results["provenance"]["versions"]
    assert versions["lm_eval"] == lm_eval.__version__ and versions["torch"] == torch.__version__
    assert results["provenance"]["weights"].startswith("model.safetensors:")
    assert ppl["content_sha256"] and len(ppl["content_sha256"]) == 64
    logged = [json.loads(line) for line in (out / "samples" / "local_mc.jsonl").read_text().splitlines()]
    assert len(logged) == 10 and {"doc", "target", "acc"} <= set(logged[0])
    for sample in logged:  # each choice's log-likelihood as lm-eval logged it, and the document's scores
        totals, hit, norm_hit = by_hand[sample["doc"]["question"]]
        assert [ll for ll, _ in sample["filtered_resps"]] == pytest.approx(totals, abs=1e-4)
        assert (sample["acc"], sample["acc_norm"]) == (hit, norm_hit)

    # the model card train.py wrote now carries the scores: the Evaluation table and the model-index block
    from huggingface_hub import ModelCard

    card = ModelCard.load(model_dir / "README.md")
    entries = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert entries[("local_mc", "acc")] == pytest.approx(results["tasks"]["local_mc"]["acc"], abs=1e-6)
    assert entries[("text", "bits_per_byte")] == pytest.approx(ppl["bits_per_byte"], abs=1e-6)
    assert "| local_mc | acc |" in card.text and "Not evaluated yet." not in card.text


def test_lora_adapter_directory_evaluates(run_dir, tmp_path):
    """An adapter dir loads with its base, is merged, and scores what base + B·A scores; --compare sets it beside
    the base model's evaluation."""
    from peft import LoraConfig, get_peft_model

    from moai_llm import MoaiForCausalLM
    from moai_llm.evaluation.perplexity import evaluate_perplexity
    from moai_llm.evaluation.runner import EvalOptions, evaluate_model

    base_dir = run_dir / "final_model"
    torch.manual_seed(0)
    peft_model = get_peft_model(
        MoaiForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    text = "Now is the winter of our discontent made glorious summer by this sun of York."
    (tmp_path / "doc.txt").write_text(text)
    results = {}
    for name, path in (("base", base_dir), ("adapter", adapter_dir)):
        results[name] = evaluate_model(
            EvalOptions(
                model_path=str(path),
                eval_files=[str(tmp_path / "doc.txt")],
                samples=False,
                precision="fp32",  # compared below with an fp32 run of the merged model
                output_dir=str(tmp_path / f"eval-{name}"),
            )
        )
    from transformers import AutoTokenizer

    merged = peft_model.merge_and_unload().eval()
    expected = evaluate_perplexity(merged, AutoTokenizer.from_pretrained(base_dir), [text], max_length=256)
    adapter_ppl = results["adapter"]["perplexity"][str(tmp_path / "doc.txt")]["perplexity"]
    assert adapter_ppl == pytest.approx(expected.perplexity, rel=1e-5)
    assert adapter_ppl != pytest.approx(results["base"]["perplexity"][str(tmp_path / "doc.txt")]["perplexity"])
    assert "r=4, alpha=8" in results["adapter"]["model_card"]["LoRA adapter"]

    assert (
        eval_cli.main(
            [
                "--compare",
                str(tmp_path / "eval-base"),
                str(tmp_path / "eval-adapter"),
                "--output_dir",
                str(tmp_path / "compare"),
            ]
        )
        == 0
    )
    report = (tmp_path / "compare" / "report.md").read_text()
    assert "| perplexity |" in report.replace(f"| {tmp_path / 'doc.txt'} ", "| ")
    assert f"{adapter_ppl:.4f}" in report and "LoRA adapter" in report
    png_ok(tmp_path / "compare" / "plots" / "loss_comparison.png")


@pytest.mark.parametrize(
    "case",
    [
        "missing model",
        "unknown task",
        "empty eval file",
        "unreadable prompts",
        "compare without results",
        "repeated flag",
    ],
)
def test_bad_inputs_are_one_line_errors(case, run_dir, tmp_path, capsys):
    model = str(run_dir / "final_model")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    argv = {
        "missing model": ["--model_path", str(tmp_path / "nope"), "--tasks", "local_mc"],
        "unknown task": ["--model_path", model, "--tasks", "hellaswagg"],
        "empty eval file": ["--model_path", model, "--tasks", "hellaswag", "--eval_file", str(empty)],
        "unreadable prompts": ["--model_path", model, "--tasks", "hellaswag", "--prompts", str(tmp_path)],
        "compare without results": ["--compare", str(tmp_path), model, "--output_dir", str(tmp_path / "c")],
        "repeated flag": ["--model_path", model, "--tasks", "hellaswag", "--tasks", "piqa"],
    }[case]
    if case == "repeated flag":
        with pytest.raises(SystemExit) as exit_info:
            eval_cli.main(argv)
        code, err = exit_info.value.code, capsys.readouterr().err
    else:
        code, err = main_exit(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eval.py: error: ")
    expected = {
        "missing model": "nope: no such directory",
        "unknown task": "'hellaswagg' (did you mean hellaswag",
        "empty eval file": "empty.txt: no records",
        "unreadable prompts": "cannot be read (Is a directory)",
        "compare without results": "no results.json",
        "repeated flag": "--tasks is given twice",
    }[case]
    assert expected in lines[0]


def test_cli_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), "--model_path", str(tmp_path / "missing")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"eval.py: error: --model_path {tmp_path / 'missing'}: no such directory"


def test_checkpoints_are_evaluated_and_match_the_scores_logged_in_training(run_dir, tasks_dir, tmp_path, capsys):
    """--checkpoints: each checkpoint scored again from disk gives the score --eval_tasks logged at its step, and
    each metric is plotted against tokens seen."""
    out = tmp_path / "checkpoints"
    argv = ["--checkpoints", str(run_dir), "--tasks", "local_mc", "--include_path", str(tasks_dir)]
    argv += ["--limit", "6", "--no_samples", "--precision", "fp32", "--output_dir", str(out)]
    assert eval_cli.main(argv) == 0
    points = {p["label"]: p for p in json.loads((out / "checkpoints.json").read_text())}
    assert list(points) == ["checkpoint-4", "checkpoint-8", "final_model"]
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    logged = {e["step"]: e for e in history if "bench/local_mc" in e}
    assert points["checkpoint-4"]["metrics"]["local_mc"] == pytest.approx(logged[4]["bench/local_mc"], abs=1e-6)
    assert points["checkpoint-8"]["metrics"]["local_mc"] == pytest.approx(logged[8]["bench/local_mc"], abs=1e-6)
    assert points["checkpoint-4"]["tokens_seen"] < points["checkpoint-8"]["tokens_seen"]
    assert points["final_model"]["tokens_seen"] == points["checkpoint-8"]["tokens_seen"] == logged[8]["tokens_seen"]
    # each checkpoint's own report shows its own step, not the finished run's
    assert "| steps | 4 of 8 |" in (out / "checkpoint-4" / "report.md").read_text()
    assert "![metrics by checkpoint](plots/checkpoints.png)" in (out / "report.md").read_text()
    png_ok(out / "plots" / "checkpoints.png")
