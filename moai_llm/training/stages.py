"""Stages (pretrain -> mid-training -> sft): each a set of flag overrides, starting from the previous final_model.

Every stage's arguments are resolved when the YAML is read (`resolve_stages`), so a typo in the last stage fails
before the first trains. Re-running the command continues where it stopped: a stage whose final_model has its
FINAL_MARKER is skipped (rank 0 decides, for every rank), one in progress resumes from its latest checkpoint.
"""

import dataclasses
import logging
import os

from ..data.mixing import parse_mixture
from ..errors import UsageError
from ..loading import FINAL_MARKER
from .arguments import Stage
from .data_setup import stage_sources
from .distributed import from_rank_zero, require_on_every_rank
from .resolve import default_output_dir, resolve
from .run import RunResult, run_training

logger = logging.getLogger(__name__)


def flag_aliases(parser) -> dict[str, str]:
    """{alias: field} from the dataclass fields' `aliases` metadata (`batch_size` -> `per_device_train_batch_size`),
    the one place the parser's aliases are declared."""
    return {
        alias.lstrip("-"): field.name
        for dataclass_type in parser.dataclass_types
        for field in dataclasses.fields(dataclass_type)
        for alias in field.metadata.get("aliases", ())
    }


@dataclasses.dataclass(frozen=True)
class StageFlags:
    """One stage as the YAML gives it: its name and its overrides per argument group (model, data, training)."""

    name: str
    model: dict
    data: dict
    training: dict


def parse_stages(entries, parser, path: str) -> list[StageFlags]:
    """The YAML `stages:` list, each key checked against the flags (one-line errors naming the stage and key)."""
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"--config {path}: stages must be a non-empty list of mappings")
    owners, aliases = {}, flag_aliases(parser)
    for dataclass_type, group in zip(parser.dataclass_types, ("model", "data", "training")):
        owners.update({field.name: group for field in dataclasses.fields(dataclass_type)})
    stages = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UsageError(f"stages[{index}]: expected a mapping of flags, got {type(entry).__name__}")
        entry = dict(entry)
        name = str(entry.pop("name", f"stage{index + 1}"))
        overrides = {"model": {}, "data": {}, "training": {}}
        for flag, value in entry.items():
            flag = aliases.get(flag, flag)
            if flag not in owners or flag in ("stages", "config", "output_dir"):
                raise UsageError(f"stages[{index}] ({name}): unknown or not allowed key '{flag}'")
            if flag == "mixture":
                try:
                    value = parse_mixture(value)
                except UsageError as error:
                    raise UsageError(f"--config {path}: stages[{index}] ({name}): {error}") from None
            overrides[owners[flag]][flag] = value
        stages.append(StageFlags(name, **overrides))
    return stages


def resolve_stages(model_args, data_args, values: dict):
    """(model_args, data_args, training_args) of the whole run, with `training_args.stages` as resolved Stages:
    each stage's flags on top of the run's, output in <output_dir>/<name>, starting from the previous stage's
    final_model, every default resolved for that stage (its mode's learning rate, say)."""
    values = {**values, "output_dir": values.get("output_dir") or default_output_dir(model_args, values)}
    resolved, previous = [], model_args.pretrained_model
    for stage in values["stages"]:
        stage_model = dataclasses.replace(model_args, **stage.model)
        if previous:
            stage_model = dataclasses.replace(stage_model, pretrained_model=previous)
        stage_values = {
            **values,
            "stages": None,
            "output_dir": os.path.join(values["output_dir"], stage.name),
            "resume_from_checkpoint": values.get("resume_from_checkpoint") or "auto",
            **stage.training,
        }
        stage_data = dataclasses.replace(data_args, **stage_sources(stage.data, stage.name))
        stage_args = resolve(stage_model, stage_data, stage_values)
        resolved.append(Stage(stage.name, *stage_args))
        previous = os.path.join(stage_args[2].output_dir, "final_model")
    return resolve(model_args, data_args, {**values, "stages": resolved})


def run_all(model_args, data_args, training_args) -> list[RunResult]:
    """Run the single job, or every stage in order."""
    if not training_args.stages:
        return [run_training(model_args, data_args, training_args)]
    results = []
    for index, stage in enumerate(training_args.stages):
        final_dir = os.path.join(stage.training_args.output_dir, "final_model")
        if from_rank_zero(os.path.isfile(os.path.join(final_dir, FINAL_MARKER))):  # every rank skips, or none
            logger.info("stage %s: %s is complete, skipping", stage.name, final_dir)
            results.append(RunResult(stage.training_args.output_dir, final_dir, {}))
            continue
        previous = stage.model_args.pretrained_model
        if index:
            require_on_every_rank(
                os.path.isfile(os.path.join(previous, FINAL_MARKER)),
                previous,
                f"stage {stage.name}: the previous stage's final_model",
            )
        logger.info("stage %s: mode %s from %s", stage.name, stage.training_args.mode, previous or "scratch")
        results.append(run_training(stage.model_args, stage.data_args, stage.training_args))
        if results[-1].final_model is None:  # stopped by a signal: later stages wait for the resume
            break
    return results
