"""Evaluation: lm-eval benchmarks, perplexity, samples, model and training reports with plots (one idea per file:
ARCHITECTURE.md, Evaluation). lm_eval and matplotlib (the `eval` extra) are imported only where they are used."""

from .suites import SUITES, EvalUsageError, TaskSpec, resolve_tasks

__all__ = ["SUITES", "EvalUsageError", "TaskSpec", "resolve_tasks"]
