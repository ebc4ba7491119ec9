"""eval.py's work: check every input, load the model once, run benchmarks, perplexity and samples, write
results.json and report.md (with the training plots when the model's run directory is found)."""

import contextlib
import datetime
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..chat.generation import SamplingParams
from ..errors import UsageError
from ..loading import load_model as load_weights
from .benchmarks import LmEvalOptions, check_tasks, run_benchmarks
from .end_of_run import draw_training, plotting
from .history import _CHECKPOINT, load_run, token_axis, training_summary
from .model_card import model_card, update_model_card
from .perplexity import evaluate_perplexity, read_documents
from .provenance import provenance
from .report import number, render_comparison, render_report, run_label, table
from .samples import DEFAULT_PROMPTS, generate_samples, read_prompts, sample_settings, use_chat_template
from .suites import SUITES, TaskSpec, headline_score

logger = logging.getLogger(__name__)
FIGURES = {"benchmarks": "summary_tasks", "perplexity": "perplexity"}  # figure -> the results key it draws


@dataclass
class EvalOptions:
    model_path: str
    tasks: list[TaskSpec] = field(default_factory=list)
    include_path: tuple[str, ...] = ()
    eval_files: list[str] = field(default_factory=list)
    text_column: str = "text"
    prompts_file: str | None = None
    samples: bool = True
    sampling: SamplingParams = field(  # eval.py's defaults: greedy, 128 tokens
        default_factory=lambda: SamplingParams(
            temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=128, seed=0
        )
    )
    chat_template: str = "auto"  # samples: auto | on | off
    decoding: str = "dynamic"  # samples' KV cache: dynamic | static | compiled (chat.generation.decoding_kwargs)
    batch_size: int = 8
    lm_eval_options: LmEvalOptions = field(default_factory=LmEvalOptions)
    max_length: int | None = None  # perplexity rows; default: the model's context, at most 2048
    stride: int | None = None  # perplexity: sliding windows moving by this many tokens; None: disjoint windows
    precision: str = "auto"  # auto | bf16 | fp32
    device: str | None = None
    output_dir: str | None = None  # default: <model_path>/eval
    tokenizer_path: str | None = None
    base_model: str | None = None


def load_inputs(options: EvalOptions) -> tuple[dict[str, list[str]], list[str]]:
    """Eval documents and prompts, read and checked before the model is loaded (bad input fails in seconds)."""
    if not Path(options.model_path).is_dir():
        raise UsageError(f"--model_path {options.model_path}: no such directory")
    if len(set(options.eval_files)) < len(options.eval_files):
        raise UsageError("--eval_file: the same file is given twice")
    documents = {spec: read_documents(spec, options.text_column) for spec in options.eval_files}
    prompts = []
    if options.samples:
        prompts = read_prompts(options.prompts_file) if options.prompts_file else list(DEFAULT_PROMPTS)
    if options.tasks:
        check_tasks(options.tasks, options.include_path)
    return documents, prompts


def load_model(options: EvalOptions):
    """(model, tokenizer) through moai_llm.loading (final_model, checkpoint or LoRA adapter); adapters merged."""
    model, tokenizer = load_weights(options.model_path, options.tokenizer_path, options.base_model, options.device)
    if hasattr(model, "merge_and_unload") and not getattr(model, "is_loaded_in_4bit", False):
        model = model.merge_and_unload()  # base + B·A·alpha/r: the adapter's outputs, without its per-layer detour
    if getattr(model.config, "num_experts", 0):
        model.config.output_router_logits = False  # no router losses while scoring or generating
    return model, tokenizer


def precision_context(choice: str, model) -> tuple[contextlib.AbstractContextManager, str]:
    """(autocast context, label): --precision auto is bf16 autocast where train.py trains in it by default (a GPU
    with bf16, a CPU with AMX/AVX512-BF16), so evaluation runs at training's speed; fp32 otherwise."""
    from ..training.resolve import native_bf16

    device = model.device.type
    if model.dtype != torch.float32:
        return contextlib.nullcontext(), f"model dtype {str(model.dtype).removeprefix('torch.')}"
    if choice == "auto":
        choice = "bf16" if native_bf16(device) else "fp32"
    if choice == "fp32":
        return contextlib.nullcontext(), "fp32"
    return torch.autocast(device, dtype=torch.bfloat16), "bf16 autocast (fp32 weights, fp32 loss)"


def evaluate_model(options: EvalOptions) -> dict:
    documents, prompts = load_inputs(options)
    output_dir = Path(options.output_dir or Path(options.model_path) / "eval")
    model, tokenizer = load_model(options)
    autocast, precision = precision_context(options.precision, model)
    record = load_run(options.model_path)
    results = {
        "model": options.model_path,
        "tasks": {},
        "perplexity": {},
        "samples": [],
        "model_card": model_card(model, options.model_path),
        "settings": {
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "precision": precision,
            "batch_size": options.batch_size,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
        },
        "provenance": provenance(options.model_path, with_lm_eval=bool(options.tasks)),
    }
    with autocast:
        if options.tasks:
            run_tasks(model, tokenizer, options, results)
        if documents:
            max_length = options.max_length or min(getattr(model.config, "max_position_embeddings", 2048), 2048)
            results["settings"]["max_length"] = max_length
            if options.stride:
                results["settings"]["stride"] = min(options.stride, max_length - 1)
            for spec, docs in documents.items():
                result = evaluate_perplexity(
                    model, tokenizer, docs, max_length, options.batch_size, name=spec, stride=options.stride
                )
                results["perplexity"][spec] = {**result.to_dict(), "content_sha256": content_hash(docs)}
        if prompts:
            mode = (record.arguments.get("training") or {}).get("mode") if record else None
            chat, chat_label = use_chat_template(options.chat_template, mode, tokenizer)
            results["sample_settings"] = sample_settings(options.sampling, chat_label, options.decoding)
            results["samples"] = generate_samples(model, tokenizer, prompts, options.sampling, chat, options.decoding)
    write_outputs(results, output_dir)
    return results


def run_tasks(model, tokenizer, options: EvalOptions, results: dict) -> None:
    """lm-eval's benchmarks into `results`, with lm-eval's settings and per-document logs kept."""
    bench = run_benchmarks(
        model, tokenizer, options.tasks, options.include_path, options.batch_size, options.lm_eval_options
    )
    results["settings"]["lm_eval_options"] = {**asdict(options.lm_eval_options), **options.lm_eval_options.seeds()}
    results.update(
        tasks=bench.tasks,
        summary_tasks=bench.summary,
        task_details=bench.details,
        baselines=bench.baselines,
        failed_tasks=bench.failed,
        averages=suite_averages(bench, options.tasks),
        _logs=bench.logs,
    )


def suite_averages(bench, specs: list[TaskSpec]) -> dict[str, float]:
    """A leaderboard suite's single number: the mean of its tasks' headline metrics, when every task ran."""
    averages = {}
    asked = {spec.name for spec in specs}
    for name, suite in SUITES.items():
        tasks = [spec.name for spec in suite.tasks]
        if not suite.average or not set(tasks) <= asked:
            continue
        values = [headline_score(t, bench.tasks.get(t, {})) for t in tasks]
        if None not in values:
            averages[name] = sum(values) / len(values)
    return averages


def content_hash(documents: list[str]) -> str:
    """sha256 of the documents as scored: --compare keys perplexity rows by content, not by the path as typed."""
    return hashlib.sha256("".join(text + "\0" for text in documents).encode("utf-8")).hexdigest()


def training_plot(model_path: str, output_dir: Path) -> tuple[dict | None, str | None]:
    """(training summary, plot path relative to output_dir) of the model's run, when its files are found; the
    plots module is imported only when the history has a point to draw."""
    record = load_run(model_path)
    if record is None:
        return None, None
    return training_summary(record), draw_training(record, output_dir)


def write_outputs(results: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_task_logs(results.pop("_logs", {}), output_dir / "samples")
    results["training"], plot = training_plot(results["model"], output_dir)
    figures = result_figures({"": results}, output_dir)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    (output_dir / "report.md").write_text(render_report(results, plot, figures), encoding="utf-8")
    update_model_card(results["model"], results)  # the card train.py wrote gets the scores
    logger.info("results in %s (results.json, report.md)", output_dir)


def result_figures(runs: dict[str, dict], output_dir: Path) -> dict[str, str]:
    """plots/benchmarks.png and plots/perplexity.png for one or several runs, those with something to draw; paths
    relative to output_dir."""
    names = [name for name, key in FIGURES.items() if any(run.get(key) for run in runs.values())]
    if not names or not (plots := plotting()):
        return {}
    figures = {}
    for name in names:
        if getattr(plots, f"plot_{name}")(runs, output_dir / "plots" / f"{name}.png"):
            figures[name] = f"plots/{name}.png"
    return figures


def write_task_logs(logs: dict[str, list[dict]], folder: Path) -> None:
    """lm-eval's per-document records (prompt, choices, model answer, filtered answer, target, metrics) as
    samples/<task>.jsonl, so that a score can be audited document by document."""
    if not logs:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for task, records in logs.items():
        lines = (json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in records)
        (folder / f"{task}.jsonl").write_text("".join(lines), encoding="utf-8")
    logger.info("per-document logs of %d tasks in %s", len(logs), folder)


def run_models(run_dir: str) -> list[tuple[str, Path, int | None]]:
    """(name, directory, tokens seen) of every checkpoint-N of a run, by step, then its final_model."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UsageError(f"--checkpoints {run_dir}: no such directory")
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir())
    directories = [p for _, p in found] + [p for p in [root / "final_model"] if p.is_dir()]
    if not directories:
        raise UsageError(f"--checkpoints {run_dir}: no checkpoint-N or final_model directory in it")
    return [(p.name, p, tokens_seen(load_run(p))) for p in directories]


def tokens_seen(record) -> int | None:
    """Tokens a checkpoint had seen at its step (interpolated between logs), or None when the run did not say."""
    if record is None or not record.log_history:
        return None
    step = record.state.get("global_step") or max((e.get("step", 0) for e in record.log_history), default=0)
    axis, label = token_axis(record.log_history, record.arguments)
    return int(axis(step)) if label != "optimizer step" else None


def evaluate_checkpoints(options: EvalOptions, run_dir: str) -> Path:
    """Evaluate every checkpoint of a run the same way, then plot each metric against tokens seen; returns the
    summary report's path. Each model's own results go to <output_dir>/<checkpoint>/."""
    models = run_models(run_dir)
    out = Path(options.output_dir or Path(run_dir) / "eval-checkpoints")
    points = []
    for name, directory, seen in models:
        logger.info("evaluating %s (%s tokens seen)", name, seen)
        results = evaluate_model(replace(options, model_path=str(directory), output_dir=str(out / name)))
        metrics = {t: headline_score(t, results["tasks"][t]) for t in results.get("summary_tasks", [])}
        for file, entry in results["perplexity"].items():
            metrics[f"{Path(file).name} bits/byte"] = entry["bits_per_byte"]
        points.append({"label": name, "tokens_seen": seen, "metrics": metrics})
    plot = None
    if all(p["tokens_seen"] is not None for p in points) and (plots := plotting()):
        if plots.plot_metrics_over_tokens(points, out / "plots" / "checkpoints.png"):
            plot = "plots/checkpoints.png"
    (out / "checkpoints.json").write_text(json.dumps(points, indent=2), encoding="utf-8")
    names = list(dict.fromkeys(m for p in points for m in p["metrics"]))
    rows = [
        [
            p["label"],
            f"{p['tokens_seen']:,}" if p["tokens_seen"] else None,
            *[number(p["metrics"].get(m)) for m in names],
        ]
        for p in points
    ]
    lines = [f"# Checkpoints of `{run_dir}`", "", table(["model", "tokens seen", *names], rows), ""]
    if plot:
        lines += [f"![metrics by checkpoint]({plot})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def compare(directories: list[str], output_dir: str) -> Path:
    """One report with several evaluated models side by side (e.g. base vs SFT); returns the report's path."""
    if len(directories) < 2:
        raise UsageError("--compare needs at least two directories")
    runs, taken, histories = {}, set(), {}
    for directory in directories:
        path = next((p for p in (Path(directory), Path(directory) / "eval") if (p / "results.json").is_file()), None)
        if path is None:
            raise UsageError(f"--compare {directory}: no results.json there or in {directory}/eval (run eval.py first)")
        path = path / "results.json"
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise UsageError(f"--compare {path}: not valid JSON ({error})") from None
        label = run_label(results.get("model", directory), taken)
        runs[label] = results
        record = load_run(results.get("model", directory))
        if record and record.log_history:
            histories[label] = (record.log_history, record.arguments)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = None
    if histories and (plots := plotting()):
        if plots.plot_loss_comparison(histories, out / "plots" / "loss_comparison.png"):
            plot = "plots/loss_comparison.png"
    report = out / "report.md"
    report.write_text(render_comparison(runs, plot, result_figures(runs, out)), encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps(runs, indent=2, ensure_ascii=False), encoding="utf-8")
    return report
