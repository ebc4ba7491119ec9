"""MoE layers: config validation, layer patterns, shared expert by hand, router losses with padding and packing,
expert load, gradients (every parameter, checkpointing, DDP), experts implementations."""

import copy

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2MoeConfig
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func
from transformers.models.switch_transformers.modeling_switch_transformers import router_z_loss_func

from moai_llm import MoaiForCausalLM
from moai_llm.modeling_moai import Qwen3MLP
from moai_llm.moe import (
    MoaiSharedExpertMoeBlock,
    MoaiSparseMoeBlock,
    balance_metrics,
    expert_load,
    router_losses,
)

from .conftest import REPO, tiny_config

EXPERTS_IMPLEMENTATIONS = ["eager", "grouped_mm", "batched_mm"]


def moe_config(**overrides):
    return tiny_config(**{"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, **overrides})


def moe_model(**overrides) -> MoaiForCausalLM:
    torch.manual_seed(0)
    return MoaiForCausalLM(moe_config(**overrides)).eval()


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


def _block_by_hand(block, x):
    """Routed experts (softmax, top-k, renormalise, SwiGLU per expert) + sigmoid-gated shared expert, per token."""
    experts = block.experts
    probs = F.softmax(x @ block.gate.weight.T, dim=-1)  # [tokens, experts]
    weights, chosen = probs.topk(block.gate.top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t], chosen[t]):
            gate, up = (experts.gate_up_proj[e] @ x[t]).chunk(2)
            out[t] += w * (experts.down_proj[e] @ (F.silu(gate) * up))
    shared = block.shared_expert
    dense = shared.down_proj(F.silu(shared.gate_proj(x)) * shared.up_proj(x))
    return out + torch.sigmoid(block.shared_expert_gate(x)) * dense


@pytest.mark.parametrize("impl", EXPERTS_IMPLEMENTATIONS)
def test_shared_expert_block_equals_hand_computation_and_trains_everything(impl):
    config = moe_config(shared_expert_intermediate_size=48, initializer_range=0.2)
    config._experts_implementation = impl
    torch.manual_seed(0)
    block = MoaiForCausalLM(config).model.layers[0].mlp
    assert isinstance(block, MoaiSharedExpertMoeBlock)
    x = torch.randn(2, 5, 64)
    out = block(x)
    with torch.no_grad():
        expected = _block_by_hand(copy.deepcopy(block).double(), x.view(-1, 64).double()).view(2, 5, 64)
    assert (out - expected).abs().max() <= 1e-5  # fp32 block against a float64 reference
    out.pow(2).sum().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_shared_expert_block_is_qwen2_moes():
    config = moe_config(shared_expert_intermediate_size=48)
    torch.manual_seed(0)
    block = MoaiForCausalLM(config).model.layers[0].mlp
    reference = Qwen2MoeSparseMoeBlock(
        Qwen2MoeConfig(
            hidden_size=64, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=48, norm_topk_prob=True,
        )
    )
    reference.load_state_dict(block.state_dict(), strict=True)
    x = torch.randn(2, 5, 64)
    assert (block(x) - reference(x)).abs().max() <= 1e-6


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
    assert abs(out.z_loss.item() - z.item()) <= 1e-6
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


DDP_SCRIPT = """
import gc, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tests.test_moe import moe_model

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
model = moe_model(shared_expert_intermediate_size=48).train()
ddp = DistributedDataParallel(model, find_unused_parameters=False)
for token in (5, 9):
    ids = torch.tensor([[token]])
    ddp(ids, labels=ids, shift_labels=torch.tensor([[3]]), use_cache=False).loss.backward()
assert all(param.grad is not None for param in model.parameters())
del ddp  # the reducer must go before its process group: freeing it afterwards can hang in gloo's destructor
gc.collect()
dist.destroy_process_group()
print("ddp-ok")
"""


def test_ddp_without_unused_parameters(tmp_path):
    """Two DDP steps (gloo, 1 process, find_unused_parameters=False) with idle experts: DDP errors if a parameter
    was left out of the graph. In a subprocess with a timeout, so a gloo teardown problem cannot hang the suite."""
    result = subprocess.run([sys.executable, "-c", DDP_SCRIPT, str(tmp_path / "store")], cwd=REPO,
                            capture_output=True, text=True, timeout=180)
    assert "ddp-ok" in result.stdout, result.stderr[-3000:]


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


@pytest.mark.parametrize("impl", ["grouped_mm", "batched_mm"])
def test_experts_implementations_agree_with_eager(impl):
    model = moe_model(shared_expert_intermediate_size=48).train()
    assert model.config._experts_implementation == "grouped_mm"  # transformers' default, as for Qwen3-MoE
    ids = torch.randint(3, 128, (2, 12))
    results = {}
    for name in ("eager", impl):
        model.set_experts_implementation(name)
        assert model.model.layers[0].mlp.experts.config._experts_implementation == name
        model.zero_grad()
        out = model(ids, labels=ids, return_logits=True)
        out.loss.backward()
        results[name] = (out.logits, {n: p.grad.clone() for n, p in model.named_parameters()})
    assert (results["eager"][0] - results[impl][0]).abs().max() <= 1e-5
    for name, grad in results["eager"][1].items():
        assert torch.allclose(grad, results[impl][1][name], atol=1e-6), name
