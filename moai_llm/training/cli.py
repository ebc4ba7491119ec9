"""Command-line parsing for train.py: HfArgumentParser over the three dataclasses, YAML defaults under the CLI."""

import argparse
import dataclasses
import os
import sys

import yaml
from transformers import HfArgumentParser

from ..data.mixing import parse_mixture
from ..errors import UsageError
from ..flags import dest_names, refuse_repeated_flags
from ..losses import objective_from_spec
from .arguments import DataArguments, MoaiTrainingArguments, ModelArguments
from .data_setup import command_line_sources
from .resolve import resolve

# YAML sections only group keys for readers; every key inside them is a flag name.
YAML_SECTIONS = ("model", "data", "loss", "schedule", "packing", "training")
YAML_ONLY = ("mixture", "stages")  # structured values, parsed and validated when the YAML is read


class _OneLine(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line and no traceback
        raise UsageError(message)


class _Parser(_OneLine, HfArgumentParser):
    pass


def _yaml_only(name: str):
    def refuse(_value):
        raise argparse.ArgumentTypeError(
            f"{name} is given in a YAML --config (see configs/training_config.yaml), not on the command line"
        )

    return refuse


def build_parser() -> _Parser:
    parser = _Parser((ModelArguments, DataArguments, MoaiTrainingArguments), description="Pretrain or fine-tune MOAI.")
    for action in parser._actions:  # lists of mappings: HfArgumentParser would take them as strings
        if action.dest in YAML_ONLY:
            action.type, action.nargs = _yaml_only(action.dest), None
    return parser


def old_loss_section(path: str, section: dict) -> dict:
    """The old tool's `loss: {type: ..., params: {...}}` as our flags; a section of flag names passes through."""
    old = {"type", "params"}
    if not old & set(section):
        return section
    if set(section) - old:
        raise UsageError(
            f"--config {path}: section 'loss' mixes the old keys type/params with "
            f"{sorted(set(section) - old)}; use either type/params or loss_type/loss_params"
        )
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
    dests = dest_names(parser)
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
                raise UsageError(
                    f"--config {path}: unknown key '{name}'" + (f" in section '{key}'" if key != name else "")
                )
            flat[dests[name]] = item
    if flat.get("mixture") is not None:
        try:
            flat["mixture"] = parse_mixture(flat["mixture"])
        except UsageError as error:
            raise UsageError(f"--config {path}: {error}") from None
    if flat.get("stages") is not None:
        from .stages import parse_stages

        flat["stages"] = parse_stages(flat["stages"], parser, path)
    return flat


def parse_args(argv: list[str] | None = None):
    """(model_args, data_args, training_args) from YAML (--config) then the command line on top, every default
    resolved (resolve.py); with stages, `training_args.stages` holds each stage's own resolved arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    refuse_repeated_flags(argv, parser)
    pre = _OneLine(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    yaml_values = load_yaml_config(known.config, parser) if known.config else {}
    parser.set_defaults(**yaml_values)
    namespace = command_line_sources(yaml_values, vars(parser.parse_args(argv)), known.config)
    groups = [{f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.init} for cls in parser.dataclass_types]
    model_args, data_args = ModelArguments(**groups[0]), DataArguments(**groups[1])
    if groups[2].get("stages"):
        from .stages import resolve_stages

        return resolve_stages(model_args, data_args, groups[2])
    return resolve(model_args, data_args, groups[2])
