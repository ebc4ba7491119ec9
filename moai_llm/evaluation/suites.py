"""Benchmark presets and `--tasks` parsing: which lm-eval tasks, with how many shots, on how many documents.

The names and shot counts were checked against lm-evaluation-harness 0.4.13's bundled registry
(`lm_eval.tasks.TaskManager().all_tasks`): `mmlu` and `kmmlu` and `kobest` are groups, the others tasks.
"""

from dataclasses import dataclass

from ..errors import UsageError

EvalUsageError = UsageError  # the old name, importable from moai_llm.evaluation; raise UsageError


@dataclass(frozen=True)
class TaskSpec:
    name: str  # an lm-eval task, group or tag name (or a YAML path)
    num_fewshot: int | None = None  # None: the task's own default
    limit: int | None = None  # documents per task; None: all


@dataclass(frozen=True)
class Suite:
    description: str
    tasks: tuple[TaskSpec, ...]
    average: bool = False  # report the mean of the tasks' headline metrics (a leaderboard's single number)


SUITES = {
    # Small and fast: four 0-shot multiple-choice tasks, at most 500 documents each (a few minutes for a 2B model
    # on one GPU). A sanity check that scores move above chance, not a leaderboard figure: at 500 documents an
    # accuracy's standard error is about 2.2 points.
    "quick": Suite(
        "ARC-Easy, HellaSwag, PIQA, WinoGrande; 0-shot, 500 documents each",
        tuple(TaskSpec(name, 0, 500) for name in ("arc_easy", "hellaswag", "piqa", "winogrande")),
    ),
    # The Open LLM Leaderboard v1 table exactly: its six tasks and shots, each scored by its headline metric, and
    # the leaderboard's average of the six.
    "leaderboard_v1": Suite(
        "Open LLM Leaderboard v1: ARC-Challenge 25-shot, HellaSwag 10, MMLU 5, TruthfulQA mc2 0, WinoGrande 5, "
        "GSM8K 5; with their average",
        (
            TaskSpec("arc_challenge", 25),
            TaskSpec("hellaswag", 10),
            TaskSpec("mmlu", 5),
            TaskSpec("truthfulqa_mc2", 0),
            TaskSpec("winogrande", 5),
            TaskSpec("gsm8k", 5),
        ),
        average=True,
    ),
    # The table the old moellama tool called "standard": close to the leaderboard but not it (GSM8K 8-shot with
    # chain of thought, no WinoGrande), kept under its own name so that its numbers are never read as the
    # leaderboard's.
    "moellama": Suite(
        "the old moellama tool's table: MMLU 5-shot, HellaSwag 10, ARC-Challenge 25, TruthfulQA mc2 0, "
        "GSM8K CoT 8 (not the leaderboard)",
        (
            TaskSpec("mmlu", 5),
            TaskSpec("hellaswag", 10),
            TaskSpec("arc_challenge", 25),
            TaskSpec("truthfulqa_mc2", 0),
            TaskSpec("gsm8k_cot", 8),
        ),
    ),
    # KoBEST as lm-eval runs it by default (0-shot); KMMLU 5-shot as in its paper.
    "korean": Suite("KoBEST (5 tasks) 0-shot, KMMLU 5-shot", (TaskSpec("kobest", 0), TaskSpec("kmmlu", 5))),
}
RENAMED_SUITES = {
    "standard": "it was not the leaderboard's table: use leaderboard_v1 (the Open LLM Leaderboard v1 exactly) or "
    "moellama (the old tool's table)",
}

# The metric a task is read by (leaderboards and papers): normalised accuracy where answers differ in length.
HEADLINE_METRICS = {
    "arc_challenge": "acc_norm",
    "arc_easy": "acc_norm",
    "hellaswag": "acc_norm",
    "piqa": "acc_norm",
    "truthfulqa_mc2": "mc2",
    "gsm8k": "exact_match,strict-match",
    "gsm8k_cot": "exact_match,strict-match",
}


def headline_metric(task: str, metrics: dict) -> str | None:
    """The one metric a task is compared by: the table above, else `acc`, else the first non-stderr metric."""
    names = [m for m in metrics if not m.split(",")[0].endswith("_stderr")]
    for candidate in (HEADLINE_METRICS.get(task), "acc"):
        if candidate in names:
            return candidate
    return names[0] if names else None


def headline_score(task: str, metrics: dict) -> float | None:
    """The value of the task's headline metric, or None when it has none (or no number)."""
    value = metrics.get(headline_metric(task, metrics) or "")
    return float(value) if isinstance(value, (int, float)) else None


def parse_task_list(text: str) -> list[TaskSpec]:
    """`"mmlu:5,hellaswag"` -> specs; `name:N` sets N shots for that task."""
    specs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, shots = item.partition(":")
        if shots and not shots.isdigit():
            raise UsageError(f"--tasks: {item!r}: shots after ':' must be a whole number")
        specs.append(TaskSpec(name.strip(), int(shots) if shots else None))
    if not specs:
        raise UsageError("--tasks: no task names given")
    return specs


def resolve_tasks(tasks: str | None, suite: str | None, num_fewshot: int | None, limit: float | None) -> list[TaskSpec]:
    """The task list from --suite and --tasks (suite first); --num_fewshot and --limit (documents; below 1 a
    fraction) override every task."""
    if limit is not None and limit >= 1:
        limit = int(limit)
    specs: list[TaskSpec] = []
    if suite:
        if suite in RENAMED_SUITES:
            raise UsageError(f"--suite {suite}: renamed; {RENAMED_SUITES[suite]}")
        if suite not in SUITES:
            raise UsageError(f"--suite {suite}: unknown suite (known: {', '.join(SUITES)})")
        specs.extend(SUITES[suite].tasks)
    if tasks:
        specs.extend(parse_task_list(tasks))
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise UsageError(f"--tasks: {name} is asked for twice (check --tasks and --suite)")
    return [
        TaskSpec(s.name, s.num_fewshot if num_fewshot is None else num_fewshot, s.limit if limit is None else limit)
        for s in specs
    ]
