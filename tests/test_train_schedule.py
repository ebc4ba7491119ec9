"""WSD schedule: warmup, flat and decay segments of the learning-rate trace, also through MoaiTrainer."""

import math

import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.training.arguments import MoaiTrainingArguments
from moai_llm.training.schedule import create_wsd_schedule, wsd_phase_steps
from moai_llm.training.trainer import MoaiTrainer

from .conftest import tiny_config


def trace(scheduler, optimizer, steps):
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


@pytest.mark.parametrize("decay_type", ["linear", "cosine", "1-sqrt"])
def test_wsd_segments(decay_type):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = create_wsd_schedule(optimizer, 100, 10, decay_ratio=0.2, decay_type=decay_type, min_lr_ratio=0.1)
    lr = trace(scheduler, optimizer, 100)
    assert wsd_phase_steps(100, 10, 0.2) == (10, 70, 20)
    warmup, flat, decay = lr[:10], lr[10:80], lr[80:]
    assert warmup[0] == pytest.approx(0.1) and all(a < b for a, b in zip(warmup, warmup[1:]))
    assert all(value == 1.0 for value in flat)
    assert decay[0] == 1.0 and all(a > b for a, b in zip(decay, decay[1:])) and decay[-1] > 0.1
    progress = 10 / 20
    expected = {
        "linear": 1 - progress,
        "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
        "1-sqrt": 1 - math.sqrt(progress),
    }[decay_type]
    assert decay[10] == pytest.approx(0.1 + 0.9 * expected)


def test_trainer_uses_wsd_from_arguments(tmp_path):
    args = MoaiTrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=2e-3,
        warmup_steps=0.1,
        wsd_decay_ratio=0.3,
        wsd_decay_type="linear",
        min_lr_ratio=0.0,
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
    )
    trainer = MoaiTrainer(model=MoaiForCausalLM(tiny_config()), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=50)
    lr = trace(trainer.lr_scheduler, trainer.optimizer, 50)
    assert lr[0] == 0.0 and lr[5] == pytest.approx(2e-3) and lr[34] == pytest.approx(2e-3)
    assert lr[35] == pytest.approx(2e-3) and lr[36] < 2e-3 and lr[-1] == pytest.approx(2e-3 / 15)


def test_other_schedules_still_work(tmp_path):
    args = MoaiTrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
    )
    trainer = MoaiTrainer(model=MoaiForCausalLM(tiny_config()), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    lr = trace(trainer.lr_scheduler, trainer.optimizer, 10)
    assert lr[0] == pytest.approx(1e-3) and lr[5] == pytest.approx(5e-4)


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], 1e-3),  # the tiny model (hidden 256): the swept rate
        (["--model_config", "configs/model_config_2b.json"], 1e-3 * math.sqrt(384 / 2048)),
        (["--model_config", "configs/model_config_16b.json"], 1e-3 * math.sqrt(384 / 5120)),
        (["--model_config", "configs/model_config_16b.json", "--learning_rate", "1e-3"], 1e-3),  # given: kept
        (["--model_config", "configs/model_config_2b.json", "--use_lora", "true"], 2e-4),  # adapters: not scaled
    ],
)
def test_default_pretraining_learning_rate_scales_with_width(flags, expected):
    from moai_llm.training.cli import parse_args

    assert parse_args(["--output_dir", "unused", *flags])[2].learning_rate == pytest.approx(expected)
