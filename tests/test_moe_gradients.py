"""MoE gradients: every parameter gets one when experts sit idle, activation checkpointing gives the same
gradients with the router losses, and a warning when a checkpointing mode leaves the router losses none."""

import pytest
import torch

from .conftest import EXPERTS_IMPLEMENTATIONS, moe_model


@pytest.mark.parametrize("impl", EXPERTS_IMPLEMENTATIONS)
def test_every_parameter_gets_a_gradient_when_experts_idle(impl):
    model = moe_model(shared_expert_intermediate_size=48, num_hidden_layers=3, mlp_only_layers=[0]).train()
    model.set_experts_implementation(impl)
    ids = torch.tensor([[5]])  # one token, top-2 of 4: two experts per layer get nothing
    out = model(ids, labels=ids, shift_labels=torch.tensor([[7]]), use_cache=False)  # the one token predicts 7
    out.loss.backward()
    missing = [name for name, param in model.named_parameters() if param.grad is None]
    assert not missing
    for layer in model.model.layers[1:]:
        per_expert = layer.mlp.experts.down_proj.grad.flatten(1).abs().sum(-1)  # [experts]
        assert (per_expert == 0).sum() == 2 and (per_expert > 0).sum() == 2


def test_gradient_checkpointing_gives_same_gradients_with_router_losses():
    model = moe_model(router_z_loss_coef=0.01, shared_expert_intermediate_size=48).train()
    ids = torch.randint(3, 128, (2, 16))
    model(ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    out = model(ids, labels=ids)
    assert out.aux_loss.requires_grad
    out.loss.backward()
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, plain[name], atol=1e-6), name


def test_warns_when_router_losses_lose_their_gradient(caplog):
    from transformers.utils import logging as hf_logging

    model = moe_model().train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    ids = torch.randint(3, 128, (1, 8))
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            out = model(ids, labels=ids, use_cache=False)
    finally:
        hf_logging.disable_propagation()
    assert not out.aux_loss.requires_grad
    assert "router losses have no gradient" in caplog.text
