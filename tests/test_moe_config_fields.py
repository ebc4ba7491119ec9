"""The MoE fields of MoaiConfig: errors that name the field and value, dense by default, which layers become MoE
blocks (the shipped MoE config files are checked in test_moe_configs.py)."""

import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.modeling_moai import Qwen3MLP
from moai_llm.moe import MoaiSharedExpertMoeBlock, MoaiSparseMoeBlock

from .conftest import moe_config, tiny_config


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(num_experts_per_tok=5), ["num_experts_per_tok=5", "num_experts=4"]),
        (dict(num_experts_per_tok=0), ["num_experts_per_tok=0"]),
        (dict(num_experts=-1), ["num_experts", "-1"]),
        (dict(moe_intermediate_size=None), ["moe_intermediate_size", "None"]),
        (dict(moe_intermediate_size=-8), ["moe_intermediate_size", "-8"]),
        (dict(shared_expert_intermediate_size=-1), ["shared_expert_intermediate_size", "-1"]),
        (dict(mlp_only_layers=[0, 2]), ["mlp_only_layers", "[2]", "num_hidden_layers=2"]),
        (dict(mlp_only_layers=[-1]), ["mlp_only_layers", "[-1]"]),
        (dict(decoder_sparse_step=0), ["decoder_sparse_step", "0"]),
        (dict(decoder_sparse_step=3), ["no layer is MoE", "decoder_sparse_step=3"]),
        (dict(router_aux_loss_coef=-0.1), ["router_aux_loss_coef", "-0.1"]),
        (dict(router_z_loss_coef=-1.0), ["router_z_loss_coef"]),
        (dict(router_jitter_noise=1.5), ["router_jitter_noise", "1.5"]),
    ],
)
def test_validation_errors_name_field_and_value(overrides, words):
    with pytest.raises(ValueError) as err:
        moe_config(**overrides)
    for word in words:
        assert word in str(err.value)


def test_dense_when_no_experts():
    config = tiny_config()
    assert config.num_experts == 0 and config.output_router_logits is False
    model = MoaiForCausalLM(config)
    assert all(type(layer.mlp) is Qwen3MLP for layer in model.model.layers)
    out = model(torch.randint(3, 128, (1, 6)))
    assert type(out).__name__ == "CausalLMOutputWithPast"
    assert moe_config().output_router_logits is True  # MoE: router losses on unless turned off


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(num_hidden_layers=4), ["moe", "moe", "moe", "moe"]),
        (dict(num_hidden_layers=4, decoder_sparse_step=2), ["mlp", "moe", "mlp", "moe"]),
        (dict(num_hidden_layers=4, mlp_only_layers=[0]), ["mlp", "moe", "moe", "moe"]),
        (dict(num_hidden_layers=4, mlp_only_layers=[0], shared_expert_intermediate_size=48), ["mlp"] + ["shared"] * 3),
    ],
)
def test_layer_patterns_build_expected_modules(overrides, expected):
    kinds = {Qwen3MLP: "mlp", MoaiSparseMoeBlock: "moe", MoaiSharedExpertMoeBlock: "shared"}
    model = MoaiForCausalLM(moe_config(**overrides))
    assert [kinds[type(layer.mlp)] for layer in model.model.layers] == expected
    out = model(torch.randint(3, 128, (1, 5)))
    assert len(out.router_logits) == expected.count("moe") + expected.count("shared")
    assert out.expert_load.shape == (len(out.router_logits), 4)
