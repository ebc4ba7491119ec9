"""Stages (pretrain -> mid-training -> sft): each a set of flag overrides, starting from the previous final_model.

A stage whose final_model is complete (its FINAL_MARKER, written after the final save) is skipped, and a stage in
progress resumes from its latest complete checkpoint, so re-running the same command after an interruption
continues where it stopped. Rank 0 decides whether a stage is done, so every rank skips or runs it together.
"""

import copy
import dataclasses
import logging
import os

from .cli import UsageError, build_parser
from .distributed import from_rank_zero, require_on_every_rank
from .run import FINAL_MARKER, RunResult, run_training

logger = logging.getLogger(__name__)


def _split_overrides(stage: dict, index: int, parser) -> tuple[str, dict[str, dict]]:
    """Stage name and its overrides per args object ("model", "data", "training"), validated against the flags."""
    if not isinstance(stage, dict):
        raise UsageError(f"stages[{index}]: expected a mapping of flags, got {type(stage).__name__}")
    stage = dict(stage)
    name = str(stage.pop("name", f"stage{index + 1}"))
    owners = {}
    for dataclass_type, key in zip(parser.dataclass_types, ("model", "data", "training")):
        for field in dataclasses.fields(dataclass_type):
            owners[field.name] = key
    aliases = {"batch_size": "per_device_train_batch_size", "num_epochs": "num_train_epochs"}
    overrides = {"model": {}, "data": {}, "training": {}}
    for flag, value in stage.items():
        flag = aliases.get(flag, flag)
        if flag not in owners or flag in ("stages", "config", "output_dir"):
            raise UsageError(f"stages[{index}] ({name}): unknown or not allowed key '{flag}'")
        overrides[owners[flag]][flag] = value
    return name, overrides


def run_all(model_args, data_args, training_args) -> list[RunResult]:
    """Run the single job, or every stage in order."""
    if not training_args.stages:
        return [run_training(model_args, data_args, training_args)]
    parser = build_parser()
    plans = [_split_overrides(stage, index, parser) for index, stage in enumerate(training_args.stages)]
    if training_args.default_output_dir:
        training_args.output_dir = os.path.join("outputs", "stages")
    results, previous = [], model_args.pretrained_model
    for name, overrides in plans:
        model_stage = dataclasses.replace(copy.deepcopy(model_args), **overrides["model"])
        data_stage = dataclasses.replace(copy.deepcopy(data_args), **overrides["data"])
        if previous:
            model_stage.pretrained_model = previous
        values = {f.name: getattr(training_args, f.name) for f in dataclasses.fields(training_args) if f.init}
        values.update(
            stages=None,
            output_dir=os.path.join(training_args.output_dir, name),
            resume_from_checkpoint=training_args.resume_from_checkpoint or "auto",
            **overrides["training"],
        )
        if "learning_rate" not in overrides["training"] and training_args.default_learning_rate:
            values["learning_rate"] = None
        training_stage = type(training_args)(**values)  # under torchrun this also joins the process group
        final_dir = os.path.join(training_stage.output_dir, "final_model")
        if from_rank_zero(os.path.isfile(os.path.join(final_dir, FINAL_MARKER))):  # every rank skips, or none
            logger.info("stage %s: %s is complete, skipping", name, final_dir)
            results.append(RunResult(training_stage.output_dir, final_dir, {}))
        else:
            if results:
                require_on_every_rank(os.path.isfile(os.path.join(previous, FINAL_MARKER)), previous,
                                      f"stage {name}: the previous stage's final_model")
            logger.info("stage %s: mode %s from %s", name, training_stage.mode, previous or "scratch")
            result = run_training(model_stage, data_stage, training_stage)
            results.append(result)
            if result.final_model is None:
                return results
        previous = final_dir
    return results
