"""The report train.py leaves in output_dir at the end of a run: trainer_state.json, run_arguments.json,
plots/training.png, training_report.md and final_model's card. Called on rank 0 only; an error here is a warning,
never a failed run. eval.py draws its figures through `plotting` and `draw_training` too."""

import dataclasses
import importlib
import json
import logging
from pathlib import Path

from .history import RUN_ARGUMENTS, RunRecord, load_run, training_panels, training_summary
from .report import render_training_report

logger = logging.getLogger(__name__)


def write_training_report(trainer, model_args=None, data_args=None) -> Path | None:
    """Write the run's report files; returns training_report.md's path, or None when it could not be written."""
    try:
        return _write(trainer, model_args, data_args)
    except Exception as error:  # noqa: BLE001  (the model is saved: a plotting or disk error must not fail the run)
        logger.warning("training report not written: %s: %s", type(error).__name__, error)
        return None


def _write(trainer, model_args, data_args) -> Path:
    output_dir = Path(trainer.args.output_dir)
    trainer.save_state()  # trainer_state.json in output_dir (the stock Trainer writes it only into checkpoints)
    arguments = {
        "training": json.loads(trainer.args.to_json_string()),
        "data": dataclasses.asdict(data_args) if data_args is not None else {},
        "model": dataclasses.asdict(model_args) if model_args is not None else {},
        "world_size": trainer.args.world_size,
    }
    (output_dir / RUN_ARGUMENTS).write_text(json.dumps(arguments, indent=2, default=str), encoding="utf-8")
    record = load_run(output_dir / "final_model")  # the run as eval.py will read it back
    summary = training_summary(record)
    report = output_dir / "training_report.md"
    report.write_text(render_training_report(summary, draw_training(record, output_dir)), encoding="utf-8")
    logger.info("training report written to %s", report)
    final_dir = output_dir / "final_model"
    if (final_dir / "config.json").is_file():
        from .model_card import detect_languages, model_card, write_model_card

        facts = model_card(trainer.accelerator.unwrap_model(trainer.model), str(final_dir))
        write_model_card(final_dir, arguments, facts, summary, detect_languages(sample_texts(trainer)))
    return report


def plotting():
    """The plots module, or None with one warning when matplotlib (the `eval` extra) is missing."""
    try:
        plots = importlib.import_module(".plots", __package__)  # through sys.modules, not a cached attribute
    except ImportError as error:
        logger.warning("plots skipped: %s (pip install -e '.[eval]')", error)
        return None
    return plots


def draw_training(record: RunRecord, output_dir: Path) -> str | None:
    """plots/training.png (relative to output_dir) when the history has a point to draw, else None; matplotlib and
    the plotting module are imported only then."""
    if not training_panels(record.log_history, record.arguments)[0] or not (plots := plotting()):
        return None
    path, title = output_dir / "plots" / "training.png", f"Training history: {record.directory}"
    return "plots/training.png" if plots.plot_training(record.log_history, record.arguments, path, title) else None


def sample_texts(trainer, rows: int = 8) -> list[str]:
    """A few training rows decoded, for the model card's language; none when the data cannot be indexed."""
    dataset = trainer.train_dataset
    try:
        picked = [dataset[i]["input_ids"] for i in range(min(rows, len(dataset)))]
    except (TypeError, KeyError, IndexError, NotImplementedError):  # a streamed dataset has no len / indexing
        return []
    return [trainer.processing_class.decode(ids, skip_special_tokens=True) for ids in picked]
