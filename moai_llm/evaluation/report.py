"""Markdown reports from results.json: one model (report.md), a training run (training_report.md) and several
models side by side (--compare), where each setting that differs between the runs (a 500-document run next to a
full one, another shot count, lm-eval version, precision or sample decoding) gets a warning line: numbers that were
not produced the same way are flagged, not silently put in one row."""

from pathlib import Path

from .suites import headline_metric

BASELINE_METRICS = ("acc", "acc_norm", "exact_match")
BENCHMARK_NOTE = (
    "★ marks each task's headline metric, the one leaderboards compare (acc_norm for ARC and HellaSwag). Random "
    "guess: the expected score of a uniform guess on the same documents (1 / number of choices per document; "
    "TruthfulQA mc2: the share of true answers; 0 for generated answers)."
)
PERPLEXITY_NOTE = (
    "Plain cross-entropy over every token after each document's first (EOS included), packed rows without "
    "cross-document attention; bits per byte over the UTF-8 bytes of the scored text. Unlike lm-eval's rolling "
    "log-likelihood (wikitext's word_perplexity, bits_per_byte), which also scores each document's first token "
    "after an end-of-text token and appends no EOS, this scores EOS and not the first token; long documents are "
    "cut into windows that carry one token of context unless `--stride` is given."
)
# results.json paths whose values must agree for two runs' numbers to be comparable
GLOBAL_SETTINGS = (
    ("settings", "precision"),
    ("settings", "max_length"),
    ("settings", "stride"),
    ("settings", "lm_eval_options"),
    ("provenance", "versions", "lm_eval"),
    ("provenance", "versions", "transformers"),
    ("provenance", "versions", "torch"),
    ("sample_settings",),
)
TASK_SETTINGS = ("num_fewshot", "documents", "limit", "version")


def table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return "—" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def number(value, spec: str = ".4f"):
    """A number formatted by `spec`; anything else (None, text) as it is."""
    return format(value, spec) if isinstance(value, (int, float)) else value


def pairs(mapping: dict, separator: str = " ") -> str:
    return ", ".join(f"{k}{separator}{v}" for k, v in mapping.items() if v is not None)


def facts_table(facts: dict) -> str:
    return table(["", ""], [[key, value] for key, value in facts.items() if value not in (None, "")])


def training_section(summary: dict | None, plot: str | None, heading: str = "## Training") -> list[str]:
    if not summary:
        return [heading, "", "No training files next to the model (trainer_state.json, all_results.json).", ""]
    return [heading, "", facts_table(summary), ""] + ([f"![training history]({plot})", ""] if plot else [])


def stderr_of(metrics: dict, metric: str):
    return metrics.get(metric.replace(",", "_stderr,", 1) if "," in metric else f"{metric}_stderr")


def metric_label(task: str, metrics: dict, metric: str) -> str:
    return f"{metric} ★" if metric == headline_metric(task, metrics) else metric


def task_names(runs: list[dict]) -> list[str]:
    """The top-level tasks of one or several runs, in order."""
    return list(dict.fromkeys(t for r in runs for t in r.get("summary_tasks", [])))


def scored_metrics(runs: list[dict], task: str) -> dict:
    """A task's metrics (no standard errors) over one or several runs, in order."""
    return {m: None for r in runs for m in r["tasks"].get(task, {}) if not m.split(",")[0].endswith("_stderr")}


def baseline(runs: list[dict], task: str, metric: str):
    """The random-guess score of an accuracy-like metric (from the first run that recorded one), else None."""
    if metric.split(",")[0] not in BASELINE_METRICS:
        return None
    return next((r["baselines"][task] for r in runs if task in r.get("baselines", {})), None)


def benchmark_rows(results: dict) -> list[list]:
    """task | metric | score | stderr | random guess | shots | documents | limit, for the top-level tasks."""
    rows = []
    for name in results.get("summary_tasks", []):
        metrics, info = results["tasks"].get(name, {}), results.get("task_details", {}).get(name, {})
        for index, metric in enumerate(scored_metrics([results], name)):
            task = [name, info.get("num_fewshot"), info.get("documents"), info.get("limit") or "all"]
            task = task if index == 0 else ["", "", "", ""]
            scores = map(number, (metrics[metric], stderr_of(metrics, metric), baseline([results], name, metric)))
            rows.append([task[0], metric_label(name, metrics, metric), *scores, *task[1:]])
    return rows


def provenance_lines(results: dict) -> list[str]:
    """Versions, code commit, weights fingerprint, seeds and sample settings: what produced these numbers."""
    prov = results.get("provenance") or {}
    facts = {k: v for k, v in (prov.get("versions") or {}).items() if v}
    facts["code commit"] = prov.get("code_commit")
    facts["weights"] = prov.get("weights")
    facts["lm-eval options"] = pairs((results.get("settings") or {}).get("lm_eval_options") or {}, "=")
    facts["samples"] = pairs(results.get("sample_settings") or {}, "=")
    return ["## Provenance", "", facts_table(facts), ""] if any(facts.values()) else []


def render_report(results: dict, plot: str | None = None, figures: dict[str, str] | None = None) -> str:
    """report.md; `plot` is the training dashboard, `figures` the benchmark and perplexity bar charts."""
    figures = figures or {}
    lines = [f"# Evaluation of `{results['model']}`", ""]
    if results.get("settings"):
        lines += [pairs(results["settings"], ": "), ""]
    lines += ["## Model", "", facts_table(results.get("model_card", {})), ""]
    lines += training_section(results.get("training"), plot)
    lines += ["## Benchmarks", ""]
    rows = benchmark_rows(results)
    if rows:
        header = ["task", "metric", "score", "± stderr", "random guess", "shots", "documents", "limit"]
        lines += [table(header, rows), "", BENCHMARK_NOTE, ""]
        for suite, value in (results.get("averages") or {}).items():
            lines += [f"**{suite} average** (mean of the headline metrics): {value:.4f}", ""]
        lines += figure(figures, "benchmarks")
    elif not results.get("failed_tasks"):
        lines += ["No benchmark tasks were run (`--tasks` / `--suite`).", ""]
    if results.get("failed_tasks"):
        lines += ["Tasks that did not run:", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in results["failed_tasks"].items()] + [""]
    lines += ["## Perplexity", ""]
    if results.get("perplexity"):
        header = ["file", "documents", "scored tokens", "perplexity", "bits per byte", "token accuracy", "tokens/s"]
        rows = [
            [name, v.get("documents"), f"{v['tokens']:,}", number(v["perplexity"], ".3f")]
            + [number(v["bits_per_byte"]), number(v["token_accuracy"]), number(v.get("tokens_per_second"), ".0f")]
            for name, v in results["perplexity"].items()
        ]
        lines += [table(header, rows), "", PERPLEXITY_NOTE, ""]
        lines += figure(figures, "perplexity", "bits per byte")
    else:
        lines += ["No `--eval_file` given.", ""]
    lines += ["## Samples", ""]
    if not results.get("samples"):
        lines += ["No prompts.", ""]
    elif results.get("sample_settings"):
        lines += [f"Produced with {pairs(results['sample_settings'])}.", ""]
    for sample in results.get("samples", []):
        speed = (
            f" ({sample['tokens']} tokens, {sample['tokens_per_second']:.1f} tokens/s)" if "tokens" in sample else ""
        )
        lines += [f"**{sample['prompt']}**{speed}", "", _quote(sample["text"]), ""]
    return "\n".join(lines + provenance_lines(results))


def figure(figures: dict[str, str], name: str, alt: str | None = None) -> list[str]:
    return [f"![{alt or name}]({figures[name]})", ""] if name in figures else []


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip() or "(empty)").splitlines())


def render_training_report(summary: dict, plot: str | None) -> str:
    """The short report train.py leaves in output_dir."""
    lines = ["# Training report", ""] + training_section(summary, plot, heading="## Summary")
    lines += ["Next: `python eval.py --model_path <output_dir>/final_model` (docs/evaluation.md).", ""]
    return "\n".join(lines)


def run_label(path: str, taken: set[str]) -> str:
    """A short column name for a model directory: its last two path parts, made unique."""
    base = label = "/".join(Path(path).parts[-2:])
    suffix = 2
    while label in taken:
        label, suffix = f"{base} ({suffix})", suffix + 1
    taken.add(label)
    return label


def _get(results: dict, path: tuple):
    value = results
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def differing(values: dict[str, object]) -> str | None:
    """'a: X; b: Y' when the runs that recorded the value disagree on it, else None."""
    known = {name: value for name, value in values.items() if value is not None}
    if len({repr(v) for v in known.values()}) < 2:
        return None
    return "; ".join(f"{name}: {value}" for name, value in known.items())


def comparison_warnings(runs: dict[str, dict]) -> list[str]:
    """One line per setting that differs between the runs."""
    warnings = []
    for path in GLOBAL_SETTINGS:
        values = {name: _get(r, path) for name, r in runs.items()}
        if all(isinstance(v, dict) for v in values.values() if v is not None):  # one line per differing key
            for key in dict.fromkeys(k for v in values.values() if v for k in v):
                if found := differing({name: (v or {}).get(key) for name, v in values.items()}):
                    warnings.append(f"{'.'.join(path)}.{key} differs ({found})")
        elif found := differing(values):
            warnings.append(f"{'.'.join(path)} differs ({found})")
    for task in task_names(runs.values()):
        for key in TASK_SETTINGS:
            values = {name: (r.get("task_details") or {}).get(task, {}).get(key) for name, r in runs.items()}
            if key == "limit":
                values = {n: v or "all" for n, v in values.items() if task in (runs[n].get("task_details") or {})}
            if found := differing(values):
                warnings.append(f"{task}: {key} differs ({found})")
    keys = perplexity_keys(runs)
    for names in keys.values():
        if len(set(names.values())) > 1:
            warnings.append(f"the same text is named differently ({'; '.join(f'{n}: {f}' for n, f in names.items())})")
    names = [file for files in keys.values() for file in set(files.values())]  # a name under two contents
    for file in dict.fromkeys(file for file in names if names.count(file) > 1):
        warnings.append(f"{file}: the file's content differs between the runs (its rows are kept apart)")
    return warnings


def perplexity_keys(runs: dict[str, dict]) -> dict[str, dict[str, str]]:
    """content hash (or the file name, for results without one) -> {run: file name as typed}."""
    keys: dict[str, dict[str, str]] = {}
    for name, r in runs.items():
        for file, entry in (r.get("perplexity") or {}).items():
            keys.setdefault(entry.get("content_sha256") or file, {})[name] = file
    return keys


def comparison_rows(runs: dict[str, dict]) -> list[list]:
    """task | metric | a score ± stderr per run | random guess; the shots, documents and limit under each task."""
    rows = []
    for task in task_names(runs.values()):
        union = scored_metrics(runs.values(), task)
        for metric in union:
            values = []
            for r in runs.values():
                value, stderr = r["tasks"].get(task, {}).get(metric), stderr_of(r["tasks"].get(task, {}), metric)
                values.append(f"{number(value)} ± {number(stderr)}" if isinstance(stderr, float) else number(value))
            guess = number(baseline(runs.values(), task, metric))
            rows.append([task, metric_label(task, union, metric), *values, guess])
        for key in ("num_fewshot", "documents", "limit"):
            cells = [(r.get("task_details") or {}).get(task, {}).get(key) for r in runs.values()]
            rows.append(["", f"({key})", *([c or "all" for c in cells] if key == "limit" else cells), ""])
    return rows


def side_by_side(runs: dict[str, dict], key: str) -> list[list]:
    """One row per name found under results[key] in any run (model facts, training summary), a cell per run."""
    names = dict.fromkeys(k for r in runs.values() for k in (r.get(key) or {}))
    return [[k, *[(r.get(key) or {}).get(k) for r in runs.values()]] for k in names]


def render_comparison(runs: dict[str, dict], plot: str | None = None, figures: dict[str, str] | None = None) -> str:
    """Several results.json side by side: warnings, model facts, benchmark scores, perplexity, training, samples."""
    figures = figures or {}
    names = list(runs)
    lines = ["# Comparison", "", table(["", *names], [["model", *[f"`{r['model']}`" for r in runs.values()]]]), ""]
    warnings = comparison_warnings(runs)
    if warnings:
        lines += ["**Settings differ between these runs; their numbers are not directly comparable:**", ""]
        lines += [f"- ⚠ {line}" for line in warnings] + [""]
    lines += ["## Models", "", table(["", *names], side_by_side(runs, "model_card")), ""]
    if training := side_by_side(runs, "training"):
        lines += ["## Training", "", table(["", *names], training), ""]
    if plot:
        lines += [f"![loss by run]({plot})", ""]
    rows = comparison_rows(runs)
    lines += ["## Benchmarks", "", table(["task", "metric", *names, "random guess"], rows) if rows else "No tasks.", ""]
    lines += figure(figures, "benchmarks")
    for suite in dict.fromkeys(s for r in runs.values() for s in r.get("averages") or {}):
        cells = ", ".join(f"{n} {number((r.get('averages') or {}).get(suite))}" for n, r in runs.items())
        lines += [f"**{suite} average**: {cells}", ""]
    for name, result in runs.items():
        if result.get("failed_tasks"):
            lines += [f"{name}: " + "; ".join(f"`{t}` failed ({why})" for t, why in result["failed_tasks"].items()), ""]
    if keys := perplexity_keys(runs):
        rows = []
        for files in keys.values():
            label = " / ".join(dict.fromkeys(files.values()))
            for metric in ("perplexity", "bits_per_byte", "token_accuracy"):
                cells = [(r.get("perplexity") or {}).get(files.get(n), {}).get(metric) for n, r in runs.items()]
                rows.append([label, metric, *map(number, cells)])
        lines += ["## Perplexity", "", table(["file (same content)", "metric", *runs], rows), ""]
    lines += figure(figures, "perplexity", "bits per byte")
    return "\n".join(lines + samples_side_by_side(runs))


def samples_side_by_side(runs: dict[str, dict]) -> list[str]:
    prompts = list(dict.fromkeys(s["prompt"] for r in runs.values() for s in r.get("samples", [])))
    if not prompts:
        return []
    lines = ["## Samples", ""]
    for name, result in runs.items():
        if result.get("sample_settings"):
            lines += [f"*{name}*: {pairs(result['sample_settings'])}", ""]
    for prompt in prompts:
        lines += [f"**{prompt}**", ""]
        for name, result in runs.items():
            answer = next((s["text"] for s in result.get("samples", []) if s["prompt"] == prompt), None)
            if answer is not None:
                lines += [f"*{name}*:", "", _quote(answer), ""]
    return lines
