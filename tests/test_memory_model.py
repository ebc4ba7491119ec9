"""moai_llm/training/memory.py against measured peaks: the estimate of one training step's tensor memory is within
15% of the live tensor storages measured on CPU (memory_meter.LiveTensorBytes) for dense, MoE, mixed precision,
checkpointed, eager-attention and plain-logits runs; and the arithmetic of the model states per engine."""

import json

import pytest

from moai_llm.training.memory import Setup, Shape, estimate
from moai_llm.training.memory_meter import LiveTensorBytes, measure_step_peak

from .conftest import REPO

SMALL = {
    **json.loads((REPO / "configs" / "model_config_tiny.json").read_text()),
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "num_hidden_layers": 3,
    "vocab_size": 4096,
}
MOE = {
    **json.loads((REPO / "configs" / "model_config_moe_tiny.json").read_text()),
    "hidden_size": 128,
    "num_hidden_layers": 3,
    "moe_intermediate_size": 128,
    "shared_expert_intermediate_size": 128,
    "vocab_size": 4096,
}
CPU = {"cuda": False, "attention": "sdpa", "seq_len": 256}


@pytest.mark.integration  # six measured training steps: ~40 s on a shared 2-core machine
@pytest.mark.parametrize(
    "config, setup",
    [
        (SMALL, Setup(micro_batch=2, mixed=False, **CPU)),
        (SMALL, Setup(micro_batch=4, mixed=True, **CPU)),
        (SMALL, Setup(micro_batch=4, mixed=False, gradient_checkpointing=True, **CPU)),
        (SMALL, Setup(micro_batch=2, mixed=False, loss_chunk=0, **CPU)),
        (SMALL, Setup(micro_batch=2, mixed=False, **{**CPU, "attention": "eager"})),
        (MOE, Setup(micro_batch=2, mixed=False, **CPU)),
    ],
    ids=["fp32", "bf16-autocast", "checkpointing", "plain-logits", "eager", "moe"],
)
def test_estimate_is_within_15_percent_of_the_measured_peak(config, setup):
    estimated = estimate(Shape.from_config(config), setup).tensor_bytes
    measured = measure_step_peak(config, setup)
    assert 0.85 <= estimated / measured <= 1.15, (estimated, measured)


def test_the_meter_counts_live_storages_once():
    import torch

    with LiveTensorBytes() as meter:
        a = torch.zeros(1000)  # 4,000 bytes
        view = a[:10]
        b = torch.ones(500)  # 2,000 bytes
        del b
        c = torch.ones(250)  # 1,000 bytes
    assert meter.peak == 6000 and view.untyped_storage().nbytes() == 4000 and c.numel() == 250


def test_model_states_per_engine():
    shape = Shape.from_file(str(REPO / "configs" / "model_config_16b.json"))
    params = shape.params()
    assert 15.5e9 < params < 16.5e9
    base = {"micro_batch": 1, "seq_len": 4096, "gradient_checkpointing": True}
    ddp = estimate(shape, Setup(engine="ddp", world=8, **base)).items
    assert ddp["weights (fp32)"] + ddp["gradients (fp32)"] + ddp["AdamW states (fp32)"] == 16 * params
    assert ddp["bf16 weight copies (autocast cache)"] == 2 * params
    zero3 = estimate(shape, Setup(engine="zero3", world=8, **base)).items
    assert zero3["weights (fp32)"] + zero3["gradients (fp32)"] + zero3["AdamW states (fp32)"] == 16 * params / 8
    zero2 = estimate(shape, Setup(engine="zero2", world=8, **base)).items
    assert zero2["gathered bf16 weights"] == 2 * params and zero2["AdamW states (fp32)"] == 8 * params / 8
    lora = estimate(shape, Setup(engine="ddp", lora_rank=16, **base)).items
    assert lora["frozen base weights"] == 2 * params and lora["AdamW states (fp32)"] < 8 * params / 100
    assert "fused loss: head gradient (fp32)" not in lora  # a frozen head has no gradient buffer


@pytest.mark.integration  # a whole train.py run
def test_a_run_logs_the_estimate_and_records_the_measured_peak(tmp_path, caplog):
    """train.py: the estimate for the run it was given at the start, the measured peak next to it at the end."""
    import logging

    from .train_helpers import fast_args, run_inprocess, write_tiny_config

    config = write_tiny_config(tmp_path)
    with caplog.at_level(logging.INFO, logger="moai_llm"):
        result = run_inprocess(
            fast_args(tmp_path / "run", config, "--max_steps", "2", "--activation_checkpointing", "true")
        )
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory estimate per device")]
    assert len(started) == 1
    assert "(ddp over 1, micro-batch 2 x 64 tokens, sdpa attention, gradient checkpointing)" in started[0]
    assert "weights (fp32): " in started[0] and "total: " in started[0]
    metrics = json.loads((tmp_path / "run" / "all_results.json").read_text())
    expected = estimate(
        Shape.from_file(config),
        Setup(micro_batch=2, seq_len=64, mixed=False, gradient_checkpointing=True, attention="sdpa", cuda=False),
    ).total
    assert metrics["memory_estimate_gb"] == round(expected / 1e9, 3) and metrics["memory_peak_gb"] > 0
    assert result is not None
