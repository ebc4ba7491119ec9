"""train.py: the no-argument run (step-capped), bad input giving one clear line and a non-zero exit, `--packing false`
and `--prepare_only` end to end."""

import importlib.util
import json
import re
import subprocess
import sys
import textwrap

import pytest

from moai_llm.training.cli import UsageError, parse_args

from .conftest import REPO
from .train_helpers import fast_args, run_cli, run_inprocess, write_tiny_config


@pytest.mark.integration
def test_no_argument_run_learns_and_final_model_loads(tmp_path):
    result = run_cli(
        [
            "--max_steps",
            "10",
            "--max_seq_length",
            "128",
            "--batch_size",
            "2",
            "--logging_steps",
            "2",
            "--eval_steps",
            "10",
            "--output_dir",
            str(tmp_path / "run"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = tmp_path / "run" / "final_model"
    history = json.loads((tmp_path / "run" / "checkpoint-10" / "trainer_state.json").read_text())["log_history"]
    train_losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(train_losses) == 5 and train_losses[-1] < train_losses[0] - 1.0, train_losses
    assert any("eval_perplexity" in entry for entry in history)
    assert any("tokens_per_second" in entry and "packing_efficiency" in entry for entry in history)
    check = textwrap.dedent(f"""
        import moai_llm
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(final)!r})
        tokenizer = AutoTokenizer.from_pretrained({str(final)!r})
        assert type(model).__name__ == "MoaiForCausalLM", type(model)
        assert model.generation_config.eos_token_id == [2, 6], model.generation_config.eos_token_id
        prompt = tokenizer.apply_chat_template([{{"role": "user", "content": "hi"}}], add_generation_prompt=True,
                                               tokenize=False)
        assert prompt.endswith("<|im_start|>assistant\\n"), prompt
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        print(model.generate(ids, max_new_tokens=4, do_sample=False).shape)
    """)
    loaded = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "finetune"], "invalid choice: 'finetune'"),
        (["--mode", "sft"], "--mode sft needs --pretrained_model"),
        (["--train_file", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--loss_type", "focal", "--loss_params", '{"gamma": -1}'], "focal_gamma must be >= 0"),
        (["--model_config", "nope.json"], "--model_config nope.json: file not found"),
        (["--config", "nope.yaml"], "--config nope.yaml: file not found"),
        (["--config"], "argument --config: expected one argument"),
        (["--wsd_decay_ratio", "1.5"], "--wsd_decay_ratio must be in [0, 1]"),
        (["--resume_from_checkpoint", "no/such/dir"], "--resume_from_checkpoint no/such/dir: directory not found"),
        (["--max_steps", "1", "--max_steps=2"], "--max_steps is given twice (it takes one value)"),
        (["--max_step", "1", "--max_steps", "2"], "--max_steps is given twice"),  # argparse's abbreviation
        (["--batch_size", "2", "--per_device_train_batch_size", "4"], "--batch_size and --per_device_train_batch_size"),
        (["--packing", "true", "--no_packing"], "--packing and --no_packing set the same argument (packing)"),
        (["--accelerator_config", "nope.json"], "No such file or directory: 'nope.json'"),
        (["--pretrained_model", "./no/such/model"], "--pretrained_model ./no/such/model: directory not found"),
        (["--model_config", "BAD_CONFIG"], "BAD_CONFIG: num_key_value_heads must be a positive integer"),
        pytest.param(
            ["--use_qlora", "true", "--pretrained_model", "x"],
            "--use_qlora needs bitsandbytes",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed"
            ),
        ),
    ],
)
def test_bad_input_is_one_line(args, message, capsys, tmp_path):
    from train import main

    bad_config = tmp_path / "bad_config.json"
    bad_config.write_text(json.dumps({"model_type": "moai", "num_key_value_heads": 0}))
    args, message = [str(bad_config) if a == "BAD_CONFIG" else a for a in args], message.replace("BAD_CONFIG", "")
    assert main([*args, "--output_dir", str(tmp_path), "--use_cpu", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_yaml_unknown_key_and_cli_override(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule:\n  warmup_stepz: 10\n")
    with pytest.raises(UsageError, match=r"bad.yaml: unknown key 'warmup_stepz' in section 'schedule'"):
        parse_args(["--config", str(bad)])
    good = tmp_path / "good.yaml"
    good.write_text("data:\n  max_seq_length: 96\ntraining:\n  batch_size: 3\n  learning_rate: 0.01\n")
    _, data_args, training_args = parse_args(["--config", str(good), "--learning_rate", "0.02"])
    assert data_args.max_seq_length == 96 and training_args.per_device_train_batch_size == 3
    assert training_args.learning_rate == 0.02


@pytest.mark.integration
def test_process_exit_code_without_traceback():
    result = run_cli(["--mode", "sft"], timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "train.py: error: --mode sft needs --pretrained_model (a pretrained model directory or hub id)"
    )


@pytest.mark.parametrize("error", [ValueError("a bug"), RuntimeError("a bug"), FileNotFoundError("a bug")])
def test_a_bug_is_not_a_usage_error(error, monkeypatch, tmp_path):
    """Only UsageError is "one line, exit 2": any other exception inside training keeps its traceback."""
    import train
    from moai_llm.training import stages

    def broken(*_args):
        raise error

    monkeypatch.setattr(stages, "run_all", broken)
    with pytest.raises(type(error), match="a bug"):
        train.main(["--output_dir", str(tmp_path), "--use_cpu", "true"])


def test_a_bug_while_resolving_arguments_is_not_a_usage_error(monkeypatch, tmp_path):
    from moai_llm.training import resolve

    def broken(*_args):
        raise TypeError("a bug")

    monkeypatch.setattr(resolve, "resolve_training_values", broken)
    with pytest.raises(TypeError, match="a bug"):
        parse_args(["--output_dir", str(tmp_path), "--use_cpu", "true"])


def test_transformers_checks_on_the_arguments_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="--save_on_each_node works with DDP only"):
        parse_args(["--output_dir", str(tmp_path), "--use_cpu", "true", "--save_on_each_node", "--fsdp", "full_shard"])
    with pytest.raises(UsageError) as error:  # TrainingArguments' own check
        parse_args(["--output_dir", str(tmp_path), "--use_cpu", "true", "--fp16", "true", "--bf16", "true"])
    assert "\n" not in str(error.value)


@pytest.mark.integration  # whole train.py runs
def test_packing_false_trains_one_padded_document_per_row(tmp_path, monkeypatch):
    """docs/data.md: `--packing false` gives one document per row, padded to the longest row of the batch."""
    from moai_llm.data import PaddingCollator

    batches, collate = [], PaddingCollator.__call__

    def recorded(self, rows):
        batches.append((rows, collate(self, rows)))
        return batches[-1][1]

    monkeypatch.setattr(PaddingCollator, "__call__", recorded)
    flags = ["--max_steps", "3", "--packing", "false", "--batch_size", "4", "--max_seq_length", "512"]
    run_inprocess(fast_args(tmp_path / "run", write_tiny_config(tmp_path), *flags))
    assert len(batches) >= 3 and (tmp_path / "run" / "final_model" / "model.safetensors").is_file()
    padded = 0
    for rows, batch in batches:
        lengths = [len(row["input_ids"]) for row in rows]
        assert all(list(row.get("seq_lengths", [n])) == [n] for row, n in zip(rows, lengths))  # one document each
        mask, pad = batch["attention_mask"], batch["attention_mask"] == 0
        assert mask.shape == (len(rows), max(lengths)) and mask.sum(1).tolist() == lengths
        assert all(mask[i, :n].all() for i, n in enumerate(lengths))  # right padding
        assert (batch["labels"][pad] == -100).all() and "position_ids" not in batch
        padded += int(pad.any())
    assert padded  # rows of different lengths met in a batch
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    logged = [e["packing_efficiency"] for e in history if "loss" in e]
    steps = [batch["attention_mask"] for _, batch in batches[:3]]  # the 3 training steps' batches, in order
    assert logged == [round(mask.float().mean().item(), 4) for mask in steps]  # real tokens / positions


@pytest.mark.integration  # train.py runs
def test_prepare_only_prepares_what_training_then_reads(tmp_path, capsys):
    """docs/data.md: `--prepare_only` tokenizes and plans exactly what the same flags train on, prints the sizes
    and exits without a model; the training run then reuses the stores and the plan as they are."""
    from moai_llm.loading import load_tokenizer
    from moai_llm.training.data_setup import build_datasets
    from train import main

    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    flags = fast_args(run_dir, write_tiny_config(tmp_path), "--max_steps", "2", "--data_cache_dir", str(cache))
    assert main([*flags, "--prepare_only", "true"]) == 0
    out = capsys.readouterr().out
    assert not (run_dir / "final_model").exists() and not list(run_dir.glob("checkpoint-*"))
    documents, tokens = map(
        lambda s: int(s.replace(",", "")), re.search(r"store .*: ([\d,]+) documents, ([\d,]+) tokens", out).groups()
    )
    planned = int(re.search(r"plan .*: train ([\d,]+) rows of 64", out).group(1).replace(",", ""))
    prepared = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert prepared

    model_args, data_args, training_args = parse_args(flags)
    train, _, _ = build_datasets(
        data_args, load_tokenizer(model_args.tokenizer_path, model_args.pretrained_model, training=True), training_args
    )
    assert len(train) == planned and documents > 0 and tokens > planned  # rows of at most 64 tokens
    run_inprocess(flags)
    assert (run_dir / "final_model" / "model.safetensors").is_file()
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == prepared  # reused, not rebuilt


@pytest.mark.integration  # two torchrun ranks
def test_prepare_only_on_two_ranks_prints_its_summary_once(tmp_path):
    """Under torchrun every rank takes part in `--prepare_only`; only the main process prints the summary."""
    from .distributed_helpers import torchrun

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i} " + "word " * i}) + "\n" for i in range(60)))
    flags = ["--use_cpu", "true", "--ddp_backend", "gloo", "--output_dir", str(tmp_path / "run")]
    flags += ["--train_file", str(corpus), "--max_seq_length", "64", "--disable_tqdm", "true", "--prepare_only", "true"]
    result = torchrun("import sys\nfrom train import main\nsys.exit(main(sys.argv[1:]))\n", flags, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    heads = [
        line.split(" ")[0]
        for line in result.stdout.splitlines()
        if line.startswith(("store ", "plan ", "prepared in "))
    ]
    assert heads == ["store", "plan", "plan", "prepared"], result.stdout[-3000:]  # the eval and the train plan
