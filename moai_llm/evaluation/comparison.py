"""--compare's report: several results.json side by side, each score with its standard error, the settings that
produced it, and one warning line per setting that differs between the runs (a 500-document run next to a full
one, another shot count, lm-eval version, precision or sample decoding): numbers that were not produced the same
way are flagged, not silently put in one row."""

from .report import BASELINE_METRICS, _number, _quote, metric_label, stderr_of, table

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
            keys = dict.fromkeys(k for v in values.values() if v for k in v)
            for key in keys:
                if found := differing({name: (v or {}).get(key) for name, v in values.items()}):
                    warnings.append(f"{'.'.join(path)}.{key} differs ({found})")
        elif found := differing(values):
            warnings.append(f"{'.'.join(path)} differs ({found})")
    tasks = dict.fromkeys(t for r in runs.values() for t in r.get("summary_tasks", []))
    for task in tasks:
        for key in TASK_SETTINGS:
            values = {name: (r.get("task_details") or {}).get(task, {}).get(key) for name, r in runs.items()}
            if key == "limit":
                values = {n: v or "all" for n, v in values.items() if task in (runs[n].get("task_details") or {})}
            if found := differing(values):
                warnings.append(f"{task}: {key} differs ({found})")
    for names in perplexity_keys(runs).values():
        if len(set(names.values())) > 1:
            warnings.append(f"the same text is named differently ({'; '.join(f'{n}: {f}' for n, f in names.items())})")
    by_name: dict[str, set] = {}
    for r in runs.values():
        for file, entry in (r.get("perplexity") or {}).items():
            by_name.setdefault(file, set()).add(entry.get("content_sha256"))
    for file, hashes in by_name.items():
        if len(hashes) > 1:
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
    tasks = list(dict.fromkeys(t for r in runs.values() for t in r.get("summary_tasks", [])))
    rows = []
    for task in tasks:
        union = {m: None for r in runs.values() for m in r["tasks"].get(task, {})}
        metrics = [m for m in union if not m.split(",")[0].endswith("_stderr")]
        baseline = next((r["baselines"][task] for r in runs.values() if task in r.get("baselines", {})), None)
        for metric in metrics:
            values = []
            for r in runs.values():
                task_metrics = r["tasks"].get(task, {})
                value, stderr = task_metrics.get(metric), stderr_of(task_metrics, metric)
                values.append(f"{_number(value)} ± {_number(stderr)}" if isinstance(stderr, float) else _number(value))
            shown = baseline if metric.split(",")[0] in BASELINE_METRICS else None
            rows.append([task, metric_label(task, union, metric), *values, _number(shown)])
        for key in ("num_fewshot", "documents", "limit"):
            cells = [(r.get("task_details") or {}).get(task, {}).get(key) for r in runs.values()]
            if key == "limit":
                cells = [c or "all" for c in cells]
            rows.append(["", f"({key})", *cells, ""])
    return rows


def render_comparison(runs: dict[str, dict], plot: str | None = None, figures: dict[str, str] | None = None) -> str:
    """Several results.json side by side: warnings, model facts, benchmark scores, perplexity, training, samples."""
    figures = figures or {}
    names = list(runs)
    lines = ["# Comparison", "", table(["", *names], [["model", *[f"`{r['model']}`" for r in runs.values()]]]), ""]
    warnings = comparison_warnings(runs)
    if warnings:
        lines += ["**Settings differ between these runs; their numbers are not directly comparable:**", ""]
        lines += [f"- ⚠ {line}" for line in warnings] + [""]
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
    if "benchmarks" in figures:
        lines += [f"![benchmarks]({figures['benchmarks']})", ""]
    averages = list(dict.fromkeys(s for r in runs.values() for s in r.get("averages") or {}))
    for suite in averages:
        cells = ", ".join(f"{n} {_number((r.get('averages') or {}).get(suite))}" for n, r in runs.items())
        lines += [f"**{suite} average**: {cells}", ""]
    for name, result in runs.items():
        if result.get("failed_tasks"):
            lines += [f"{name}: " + "; ".join(f"`{t}` failed ({why})" for t, why in result["failed_tasks"].items()), ""]
    lines += perplexity_section(runs)
    if "perplexity" in figures:
        lines += [f"![bits per byte]({figures['perplexity']})", ""]
    lines += samples_side_by_side(runs)
    return "\n".join(lines)


def perplexity_section(runs: dict[str, dict]) -> list[str]:
    keys = perplexity_keys(runs)
    if not keys:
        return []
    rows = []
    for files in keys.values():
        label = " / ".join(dict.fromkeys(files.values()))
        for metric in ("perplexity", "bits_per_byte", "token_accuracy"):
            cells = [_number((r.get("perplexity") or {}).get(files.get(n), {}).get(metric)) for n, r in runs.items()]
            rows.append([label, metric, *cells])
    return ["## Perplexity", "", table(["file (same content)", "metric", *runs], rows), ""]


def samples_side_by_side(runs: dict[str, dict]) -> list[str]:
    prompts = list(dict.fromkeys(s["prompt"] for r in runs.values() for s in r.get("samples", [])))
    if not prompts:
        return []
    lines = ["## Samples", ""]
    for name, result in runs.items():
        settings = result.get("sample_settings")
        if settings:
            lines += [f"*{name}*: " + ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None), ""]
    for prompt in prompts:
        lines += [f"**{prompt}**", ""]
        for name, result in runs.items():
            answer = next((s["text"] for s in result.get("samples", []) if s["prompt"] == prompt), None)
            if answer is not None:
                lines += [f"*{name}*:", "", _quote(answer), ""]
    return lines
