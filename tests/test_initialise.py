"""A new model's weights are a function of (seed, module name) under the model's own `_init_weights` rule, so that a
sharded start (every rank creating its own shards, tests/test_sharded_train.py) equals a one-process build."""

import types

import pytest
import torch
from torch import nn

from moai_llm import MoaiForCausalLM
from moai_llm.training.run import new_model
from moai_llm.training.sharding import initialise, module_seed

from .conftest import moe_config, tiny_config


def build(config, seed=0):
    return new_model(config, types.SimpleNamespace(fsdp=[], seed=seed))


@pytest.mark.parametrize(
    "config",
    [
        tiny_config(vocab_size=4096, hidden_size=128, intermediate_size=512),
        tiny_config(vocab_size=4096, hidden_size=128, intermediate_size=512, tie_word_embeddings=True),
        moe_config(vocab_size=4096, hidden_size=128, moe_intermediate_size=128),
    ],
    ids=["dense", "tied", "moe"],
)
def test_the_rule_is_the_models_own_init(config):
    """Same tensors as transformers' init (`MoaiForCausalLM(config)`): normal(0, initializer_range) for linears,
    embeddings, experts and router, ones for norms, a zero padding row, the same RoPE buffers; a tied embedding
    stays one tensor."""
    torch.manual_seed(0)
    reference = MoaiForCausalLM(config)
    model = build(config)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == config.tie_word_embeddings
    weights, expected = model.state_dict(), reference.state_dict()
    assert weights.keys() == expected.keys()
    std = config.initializer_range
    for name, tensor in weights.items():
        assert tensor.shape == expected[name].shape and tensor.dtype == expected[name].dtype, name
        if expected[name].std() == 0:  # norms (ones), zero biases
            assert torch.equal(tensor, expected[name]), name
        else:
            sample = tensor[1:] if name.endswith("embed_tokens.weight") else tensor  # the zero padding row aside
            assert abs(sample.mean().item()) < 0.1 * std and abs(sample.std().item() / std - 1) < 0.05, name
            assert not torch.equal(tensor, expected[name]), name  # drawn here, not copied
    assert torch.equal(weights["model.embed_tokens.weight"][config.pad_token_id], torch.zeros(config.hidden_size))
    for (name, buffer), (_, reference_buffer) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(buffer, reference_buffer), name


def test_weights_are_a_function_of_the_seed_and_the_module_name():
    config = tiny_config(vocab_size=1024)
    first, again, other = build(config, 0).state_dict(), build(config, 0).state_dict(), build(config, 1).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not any(torch.equal(first[name], other[name]) for name in first if first[name].std() > 0)
    # Not of how many modules come before or after: a deeper model has the same first layers, embedding and head.
    deeper = build(tiny_config(vocab_size=1024, num_hidden_layers=4), 0).state_dict()
    assert all(torch.equal(first[name], deeper[name]) for name in first)
    # Same-shaped modules draw different values.
    assert not torch.equal(first["model.layers.0.mlp.up_proj.weight"], first["model.layers.1.mlp.up_proj.weight"])


def test_wrappers_do_not_change_a_modules_seed():
    """Activation checkpointing and torch.compile wrap modules: the seed follows the model's own module names."""
    plain = module_seed(3, "model.layers.0.mlp.up_proj")
    assert module_seed(3, "model.layers.0._checkpoint_wrapped_module.mlp.up_proj") == plain
    assert module_seed(3, "_orig_mod.model.layers.0.mlp.up_proj") == plain
    assert module_seed(4, "model.layers.0.mlp.up_proj") != plain


def test_a_tensor_the_init_rule_does_not_set_is_refused():
    model = build(tiny_config())
    model.model.layers[0].mlp.register_parameter("extra", nn.Parameter(torch.empty(3)))
    with pytest.raises(RuntimeError, match=r"_init_weights left model\.layers\.0\.mlp\.extra uninitialised"):
        initialise(model, 0)
