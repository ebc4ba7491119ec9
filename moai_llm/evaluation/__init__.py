"""Evaluation: lm-eval benchmarks, perplexity, samples, model and training reports with plots.

One idea per file: `suites` (presets, task lists), `benchmarks` (lm-evaluation-harness on the loaded model),
`perplexity` (packed rows, fused CE), `samples` (generation), `history` (a run's logs read back), `plots`,
`model_card`, `report` (Markdown), `runner` (eval.py's work), `end_of_run` (train.py's report at the end of a
run).
lm_eval and matplotlib are imported only where they are used (the `eval` extra).
"""

from .suites import SUITES, EvalUsageError, TaskSpec, resolve_tasks

__all__ = ["SUITES", "EvalUsageError", "TaskSpec", "resolve_tasks"]
