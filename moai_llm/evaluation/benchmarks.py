"""Benchmarks through lm-evaluation-harness's Python API on the model already in memory (one load, no subprocess).

One `simple_evaluate` call per task on the same `HFLM`, so a task whose data cannot be fetched fails alone with a
one-line reason. Random-guess baselines come from the documents lm-eval scored (its logged samples).
"""

import difflib
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from .suites import TaskSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LmEvalOptions:
    """lm-eval's own prompt and generation settings, passed through and recorded with the results."""

    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    gen_kwargs: str | None = None  # "temperature=0,max_gen_toks=256" for generate_until tasks
    seed: int | None = None  # one seed for python, numpy, torch and few-shot draws; None: lm-eval's defaults

    def seeds(self) -> dict[str, int]:
        """simple_evaluate's four seeds; lm-eval's CLI defaults (0, 1234, 1234, 1234) unless one is given."""
        names = ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")
        return dict(zip(names, (0, 1234, 1234, 1234))) if self.seed is None else dict.fromkeys(names, self.seed)


@dataclass
class BenchmarkResults:
    tasks: dict[str, dict[str, float | None]] = field(default_factory=dict)  # every task and group lm-eval reported
    summary: list[str] = field(default_factory=list)  # top-level names (what was asked for), in order
    details: dict[str, dict] = field(default_factory=dict)  # name -> {"num_fewshot", "documents", "limit", ...}
    baselines: dict[str, float] = field(default_factory=dict)  # name -> random-guess accuracy
    failed: dict[str, str] = field(default_factory=dict)  # requested name -> one-line reason
    logs: dict[str, list[dict]] = field(default_factory=dict)  # task -> lm-eval's per-document records


@functools.cache
def task_manager(include_path: tuple[str, ...] = ()):
    """lm-eval's task index (built-in tasks plus --include_path folders); indexing takes seconds, so once."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_path) or None)


def check_tasks(specs: list[TaskSpec], include_path: tuple[str, ...] = ()) -> None:
    """Every name must be a task, group or tag lm-eval knows (or a YAML file): else a one-line error, no model load."""
    for path in include_path:
        if not Path(path).exists():
            raise UsageError(f"--include_path {path}: no such file or directory")
    known = set(task_manager(include_path).all_tasks)
    for spec in specs:
        if spec.name in known or (spec.name.endswith((".yaml", ".yml")) and Path(spec.name).is_file()):
            continue
        close = difflib.get_close_matches(spec.name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"--tasks: unknown task {spec.name!r}{hint}; local task YAMLs go in --include_path")


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def run_benchmarks(
    model,
    tokenizer,
    specs: list[TaskSpec],
    include_path: tuple[str, ...] = (),
    batch_size: int = 8,
    options: LmEvalOptions = LmEvalOptions(),
) -> BenchmarkResults:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(include_path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
    results = BenchmarkResults()
    for spec in specs:
        logger.info("benchmark %s (%s shots, limit %s)", spec.name, spec.num_fewshot, spec.limit)
        try:
            out = simple_evaluate(
                model=lm,
                tasks=[spec.name],
                num_fewshot=spec.num_fewshot,
                limit=spec.limit,
                task_manager=manager,
                log_samples=True,
                apply_chat_template=options.apply_chat_template,
                fewshot_as_multiturn=options.fewshot_as_multiturn,
                gen_kwargs=options.gen_kwargs,
                **options.seeds(),
            )
        # data not reachable, a broken task file: this task fails, the others still run
        except Exception as error:  # noqa: BLE001
            results.failed[spec.name] = one_line(error)
            logger.error("task %s failed: %s", spec.name, results.failed[spec.name])
            continue
        merge_run(results, out, spec.limit)
    return results


def merge_run(results: BenchmarkResults, out: dict, limit: int | float | None = None) -> None:
    """Fold one simple_evaluate output into `results`: metrics, shots, document counts, limit, task versions,
    baselines (a group's: the mean over its documents, lm-eval's weight_by_size) and the per-document logs."""
    group_subtasks = out.get("group_subtasks") or {}
    children = {name for subtasks in group_subtasks.values() for name in subtasks}
    versions = out.get("versions") or {}
    guesses = {}  # task -> each scored document's random-guess score
    for name, samples in (out.get("samples") or {}).items():
        output_type = out["configs"].get(name, {}).get("output_type")
        guesses[name] = [doc_baseline(output_type, sample) for sample in samples]
        shots = out.get("n-shot", {}).get(name)
        results.details[name] = details(output_type, shots, len(samples), limit, versions.get(name))
        results.logs[name] = samples
    for name, metrics in out["results"].items():
        results.tasks[name] = metric_values(metrics)
        leaves = leaf_names(name, group_subtasks)
        per_doc = [value for leaf in leaves for value in guesses.get(leaf) or [None]]
        if per_doc and None not in per_doc:
            results.baselines[name] = sum(per_doc) / len(per_doc)
        if name in group_subtasks:
            shots = next((results.details[t]["num_fewshot"] for t in leaves if t in results.details), None)
            documents = sum(results.details.get(t, {}).get("documents", 0) for t in leaves)
            results.details[name] = details("group", shots, documents, limit, versions.get(name))
        if name not in children:
            results.summary.append(name)


def details(output_type: str | None, shots: int | None, documents: int, limit, version) -> dict:
    return {
        "output_type": output_type,
        "num_fewshot": shots,
        "documents": documents,
        "limit": limit,
        "version": version,
    }


def metric_values(metrics: dict) -> dict[str, float | None]:
    """lm-eval's `"acc,none": 0.5` -> `"acc": 0.5`; a filter other than `none` stays in the key."""
    values = {}
    for key, value in metrics.items():
        if "," not in key:
            continue  # alias, name, sample_len
        metric, _, filter_name = key.partition(",")
        values[metric if filter_name == "none" else key] = value if isinstance(value, (int, float)) else None
    return values


def doc_baseline(output_type: str | None, sample: dict) -> float | None:
    """Expected accuracy of a uniform random guess on one scored document; None when there is no such number."""
    if output_type == "multiple_choice":
        doc = sample.get("doc") or {}
        if isinstance(doc.get("mc2_targets"), dict):  # TruthfulQA mc2: probability mass on the true answers
            labels = doc["mc2_targets"]["labels"]
            return sum(labels) / len(labels)
        return 1.0 / len(sample["arguments"])
    if output_type == "generate_until":
        return 0.0
    return None


def leaf_names(name: str, group_subtasks: dict) -> list[str]:
    if name not in group_subtasks:
        return [name]
    return [leaf for child in group_subtasks[name] for leaf in leaf_names(child, group_subtasks)]
