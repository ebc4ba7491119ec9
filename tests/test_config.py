import json
import re

import pytest
import torch

from moai_llm import MoaiConfig, MoaiForCausalLM
from moai_llm.moe import parameter_counts

from .conftest import REPO, tiny_config


def test_head_dim_derived_when_unset():
    assert tiny_config(head_dim=None).head_dim == 16


def test_num_key_value_heads_defaults_to_heads():
    assert tiny_config(num_key_value_heads=None).num_key_value_heads == 4


@pytest.mark.parametrize(
    "overrides, words",
    [
        (
            dict(hidden_size=3840, num_attention_heads=28, num_key_value_heads=4, head_dim=None),
            ["hidden_size=3840", "28"],
        ),
        (dict(num_attention_heads=4, num_key_value_heads=3), ["num_attention_heads=4", "num_key_value_heads=3"]),
        (dict(rope_parameters={"rope_type": "nope"}), ["rope_type='nope'"]),
        (dict(vocab_size=0), ["vocab_size", "0"]),
        (dict(hidden_size=-64), ["hidden_size", "-64"]),
        (dict(num_hidden_layers=0), ["num_hidden_layers"]),
        (dict(head_dim=0), ["head_dim"]),
        (dict(rope_scaling={"type": "yarn", "factor": 4.0}), ["original_max_position_embeddings"]),
        (dict(rope_parameters={"rope_type": "yarn", "original_max_position_embeddings": 64}), ["factor"]),
    ],
)
def test_validation_errors_name_field_and_value(overrides, words):
    with pytest.raises(ValueError) as err:
        tiny_config(**overrides)
    for word in words:
        assert word in str(err.value)


def test_explicit_head_dim_allows_indivisible_hidden():
    config = tiny_config(hidden_size=3840, num_attention_heads=28, num_key_value_heads=4, head_dim=128)
    assert config.head_dim == 128


def test_legacy_rope_scaling_is_normalised():
    config = tiny_config(
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "alpha": 1.0, "beta": 32.0}
    )
    rope = config.rope_parameters
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0
    assert rope["beta_slow"] == 1.0 and rope["beta_fast"] == 32.0
    assert rope["original_max_position_embeddings"] == 64
    assert "alpha" not in rope and "beta" not in rope and "type" not in rope
    reloaded = MoaiConfig.from_dict(config.to_dict())
    assert reloaded.rope_parameters == rope


def test_use_qk_norm_false_has_no_qk_norm_parameters():
    names = [n for n, _ in MoaiForCausalLM(tiny_config(use_qk_norm=False)).named_parameters()]
    assert not any("q_norm" in n or "k_norm" in n for n in names)
    names = [n for n, _ in MoaiForCausalLM(tiny_config()).named_parameters()]
    assert sum("q_norm" in n for n in names) == 2


def _documented_param_counts() -> dict[str, int]:
    counts = {}
    for line in (REPO / "docs" / "model.md").read_text(encoding="utf-8").splitlines():  # its Configs table
        match = re.match(r"\|\s*`configs/(model_config[\w]*\.json)`\s*\|.*?\|\s*([\d,]+)\s*\|", line)
        if match:
            counts[match.group(1)] = int(match.group(2).replace(",", ""))
    return counts


def _documented_moe_counts() -> dict[str, tuple[int, int]]:
    """`| configs/NAME | ... | total | active |` rows of docs/moe.md (Mixture of Experts)."""
    counts = {}
    for line in (REPO / "docs" / "moe.md").read_text(encoding="utf-8").splitlines():
        match = re.match(
            r"\|\s*`configs/(model_config_moe\w*\.json)`\s*\|[^|]*\|\s*([\d,]+)\s*\|\s*([\d,]+)\s*\|", line
        )
        if match:
            counts[match.group(1)] = (int(match.group(2).replace(",", "")), int(match.group(3).replace(",", "")))
    return counts


@pytest.mark.parametrize(
    "name",
    [
        "model_config_tiny.json",
        "model_config_2b.json",
        "model_config.json",
        "model_config_16b.json",
        "model_config_moe_tiny.json",
        "model_config_moe_a2b.json",
    ],
)
def test_config_parameter_count_matches_docs(name):
    data = json.loads((REPO / "configs" / name).read_text())
    config = MoaiConfig(**{k: v for k, v in data.items() if k != "model_type"})
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert "head_dim" in data, f"{name}: head_dim must be explicit"
    with torch.device("meta"):
        model = MoaiForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    assert _documented_param_counts().get(name) == total, f"docs/model.md: parameter count of {name} is not {total:,}"
    if config.num_experts:  # docs/moe.md: the total again, and the parameters one token uses
        assert parameter_counts(model)[0] == total
        assert _documented_moe_counts().get(name) == parameter_counts(model), f"docs/moe.md's MoE counts for {name}"
