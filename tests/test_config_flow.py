"""train.py's configuration flows one way: flags -> resolve (every default, once) -> the objects that build the run.

- The data options are declared once (`DataOptions`): each is a flag and reaches the `DataSpec` the readers take.
- Defaults that depend on other arguments live in resolve.py only; `MoaiTrainingArguments` constructed directly
  keeps transformers' own defaults.
- Evaluation is switched off in one place, when the run finds nothing held out (`run.evaluation_switched`).
"""

import dataclasses
import logging
import typing

import pytest
from transformers import TrainingArguments

from moai_llm.data.pipeline import DataOptions, DataSpec
from moai_llm.training.arguments import DataArguments, MoaiTrainingArguments
from moai_llm.training.cli import build_parser, parse_args
from moai_llm.training.data_setup import data_spec
from moai_llm.training.run import evaluation_switched
from moai_llm.training.stages import flag_aliases


def other_value(option: dataclasses.Field):
    """A value of the option's type other than its default."""
    kind, default = option.type, option.default
    if typing.get_origin(kind) is typing.Literal:
        return next(choice for choice in typing.get_args(kind) if choice != default)
    if kind is bool:
        return not default
    if kind is int:
        return default + 3
    if kind is float:
        return 0.25 if default != 0.25 else 0.5
    return "alpaca" if option.name == "sft_format" else f"other_{option.name}"


def test_every_data_option_is_a_flag_that_reaches_the_data_spec(tmp_path):
    """Nothing is copied by hand: an option added to DataOptions is a train.py flag (same default) and arrives in
    the DataSpec; the old field-by-field copy would drop a new one without a word."""
    options = dataclasses.fields(DataOptions)
    assert {o.name for o in options} <= {f.name for f in dataclasses.fields(DataArguments)}
    assert {o.name for o in options} <= {f.name for f in dataclasses.fields(DataSpec)}
    flags, expected = ["--output_dir", str(tmp_path)], {}
    for option in options:
        expected[option.name] = other_value(option)
        flags += [f"--{option.name}", str(expected[option.name]).lower()]
    _, data_args, training_args = parse_args(flags)
    spec = data_spec(data_args, training_args)
    assert {name: getattr(spec, name) for name in expected} == expected
    defaults = data_spec(parse_args(["--output_dir", str(tmp_path)])[1])
    assert all(getattr(defaults, o.name) == o.default for o in options)


def test_defaults_come_from_resolve_only(tmp_path):
    """A directly built MoaiTrainingArguments has transformers' default learning rate and output_dir; train.py's
    arguments get MOAI's (by mode, LoRA, model) from resolve."""
    direct = MoaiTrainingArguments(use_cpu=True, mode="sft")
    stock = TrainingArguments(use_cpu=True)
    assert (direct.learning_rate, direct.output_dir) == (stock.learning_rate, stock.output_dir)
    model_args, _, args = parse_args([])
    assert (args.output_dir, args.learning_rate) == ("outputs/pretrain-tiny", 1e-3)
    assert model_args.model_config.endswith("model_config_tiny.json")
    _, _, lora = parse_args(["--use_lora", "true", "--mode", "sft", "--pretrained_model", str(tmp_path / "m")])
    assert (lora.output_dir, lora.learning_rate) == ("outputs/sft-m", 2e-4)


def test_evaluation_is_switched_off_where_nothing_is_held_out(tmp_path, caplog):
    _, data_args, args = parse_args(["--eval_fraction", "0", "--output_dir", str(tmp_path)])
    assert args.eval_strategy == "steps"  # resolve leaves it: only the run knows whether anything was held out
    with caplog.at_level(logging.INFO, logger="moai_llm.training.run"):
        off = evaluation_switched(args, data_args, None)
    assert off.eval_strategy == "no" and off is not args and "--eval_fraction 0" in caplog.text
    _, held, args = parse_args(["--output_dir", str(tmp_path)])
    with caplog.at_level(logging.WARNING, logger="moai_llm.training.run"):
        assert evaluation_switched(args, held, None).eval_strategy == "no"
    assert "no documents were held out" in caplog.text
    assert evaluation_switched(args, held, ["a row"]) is args


def test_stage_keys_take_the_parsers_aliases():
    aliases = flag_aliases(build_parser())
    assert aliases["batch_size"] == "per_device_train_batch_size" and aliases["num_epochs"] == "num_train_epochs"


@pytest.mark.parametrize("flag", ["--packing", "--eval_fraction", "--text_column"])
def test_a_data_option_given_twice_is_refused(flag, tmp_path):
    from moai_llm.errors import UsageError

    value = "0.1" if flag == "--eval_fraction" else "true" if flag == "--packing" else "body"
    with pytest.raises(UsageError, match=f"{flag} is given twice"):
        parse_args([flag, value, flag, value, "--output_dir", str(tmp_path)])
