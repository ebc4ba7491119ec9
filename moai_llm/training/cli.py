"""Command-line parsing for train.py: HfArgumentParser over the three dataclasses, YAML defaults under the CLI."""

import argparse
import os
import sys

import yaml
from transformers import HfArgumentParser

from ..losses import objective_from_spec
from .arguments import DataArguments, ModelArguments, MoaiTrainingArguments

# YAML sections only group keys for readers; every key inside them is a flag name.
YAML_SECTIONS = ("model", "data", "loss", "schedule", "packing", "training")


class UsageError(ValueError):
    """A user mistake: train.py prints the message on one line and exits 2."""


class _Parser(HfArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line and no traceback
        raise UsageError(message)


def build_parser() -> _Parser:
    return _Parser((ModelArguments, DataArguments, MoaiTrainingArguments), description="Pretrain or fine-tune MOAI.")


def _dest_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every accepted option spelling (without dashes) -> argparse dest, aliases included."""
    names = {}
    for action in parser._actions:
        for option in action.option_strings:
            names[option.lstrip("-")] = action.dest
    return names


def old_loss_section(path: str, section: dict) -> dict:
    """The old tool's `loss: {type: ..., params: {...}}` as our flags; a section of flag names passes through."""
    old = {"type", "params"}
    if not old & set(section):
        return section
    if set(section) - old:
        raise UsageError(f"--config {path}: section 'loss' mixes the old keys type/params with "
                         f"{sorted(set(section) - old)}; use either type/params or loss_type/loss_params")
    try:
        objective_from_spec(section)
    except ValueError as error:
        raise UsageError(f"--config {path}: section 'loss': {error}") from None
    return {"loss_type": section.get("type", "cross_entropy"), "loss_params": section.get("params")}


def load_yaml_config(path: str, parser: _Parser) -> dict:
    """Flatten the YAML sections into {dest: value}; an unknown key is an error naming the file and key."""
    if not os.path.isfile(path):
        raise UsageError(f"--config {path}: file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"--config {path}{where}: invalid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"--config {path}: expected a mapping of sections/keys, got {type(raw).__name__}")
    dests = _dest_names(parser)
    flat = {}
    for key, value in raw.items():
        if key in YAML_SECTIONS:
            if not isinstance(value, dict):
                raise UsageError(f"--config {path}: section '{key}' must be a mapping")
            items = (old_loss_section(path, value) if key == "loss" else value).items()
        else:
            items = [(key, value)]
        for name, item in items:
            if name not in dests:
                raise UsageError(f"--config {path}: unknown key '{name}'" + (f" in section '{key}'" if key != name else ""))
            flat[dests[name]] = item
    return flat


def _legacy_loss_section(section: dict, path: str):
    """The old tool's `loss: {type: ..., params: {...}}` as the flags loss_type / loss_params; else unchanged."""
    if "type" not in section and "params" not in section:
        return section.items()
    extra = sorted(set(section) - {"type", "params"})
    if extra or "type" not in section:
        raise UsageError(f"--config {path}: section 'loss' mixes the old form (type, params) with {extra or ['no type']}; "
                         "write either {type: ..., params: {...}} or the flags loss_type / loss_params")
    params = section.get("params") or {}
    if not isinstance(params, dict):
        raise UsageError(f"--config {path}: loss.params must be a mapping, got {type(params).__name__}")
    return [("loss_type", section["type"]), ("loss_params", params)]


def parse_args(argv: list[str] | None = None):
    """(model_args, data_args, training_args) from YAML (--config) then the command line on top."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_yaml_config(known.config, parser))
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    return model_args, data_args, training_args

