"""evaluate.py's work: check every input, load the model once, run benchmarks, perplexity and samples, write
results.json and report.md (with the training plots when the model's run directory is found)."""

import datetime
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..chat.generation import SamplingParams
from ..chat.loading import ChatLoadError, load_for_chat
from .benchmarks import check_tasks, run_benchmarks
from .history import load_run, training_summary
from .model_card import model_card
from .perplexity import evaluate_perplexity, read_documents
from .report import render_comparison, render_report, run_label
from .samples import DEFAULT_PROMPTS, generate_samples, read_prompts
from .suites import EvalUsageError, TaskSpec

logger = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    model_path: str
    tasks: list[TaskSpec] = field(default_factory=list)
    include_path: tuple[str, ...] = ()
    eval_files: list[str] = field(default_factory=list)
    text_column: str = "text"
    prompts_file: str | None = None
    samples: bool = True
    max_new_tokens: int = 128
    temperature: float = 0.0
    batch_size: int = 8
    max_length: int | None = None  # perplexity rows; default: the model's context, at most 2048
    device: str | None = None
    output_dir: str | None = None  # default: <model_path>/eval
    tokenizer_path: str | None = None
    base_model: str | None = None


def load_inputs(options: EvalOptions) -> tuple[dict[str, list[str]], list[str]]:
    """Eval documents and prompts, read and checked before the model is loaded (bad input fails in seconds)."""
    if not Path(options.model_path).is_dir():
        raise EvalUsageError(f"--model_path {options.model_path}: no such directory")
    if len(set(options.eval_files)) < len(options.eval_files):
        raise EvalUsageError("--eval_file: the same file is given twice")
    documents = {spec: read_documents(spec, options.text_column) for spec in options.eval_files}
    prompts = []
    if options.samples:
        prompts = read_prompts(options.prompts_file) if options.prompts_file else list(DEFAULT_PROMPTS)
    if options.tasks:
        check_tasks(options.tasks, options.include_path)
    return documents, prompts


def load_model(options: EvalOptions):
    """(model, tokenizer) through chat's loader (final_model, checkpoint or LoRA adapter); adapters are merged."""
    try:
        model, tokenizer = load_for_chat(options.model_path, options.tokenizer_path, options.base_model, options.device)
    except ChatLoadError as error:
        raise EvalUsageError(str(error)) from None
    if hasattr(model, "merge_and_unload") and not getattr(model, "is_loaded_in_4bit", False):
        model = model.merge_and_unload()  # base + B·A·alpha/r: the adapter's outputs, without its per-layer detour
    if getattr(model.config, "num_experts", 0):
        model.config.output_router_logits = False  # no router losses while scoring or generating
    return model, tokenizer


def evaluate_model(options: EvalOptions) -> dict:
    documents, prompts = load_inputs(options)
    output_dir = Path(options.output_dir or Path(options.model_path) / "eval")
    model, tokenizer = load_model(options)
    results = {
        "model": options.model_path,
        "tasks": {},
        "perplexity": {},
        "samples": [],
        "model_card": model_card(model, options.model_path),
        "settings": {
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "batch_size": options.batch_size,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
        },
    }
    if options.tasks:
        import lm_eval

        bench = run_benchmarks(model, tokenizer, options.tasks, options.include_path, options.batch_size)
        results["settings"]["lm_eval"] = lm_eval.__version__
        results.update(
            tasks=bench.tasks,
            summary_tasks=bench.summary,
            task_details=bench.details,
            baselines=bench.baselines,
            failed_tasks=bench.failed,
        )
    if documents:
        context = getattr(model.config, "max_position_embeddings", 2048)
        max_length = options.max_length or min(context, 2048)
        results["settings"]["max_length"] = max_length
        for spec, docs in documents.items():
            result = evaluate_perplexity(model, tokenizer, docs, max_length, options.batch_size, name=spec)
            results["perplexity"][spec] = result.to_dict()
    if prompts:
        params = SamplingParams(temperature=options.temperature, max_new_tokens=options.max_new_tokens, seed=0)
        results["samples"] = generate_samples(model, tokenizer, prompts, params)
    write_outputs(results, output_dir)
    return results


def training_plot(model_path: str, output_dir: Path) -> tuple[dict | None, str | None]:
    """(training summary, plot path relative to output_dir) of the model's run, when its files are found."""
    record = load_run(model_path)
    if record is None:
        return None, None
    plot = None
    if record.log_history:
        from .plots import plot_training

        written = plot_training(
            record.log_history,
            record.arguments,
            output_dir / "plots" / "training.png",
            title=f"Training history: {record.directory}",
        )
        plot = "plots/training.png" if written else None
    return training_summary(record), plot


def write_outputs(results: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    results["training"], plot = training_plot(results["model"], output_dir)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    (output_dir / "report.md").write_text(render_report(results, plot), encoding="utf-8")
    logger.info("results in %s (results.json, report.md)", output_dir)


def find_results(directory: str) -> Path:
    for candidate in (Path(directory) / "results.json", Path(directory) / "eval" / "results.json"):
        if candidate.is_file():
            return candidate
    raise EvalUsageError(f"--compare {directory}: no results.json there or in {directory}/eval (run evaluate.py first)")


def compare(directories: list[str], output_dir: str) -> Path:
    """One report with several evaluated models side by side (e.g. base vs SFT); returns the report's path."""
    if len(directories) < 2:
        raise EvalUsageError("--compare needs at least two directories")
    runs, taken, histories = {}, set(), {}
    for directory in directories:
        path = find_results(directory)
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise EvalUsageError(f"--compare {path}: not valid JSON ({error})") from None
        label = run_label(results.get("model", directory), taken)
        runs[label] = results
        record = load_run(results.get("model", directory))
        if record and record.log_history:
            histories[label] = (record.log_history, record.arguments)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = None
    if histories:
        from .plots import plot_loss_comparison

        if plot_loss_comparison(histories, out / "plots" / "loss_comparison.png"):
            plot = "plots/loss_comparison.png"
    report = out / "report.md"
    report.write_text(render_comparison(runs, plot), encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps(runs, indent=2, ensure_ascii=False), encoding="utf-8")
    return report
