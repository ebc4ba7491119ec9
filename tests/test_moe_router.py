"""Router terms: aux and z losses against transformers' references, only real tokens counted (padding, packed
rows), expert load as the router's own choices, balance metrics, jitter noise on the routing only."""

import pytest
import torch
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func
from transformers.models.switch_transformers.modeling_switch_transformers import router_z_loss_func

from moai_llm.moe import MoaiSparseMoeBlock, balance_metrics, expert_load, router_losses

from .conftest import moe_model


def test_router_losses_match_transformers_references():
    model = moe_model(router_z_loss_coef=0.01)
    ids = torch.randint(3, 128, (2, 10))
    out = model(ids, labels=ids)
    aux, z = router_losses(out.router_logits, model.config)
    assert torch.equal(out.aux_loss, aux)
    assert torch.equal(aux, load_balancing_loss_func(out.router_logits, 4, 2))
    pooled = torch.cat(out.router_logits)[None]  # [1, layers * tokens, experts]
    assert torch.allclose(z, router_z_loss_func(pooled), rtol=1e-6)
    lm_loss = model(ids, labels=ids, output_router_logits=False).loss
    assert torch.allclose(out.loss, lm_loss + 0.001 * aux + 0.01 * z, rtol=1e-6)


def _pooled_reference(model, docs):
    """Router losses and load over the real tokens only: each document run alone, router logits pooled."""
    runs = [model(doc[None]).router_logits for doc in docs]
    logits = tuple(torch.cat(layer) for layer in zip(*runs))  # per layer: [all real tokens, experts]
    return (*router_losses(logits, model.config), expert_load(logits, 2))


def _assert_router_outputs(out, reference):
    aux, z, load = reference
    assert abs(out.aux_loss.item() - aux.item()) <= 1e-6
    assert abs(out.router_z_loss.item() - z.item()) <= 1e-6
    assert (out.expert_load - load).abs().max() <= 1e-6


@torch.no_grad()
@pytest.mark.parametrize("marked_by", ["attention_mask", "pad_token"])
def test_padding_does_not_change_router_losses_of_real_tokens(marked_by):
    model = moe_model()
    torch.manual_seed(1)
    docs = [torch.randint(3, 128, (12,)), torch.randint(3, 128, (7,))]
    ids = torch.zeros(2, 12, dtype=torch.long)  # pad id 0, right padding
    mask = torch.zeros(2, 12, dtype=torch.long)
    for row, doc in enumerate(docs):
        ids[row, : len(doc)] = doc
        mask[row, : len(doc)] = 1
    if marked_by == "attention_mask":
        ids[1, 7:] = 9  # a real token id: only the mask says these are padding
        out = model(ids, attention_mask=mask)
    else:
        out = model(ids)
    reference = _pooled_reference(model, docs)
    _assert_router_outputs(out, reference)
    assert abs(load_balancing_loss_func(out.router_logits, 4, 2).item() - reference[0].item()) > 1e-4  # unmasked


@torch.no_grad()
def test_packed_row_router_losses_equal_documents_alone():
    model = moe_model()
    torch.manual_seed(2)
    docs = [torch.randint(3, 128, (n,)) for n in (7, 4, 9)]
    pad = 4
    ids = torch.cat([*docs, torch.zeros(pad, dtype=torch.long)])[None]
    position_ids = torch.cat([torch.arange(len(d)) for d in docs] + [torch.arange(pad)])[None]
    out = model(ids, position_ids=position_ids)
    _assert_router_outputs(out, _pooled_reference(model, docs))


@torch.no_grad()
def test_expert_load_counts_the_routers_own_choices():
    model = moe_model(num_hidden_layers=3, mlp_only_layers=[1])
    chosen = []
    hooks = [
        layer.mlp.gate.register_forward_hook(lambda mod, args, out: chosen.append(out[2]))
        for layer in model.model.layers
        if isinstance(layer.mlp, MoaiSparseMoeBlock)
    ]
    ids = torch.randint(3, 128, (3, 11))
    load = model(ids).expert_load
    for hook in hooks:
        hook.remove()
    expected = torch.stack([torch.bincount(c.flatten(), minlength=4) / c.numel() for c in chosen])
    assert torch.allclose(load, expected) and torch.allclose(load.sum(-1), torch.ones(2))
    assert not load.requires_grad


def test_balance_metrics():
    load = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.1, 0.2, 0.2]])
    metrics = balance_metrics(load)
    assert metrics["moe/max_load_over_mean"] == pytest.approx(2.0)
    assert metrics["moe/min_load_over_mean"] == pytest.approx(0.4)
    assert metrics["moe/max_min_load_ratio"] == pytest.approx(5.0)
    assert balance_metrics(torch.tensor([[1.0, 0.0]]))["moe/max_min_load_ratio"] == float("inf")


def test_router_jitter_only_in_training_and_only_for_the_router():
    model = moe_model(router_jitter_noise=0.5)
    plain = moe_model()
    ids = torch.randint(3, 128, (1, 12))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)  # eval: no noise
        model.train()
        torch.manual_seed(3)
        noisy = model(ids).router_logits[0]
    assert not torch.allclose(noisy, plain(ids).router_logits[0])
    block = model.model.layers[0].mlp
    x = torch.randn(1, 6, 64)
    torch.manual_seed(4)
    _, weights, chosen = block.gate(x.view(-1, 64))
    torch.manual_seed(4)  # same noise: the experts must see the clean x with the noisy routing
    assert torch.allclose(block(x).view(-1, 64), block.experts(x.view(-1, 64), chosen, weights), atol=1e-6)
