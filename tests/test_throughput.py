"""The throughput numbers of the training log (docs/training.md, Logs) against hand computation: tokens, labelled
tokens and positions counted from the batches, FLOPs per token from the model's own matmul weights, MFU from
--peak_tflops."""

import json
from unittest import mock

import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.training import callbacks
from moai_llm.training.callbacks import ThroughputCallback, detect_peak_tflops, flops_per_token

from .conftest import moe_config, tiny_config
from .train_helpers import fast_args, run_inprocess, write_tiny_config


def flops_by_hand(model: MoaiForCausalLM, seq_len: int) -> float:
    """PaLM appendix B: 6 x the weights one token multiplies by (every Linear, the LM head included; for MoE only
    top-k experts of each layer) + 12 x layers x heads x head_dim x sequence length for attention scores."""
    config = model.config
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    for layer in model.model.layers:
        experts = getattr(layer.mlp, "experts", None)
        if experts is not None:  # the router and fused experts are Parameters, not Linears: top-k experts count
            per_expert = (experts.gate_up_proj.numel() + experts.down_proj.numel()) // config.num_experts
            matmul += config.num_experts_per_tok * per_expert + layer.mlp.gate.weight.numel()
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    return 6.0 * matmul + 12.0 * layers * heads * config.head_dim * seq_len


@pytest.mark.parametrize(
    "config", [tiny_config(), moe_config(shared_expert_intermediate_size=48)], ids=["dense", "moe"]
)
def test_flops_per_token_is_six_times_the_weights_a_token_uses_plus_attention(config):
    with torch.device("meta"):
        model = MoaiForCausalLM(config)
    assert flops_per_token(config, 64) == flops_by_hand(model, 64)


def test_logged_values_from_the_batches_and_the_clock():
    """Two micro-batches in 2.0 s on each of 2 ranks (no process group: each rank counts as this one)."""
    meter = ThroughputCallback(flops_per_token=3e9, peak_tflops=100.0, world_size=2)
    with mock.patch.object(callbacks.time, "perf_counter", return_value=10.0):
        meter.on_train_begin(None, mock.Mock(log_history=[]), None)
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])  # 5 real tokens in 8 positions
    labels = torch.tensor([[-100, 6, 7, -100], [8, 9, -100, -100]])  # shifted: 6, 7 and 9 carry a label
    meter.observe(ids, labels, pad_token_id=0)
    meter.observe(ids, labels, pad_token_id=0)
    with mock.patch.object(callbacks.time, "perf_counter", return_value=12.0):
        logs = meter.pop_logs()
    tokens, useful, slots = 2 * 10, 2 * 6, 2 * 16  # both micro-batches, both ranks
    assert logs["tokens_seen"] == tokens
    assert logs["tokens_per_second"] == tokens / 2.0
    assert logs["useful_tokens_per_second"] == useful / 2.0
    assert logs["packing_efficiency"] == round(tokens / slots, 4)
    achieved = tokens / 2.0 / 2 * 3e9 / 1e12  # per device
    assert logs["tflops_per_device"] == pytest.approx(achieved, abs=5e-5)
    assert logs["mfu"] == pytest.approx(achieved / 100.0, abs=5e-5)


def test_peak_is_known_for_named_gpus_only():
    with mock.patch("torch.cuda.is_available", return_value=True):
        with mock.patch("torch.cuda.get_device_name", return_value="NVIDIA H100 80GB HBM3"):
            assert detect_peak_tflops() == 989.0
        with mock.patch("torch.cuda.get_device_name", return_value="Some Future GPU"):
            assert detect_peak_tflops() is None
    with mock.patch("torch.cuda.is_available", return_value=False):
        assert detect_peak_tflops() is None


@pytest.mark.integration  # a whole train.py run
def test_a_training_log_carries_these_numbers(tmp_path):
    """train.py's log lines: tokens_seen grows by each step's real tokens (packed rows of 64, 2 per step: packing
    efficiency is that over 128 positions), and MFU x --peak_tflops / tokens per second is the FLOPs per token."""
    config_path = write_tiny_config(tmp_path)
    run_inprocess(fast_args(tmp_path / "run", config_path, "--max_steps", "3", "--peak_tflops", "0.001"))
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "loss" in entry]
    assert len(logged) == 3
    with torch.device("meta"):
        model = MoaiForCausalLM(tiny_config(vocab_size=8192))
    expected_flops = flops_by_hand(model, 64)
    seen = 0
    for entry in logged:
        step_tokens = entry["tokens_seen"] - seen
        seen = entry["tokens_seen"]
        assert 0 < step_tokens <= 128 and entry["packing_efficiency"] == round(step_tokens / 128, 4)
        assert entry["useful_tokens_per_second"] < entry["tokens_per_second"]  # first tokens have no label
        flops = entry["mfu"] * 0.001 * 1e12 / entry["tokens_per_second"]
        assert flops == pytest.approx(expected_flops, rel=2e-3)  # mfu is rounded to 4 decimals
