"""Shared fixtures: tiny dense and MoE configs (hidden 64, 2 layers), the reference Qwen3 twin of a model."""

import os
from pathlib import Path

import pytest
import torch
from transformers import Qwen3ForCausalLM

import moai_llm  # noqa: F401  (registers the Auto classes)
from moai_llm import MoaiConfig, MoaiForCausalLM

REPO = Path(__file__).resolve().parents[1]
EXPERTS_IMPLEMENTATIONS = ["eager", "grouped_mm", "batched_mm"]  # transformers' experts backends
torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_config(**overrides) -> MoaiConfig:
    values = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    values.update(overrides)
    return MoaiConfig(**values)


def moe_config(**overrides) -> MoaiConfig:
    """The tiny config with 4 experts, top-2, expert width 32."""
    return tiny_config(**{"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, **overrides})


def moe_model(**overrides) -> MoaiForCausalLM:
    torch.manual_seed(0)
    return MoaiForCausalLM(moe_config(**overrides)).eval()


def qwen3_twin(model: MoaiForCausalLM) -> Qwen3ForCausalLM:
    """A transformers Qwen3ForCausalLM holding exactly `model`'s weights (strict load)."""
    from moai_llm.export import qwen3_config_from

    config = qwen3_config_from(model.config)
    config._attn_implementation = model.config._attn_implementation
    reference = Qwen3ForCausalLM(config).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    return reference


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return MoaiForCausalLM(tiny_config()).eval()


def shared_corpora() -> Path | None:
    """../shared/corpora beside the checkout when present (tests must not need it)."""
    for candidate in (REPO.parent / "shared" / "corpora", Path(os.environ.get("MOAI_CORPORA", "/nonexistent"))):
        if candidate.is_dir():
            return candidate
    return None
