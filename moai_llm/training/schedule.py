"""Warmup-Stable-Decay learning-rate schedule on transformers' `get_wsd_schedule`, which takes the decay in steps:
the decay fraction users give becomes steps here, once the Trainer has counted them."""

import math

from torch.optim import Optimizer
from transformers.optimization import get_wsd_schedule


def wsd_phase_steps(num_training_steps: int, num_warmup_steps: int, decay_ratio: float) -> tuple[int, int, int]:
    """(warmup, stable, decay) step counts that add up to `num_training_steps`."""
    if num_training_steps <= 0:
        raise ValueError(f"the schedule needs a positive number of training steps, got {num_training_steps}")
    warmup = min(num_warmup_steps, num_training_steps)
    decay = min(math.ceil(decay_ratio * num_training_steps), num_training_steps - warmup)
    return warmup, num_training_steps - warmup - decay, decay


def create_wsd_schedule(
    optimizer: Optimizer,
    num_training_steps: int,
    num_warmup_steps: int,
    decay_ratio: float = 0.2,
    decay_type: str = "1-sqrt",
    min_lr_ratio: float = 0.0,
):
    """LambdaLR: linear warmup, flat at the peak, then `decay_type` down to `min_lr_ratio` x peak."""
    warmup, stable, decay = wsd_phase_steps(num_training_steps, num_warmup_steps, decay_ratio)
    return get_wsd_schedule(
        optimizer,
        num_warmup_steps=warmup,
        num_decay_steps=decay,
        num_stable_steps=stable,
        decay_type=decay_type,
        min_lr_ratio=min_lr_ratio,
    )


# The hidden size of benchmarks/bench_time_to_loss.py's model, at which the pretraining learning rate was swept.
LR_REFERENCE_HIDDEN = 384


def scaled_learning_rate(base: float, hidden_size: int | None) -> float:
    """The default peak learning rate for pretraining a model of `hidden_size`: `base` (swept best at hidden 384,
    docs/training.md) times sqrt(384 / hidden_size) for wider models, never above `base`: an extrapolation between
    keeping the rate (too high for 2B-16B with AdamW) and muP's 1 / width."""
    if not hidden_size or hidden_size <= LR_REFERENCE_HIDDEN:
        return base
    return base * math.sqrt(LR_REFERENCE_HIDDEN / hidden_size)
