"""Stages from a YAML: each starts from the previous final_model; a finished stage is skipped on re-run."""

import json

import pytest

from moai_llm.loading import FINAL_MARKER
from moai_llm.training.cli import UsageError

from .conftest import REPO
from .train_helpers import fast_args, recording_steps, run_inprocess, write_tiny_config

SFT_FILE = REPO / "moai_llm" / "assets" / "sample" / "sft_messages.jsonl"


@pytest.mark.integration  # train.py's whole job, twice
def test_pretrain_then_sft_stages(tmp_path, caplog):
    config = write_tiny_config(tmp_path)
    stages = tmp_path / "stages.yaml"
    stages.write_text(
        "stages:\n"
        "  - {name: base, mode: pretrain, max_steps: 2, learning_rate: 0.002}\n"
        f"  - {{name: chat, mode: sft, max_steps: 2, learning_rate: 0.0005, train_file: [{SFT_FILE}]}}\n"
    )
    args = fast_args(tmp_path / "out", config, "--config", str(stages))
    with caplog.at_level("INFO"):
        results = run_inprocess(args)
    assert f"stage chat: mode sft from {tmp_path / 'out' / 'base' / 'final_model'}" in caplog.text
    caplog.clear()
    assert [r.final_model for r in results] == [
        str(tmp_path / "out" / name / "final_model") for name in ("base", "chat")
    ]
    chat_args = json.loads((tmp_path / "out" / "chat" / "checkpoint-2" / "trainer_state.json").read_text())
    assert chat_args["global_step"] == 2
    base_lr = json.loads((tmp_path / "out" / "base" / "all_results.json").read_text())
    assert "eval_loss" in base_lr
    with caplog.at_level("INFO"):
        again = run_inprocess(args)
    assert "stage base" in caplog.text and "skipping" in caplog.text
    assert [r.final_model for r in again] == [r.final_model for r in results]


@pytest.mark.integration  # train.py's whole job, twice
def test_stage_killed_during_its_final_save_runs_again(tmp_path, caplog):
    """save_pretrained writes config.json before the weights: a kill there must not count the stage as done."""
    config = write_tiny_config(tmp_path)
    stages = tmp_path / "stages.yaml"
    stages.write_text("stages:\n  - {name: base, mode: pretrain, max_steps: 2}\n")
    args = fast_args(tmp_path / "out", config, "--config", str(stages), "--eval_fraction", "4")
    run_inprocess(args)
    final = tmp_path / "out" / "base" / "final_model"
    assert json.loads((final / FINAL_MARKER).read_text())["global_step"] == 2
    weights = (final / "model.safetensors").read_bytes()
    for name in (FINAL_MARKER, "model.safetensors", "tokenizer.json"):  # what a kill after config.json leaves
        (final / name).unlink()
    with caplog.at_level("INFO"), recording_steps() as runs:
        run_inprocess(args)
    assert "skipping" not in caplog.text and "stage base: mode pretrain" in caplog.text
    assert runs[0].steps == []  # resumed from checkpoint-2 at max_steps: no step trained again
    assert (final / FINAL_MARKER).is_file() and (final / "tokenizer.json").is_file()
    assert (final / "model.safetensors").read_bytes() == weights  # resumed at its last step, no step more


def test_stage_with_unknown_key_is_an_error(tmp_path):
    stages = tmp_path / "stages.yaml"
    stages.write_text("stages:\n  - {name: base, learning_rat: 0.1}\n")
    with pytest.raises(UsageError, match=r"stages\[0\] \(base\): unknown or not allowed key 'learning_rat'"):
        run_inprocess(["--config", str(stages), "--output_dir", str(tmp_path / "o")])


def test_stage_with_a_bad_mixture_names_the_file_and_stage(tmp_path):
    """Stage mixtures are parsed when the YAML is read: a bad one fails before any stage trains."""
    stages = tmp_path / "stages.yaml"
    stages.write_text(
        "stages:\n  - {name: base, max_steps: 1}\n  - {name: sft, mixture: [{name: a.jsonl, ratio: -1}]}\n"
    )
    with pytest.raises(UsageError, match=r"stages\.yaml: stages\[1\] \(sft\): .*ratio must be > 0"):
        run_inprocess(["--config", str(stages), "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_stage_keys_take_the_flags_aliases():
    """A stage may say batch_size / num_epochs like the command line: the aliases come from the parser's fields."""
    from moai_llm.training.cli import build_parser
    from moai_llm.training.stages import flag_aliases, parse_stages

    parser = build_parser()
    assert flag_aliases(parser) == {"batch_size": "per_device_train_batch_size", "num_epochs": "num_train_epochs"}
    (stage,) = parse_stages([{"name": "a", "batch_size": 3, "num_epochs": 1}], parser, "s.yaml")
    assert stage.training == {"per_device_train_batch_size": 3, "num_train_epochs": 1}
