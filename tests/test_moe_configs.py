"""The shipped MoE configs: active parameters against the dense tiny, layer layout, Qwen3-MoE compatibility.
docs/moe.md's total and active counts are checked with every config's count in test_config.py."""

import json
import math

import pytest
import torch

from moai_llm import MoaiConfig, MoaiForCausalLM
from moai_llm.export import qwen3_moe_config_from
from moai_llm.moe import MoaiSharedExpertMoeBlock, parameter_counts

from .conftest import REPO

MOE_CONFIGS = ["model_config_moe_tiny.json", "model_config_moe_a2b.json"]


def _load(name: str) -> MoaiConfig:
    data = json.loads((REPO / "configs" / name).read_text())
    return MoaiConfig(**{k: v for k, v in data.items() if k != "model_type"})


def test_active_count_is_total_minus_unused_experts():
    config = _load("model_config_moe_tiny.json")
    with torch.device("meta"):
        model = MoaiForCausalLM(config)
    total, active = parameter_counts(model)
    per_expert = 3 * config.hidden_size * config.moe_intermediate_size  # gate, up, down
    moe_layers = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers))
    assert total - active == moe_layers * (config.num_experts - config.num_experts_per_tok) * per_expert
    with torch.device("meta"):
        dense_total, dense_active = parameter_counts(MoaiForCausalLM(_load("model_config_tiny.json")))
    assert dense_total == dense_active
    assert abs(active - dense_total) / dense_total < 0.01  # the MoE tiny costs per token what the dense tiny does


def test_tiny_moe_config_trains_a_step():
    torch.manual_seed(0)
    model = MoaiForCausalLM(_load("model_config_moe_tiny.json"))
    assert type(model.model.layers[0].mlp).__name__ == "Qwen3MLP"
    assert all(isinstance(layer.mlp, MoaiSharedExpertMoeBlock) for layer in model.model.layers[1:])
    ids = torch.randint(3, 8192, (2, 32))
    out = model(ids, labels=ids)
    assert out.expert_load.shape == (3, 8) and torch.allclose(out.expert_load.sum(-1), torch.ones(3))
    assert 2.0 <= out.aux_loss.item() < 2.5  # top-2: 2.0 at perfect balance, near it at initialisation
    assert out.router_z_loss.item() == pytest.approx(math.log(8) ** 2, rel=0.05)  # logsumexp of ~0 router logits
    out.loss.backward()
    for name, param in model.named_parameters():  # idle experts may get zeros; nothing else may
        assert param.grad is not None and bool(param.grad.isfinite().all()), name
        assert ".experts." in name or param.grad.abs().sum() > 0, name


def test_a2b_config_is_a_qwen3_moe_architecture():
    config = qwen3_moe_config_from(_load("model_config_moe_a2b.json"))
    assert config.num_experts == 64 and config.num_experts_per_tok == 8 and config.head_dim == 128
    with pytest.raises(ValueError, match="shared expert"):
        qwen3_moe_config_from(_load("model_config_moe_tiny.json"))
