"""Markdown reports from results.json: one model (report.md), several side by side (--compare), a training run."""

from pathlib import Path

BASELINE_METRICS = ("acc", "acc_norm", "exact_match")
RANDOM_GUESS_NOTE = (
    "Random guess: the expected score of a uniform guess on the same documents (1 / number of choices "
    "per document; TruthfulQA mc2: the share of true answers; 0 for generated answers)."
)
PERPLEXITY_NOTE = (
    "Plain cross-entropy over every token after each document's first (EOS included), packed rows "
    "without cross-document attention; bits per byte over the UTF-8 bytes of the scored text."
)


def table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return "—" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value, digits: int = 4):
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else value


def facts_table(facts: dict) -> str:
    return table(["", ""], [[key, value] for key, value in facts.items() if value not in (None, "")])


def training_section(summary: dict | None, plot: str | None, heading: str = "## Training") -> list[str]:
    if not summary:
        return [heading, "", "No training files next to the model (trainer_state.json, all_results.json).", ""]
    lines = [heading, "", facts_table(summary), ""]
    if plot:
        lines += [f"![training history]({plot})", ""]
    return lines


def benchmark_rows(results: dict) -> list[list]:
    """task | metric | score | stderr | random guess | shots | documents, for the top-level tasks."""
    rows = []
    details, baselines = results.get("task_details", {}), results.get("baselines", {})
    for name in results.get("summary_tasks", []):
        metrics = results["tasks"].get(name, {})
        first = True
        for metric, value in metrics.items():
            if metric.split(",")[0].endswith("_stderr"):
                continue
            stderr_key = metric.replace(",", "_stderr,", 1) if "," in metric else f"{metric}_stderr"
            baseline = baselines.get(name) if metric.split(",")[0] in BASELINE_METRICS else None
            info = details.get(name, {})
            rows.append(
                [
                    name if first else "",
                    metric,
                    _number(value),
                    _number(metrics.get(stderr_key)),
                    _number(baseline),
                    info.get("num_fewshot") if first else "",
                    info.get("documents") if first else "",
                ]
            )
            first = False
    return rows


def failed_lines(failed: dict) -> list[str]:
    if not failed:
        return []
    return ["Tasks that did not run:", ""] + [f"- `{name}`: {reason}" for name, reason in failed.items()] + [""]


def render_report(results: dict, plot: str | None = None) -> str:
    settings = results.get("settings", {})
    lines = [f"# Evaluation of `{results['model']}`", ""]
    if settings:
        lines += [", ".join(f"{k}: {v}" for k, v in settings.items()), ""]
    lines += ["## Model", "", facts_table(results.get("model_card", {})), ""]
    lines += training_section(results.get("training"), plot)
    lines += ["## Benchmarks", ""]
    rows = benchmark_rows(results)
    if rows:
        lines += [
            table(["task", "metric", "score", "± stderr", "random guess", "shots", "documents"], rows),
            "",
            RANDOM_GUESS_NOTE,
            "",
        ]
    elif not results.get("failed_tasks"):
        lines += ["No benchmark tasks were run (`--tasks` / `--suite`).", ""]
    lines += failed_lines(results.get("failed_tasks", {}))
    lines += ["## Perplexity", ""]
    if results.get("perplexity"):
        lines += [
            table(
                ["file", "documents", "scored tokens", "perplexity", "bits per byte", "token accuracy", "tokens/s"],
                perplexity_rows(results["perplexity"]),
            ),
            "",
            PERPLEXITY_NOTE,
            "",
        ]
    else:
        lines += ["No `--eval_file` given.", ""]
    lines += samples_section(results.get("samples", []))
    return "\n".join(lines)


def perplexity_rows(perplexity: dict) -> list[list]:
    return [
        [
            name,
            v.get("documents"),
            f"{v['tokens']:,}",
            _number(v["perplexity"], 3),
            _number(v["bits_per_byte"]),
            _number(v["token_accuracy"]),
            _number(v.get("tokens_per_second"), 0),
        ]
        for name, v in perplexity.items()
    ]


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip() or "(empty)").splitlines())


def samples_section(samples: list[dict]) -> list[str]:
    lines = ["## Samples", ""]
    if not samples:
        return lines + ["No prompts.", ""]
    for sample in samples:
        speed = ""
        if "tokens" in sample:
            speed = f" ({sample['tokens']} tokens, {sample['tokens_per_second']:.1f} tokens/s)"
        lines += [f"**{sample['prompt']}**{speed}", "", _quote(sample["text"]), ""]
    return lines


def render_training_report(summary: dict, plot: str | None) -> str:
    """The short report train.py leaves in output_dir."""
    lines = ["# Training report", ""] + training_section(summary, plot, heading="## Summary")
    lines += ["Next: `python evaluate.py --model_path <output_dir>/final_model` (docs/evaluation.md).", ""]
    return "\n".join(lines)


def render_comparison(runs: dict[str, dict], plot: str | None = None) -> str:
    """Several results.json side by side: model facts, benchmark scores, perplexity, training, samples."""
    names = list(runs)
    lines = ["# Comparison", "", table(["", *names], [["model", *[f"`{r['model']}`" for r in runs.values()]]]), ""]
    card_keys = list(dict.fromkeys(k for r in runs.values() for k in r.get("model_card", {})))
    lines += [
        "## Models",
        "",
        table(["", *names], [[k, *[r.get("model_card", {}).get(k) for r in runs.values()]] for k in card_keys]),
        "",
    ]
    summary_keys = list(dict.fromkeys(k for r in runs.values() for k in (r.get("training") or {})))
    if summary_keys:
        rows = [[k, *[(r.get("training") or {}).get(k) for r in runs.values()]] for k in summary_keys]
        lines += ["## Training", "", table(["", *names], rows), ""]
    if plot:
        lines += [f"![loss by run]({plot})", ""]
    rows = comparison_rows(runs)
    lines += ["## Benchmarks", "", table(["task", "metric", *names, "random guess"], rows) if rows else "No tasks.", ""]
    for name, result in runs.items():
        if result.get("failed_tasks"):
            lines += [f"{name}: " + "; ".join(f"`{t}` failed ({why})" for t, why in result["failed_tasks"].items()), ""]
    files = list(dict.fromkeys(f for r in runs.values() for f in r.get("perplexity", {})))
    if files:
        rows = [
            [f, metric, *[_number(r.get("perplexity", {}).get(f, {}).get(metric)) for r in runs.values()]]
            for f in files
            for metric in ("perplexity", "bits_per_byte", "token_accuracy")
        ]
        lines += ["## Perplexity", "", table(["file", "metric", *names], rows), ""]
    prompts = list(dict.fromkeys(s["prompt"] for r in runs.values() for s in r.get("samples", [])))
    if prompts:
        lines += ["## Samples", ""]
        for prompt in prompts:
            lines += [f"**{prompt}**", ""]
            for name, result in runs.items():
                answer = next((s["text"] for s in result.get("samples", []) if s["prompt"] == prompt), None)
                if answer is not None:
                    lines += [f"*{name}*:", "", _quote(answer), ""]
    return "\n".join(lines)


def comparison_rows(runs: dict[str, dict]) -> list[list]:
    tasks = list(dict.fromkeys(t for r in runs.values() for t in r.get("summary_tasks", [])))
    rows = []
    for task in tasks:
        metrics = list(
            dict.fromkeys(
                m for r in runs.values() for m in r["tasks"].get(task, {}) if not m.split(",")[0].endswith("_stderr")
            )
        )
        baseline = next((r["baselines"][task] for r in runs.values() if task in r.get("baselines", {})), None)
        for metric in metrics:
            values = [_number(r["tasks"].get(task, {}).get(metric)) for r in runs.values()]
            shown = baseline if metric.split(",")[0] in BASELINE_METRICS else None
            rows.append([task, metric, *values, _number(shown)])
    return rows


def run_label(path: str, taken: set[str]) -> str:
    """A short column name for a model directory: its last two path parts, made unique."""
    parts = Path(path).parts
    label = "/".join(parts[-2:]) if len(parts) >= 2 else path
    base, number = label, 2
    while label in taken:
        label, number = f"{base} ({number})", number + 1
    taken.add(label)
    return label
