"""The old tool's loss API, which the model never calls: `create_loss_function(spec)` and its `LossFunction`.
Apart from losses.py so the remote code holds only what the model runs; `from moai_llm.losses import` still works."""

from dataclasses import dataclass, field

import torch

from .batch_format import IGNORE_INDEX
from .losses import Objective, chunked_cross_entropy_loss, objective_from_spec


@dataclass(frozen=True)
class LossFunction:
    """`loss_fn(logits, labels, num_items_in_batch=None)`: `chunked_cross_entropy_loss` with this objective, on
    logits and labels already aligned (pass `logits[:, :-1]` and `labels[:, 1:]`); no valid token gives 0.
    `objective` is what the fused path (`MoaiForCausalLM`, `causal_lm_loss`) takes."""

    objective: Objective = field(default_factory=Objective)
    chunk_size: int = 2048
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive integer, got {self.chunk_size!r}")

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        return chunked_cross_entropy_loss(
            logits,
            labels,
            self.chunk_size,
            self.ignore_index,
            num_items_in_batch=num_items_in_batch,
            objective=self.objective,
        )


def create_loss_function(spec: dict | None = None, chunk_size: int = 2048, ignore_index: int = IGNORE_INDEX):
    """`loss_fn(logits, labels)` for `{"type": "cross_entropy" | "focal" | "label_smoothing" | "multi_objective",
    "params": {...}}`; `loss_fn.objective` is what the fused path takes. See `LossFunction`."""
    return LossFunction(objective_from_spec(spec), chunk_size, ignore_index)


__all__ = ["LossFunction", "create_loss_function"]
