"""Markdown reports from results.json: one model (report.md), several side by side (--compare), a training run."""

from pathlib import Path

from .suites import headline_metric

BASELINE_METRICS = ("acc", "acc_norm", "exact_match")
RANDOM_GUESS_NOTE = (
    "Random guess: the expected score of a uniform guess on the same documents (1 / number of choices "
    "per document; TruthfulQA mc2: the share of true answers; 0 for generated answers)."
)
PERPLEXITY_NOTE = (
    "Plain cross-entropy over every token after each document's first (EOS included), packed rows "
    "without cross-document attention; bits per byte over the UTF-8 bytes of the scored text."
)
LM_EVAL_PERPLEXITY_NOTE = (
    "Unlike lm-eval's rolling log-likelihood (wikitext's word_perplexity, bits_per_byte), which also scores each "
    "document's first token after an end-of-text token and appends no EOS, this scores EOS and not the first "
    "token; long documents are cut into windows that carry one token of context unless `--stride` is given."
)
HEADLINE_NOTE = "★ marks each task's headline metric, the one leaderboards compare (acc_norm for ARC and HellaSwag)."


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


def stderr_of(metrics: dict, metric: str):
    return metrics.get(metric.replace(",", "_stderr,", 1) if "," in metric else f"{metric}_stderr")


def metric_label(task: str, metrics: dict, metric: str) -> str:
    return f"{metric} ★" if metric == headline_metric(task, metrics) else metric


def benchmark_rows(results: dict) -> list[list]:
    """task | metric | score | stderr | random guess | shots | documents | limit, for the top-level tasks."""
    rows = []
    details, baselines = results.get("task_details", {}), results.get("baselines", {})
    for name in results.get("summary_tasks", []):
        metrics = results["tasks"].get(name, {})
        first = True
        for metric, value in metrics.items():
            if metric.split(",")[0].endswith("_stderr"):
                continue
            baseline = baselines.get(name) if metric.split(",")[0] in BASELINE_METRICS else None
            info = details.get(name, {})
            rows.append(
                [
                    name if first else "",
                    metric_label(name, metrics, metric),
                    _number(value),
                    _number(stderr_of(metrics, metric)),
                    _number(baseline),
                    info.get("num_fewshot") if first else "",
                    info.get("documents") if first else "",
                    (info.get("limit") or "all") if first else "",
                ]
            )
            first = False
    return rows


def provenance_lines(results: dict) -> list[str]:
    """Versions, code commit, weights fingerprint, seeds and sample settings: what produced these numbers."""
    facts = {}
    prov = results.get("provenance") or {}
    facts.update({k: v for k, v in (prov.get("versions") or {}).items() if v})
    facts["code commit"] = prov.get("code_commit")
    facts["weights"] = prov.get("weights")
    lm_eval_options = (results.get("settings") or {}).get("lm_eval_options")
    if lm_eval_options:
        facts["lm-eval options"] = ", ".join(f"{k}={v}" for k, v in lm_eval_options.items())
    if results.get("sample_settings"):
        facts["samples"] = ", ".join(f"{k}={v}" for k, v in results["sample_settings"].items() if v is not None)
    if not any(facts.values()):
        return []
    return ["## Provenance", "", facts_table(facts), ""]


def failed_lines(failed: dict) -> list[str]:
    if not failed:
        return []
    return ["Tasks that did not run:", ""] + [f"- `{name}`: {reason}" for name, reason in failed.items()] + [""]


def render_report(results: dict, plot: str | None = None, figures: dict[str, str] | None = None) -> str:
    """report.md; `plot` is the training dashboard, `figures` the benchmark and perplexity bar charts."""
    figures = figures or {}
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
            table(["task", "metric", "score", "± stderr", "random guess", "shots", "documents", "limit"], rows),
            "",
            HEADLINE_NOTE + " " + RANDOM_GUESS_NOTE,
            "",
        ]
        for suite, value in (results.get("averages") or {}).items():
            lines += [f"**{suite} average** (mean of the headline metrics): {value:.4f}", ""]
        if "benchmarks" in figures:
            lines += [f"![benchmarks]({figures['benchmarks']})", ""]
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
            PERPLEXITY_NOTE + " " + LM_EVAL_PERPLEXITY_NOTE,
            "",
        ]
        if "perplexity" in figures:
            lines += [f"![bits per byte]({figures['perplexity']})", ""]
    else:
        lines += ["No `--eval_file` given.", ""]
    lines += samples_section(results.get("samples", []), results.get("sample_settings"))
    lines += provenance_lines(results)
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


def samples_section(samples: list[dict], settings: dict | None = None) -> list[str]:
    lines = ["## Samples", ""]
    if not samples:
        return lines + ["No prompts.", ""]
    if settings:
        lines += ["Produced with " + ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None) + ".", ""]
    for sample in samples:
        speed = ""
        if "tokens" in sample:
            speed = f" ({sample['tokens']} tokens, {sample['tokens_per_second']:.1f} tokens/s)"
        lines += [f"**{sample['prompt']}**{speed}", "", _quote(sample["text"]), ""]
    return lines


def render_training_report(summary: dict, plot: str | None) -> str:
    """The short report train.py leaves in output_dir."""
    lines = ["# Training report", ""] + training_section(summary, plot, heading="## Summary")
    lines += ["Next: `python eval.py --model_path <output_dir>/final_model` (docs/evaluation.md).", ""]
    return "\n".join(lines)


def run_label(path: str, taken: set[str]) -> str:
    """A short column name for a model directory: its last two path parts, made unique."""
    parts = Path(path).parts
    label = "/".join(parts[-2:]) if len(parts) >= 2 else path
    base, number = label, 2
    while label in taken:
        label, number = f"{base} ({number})", number + 1
    taken.add(label)
    return label
