"""MoE blocks against references: the shared-expert block by hand in float64 and against Qwen2-MoE's, and the
experts implementations (eager, grouped_mm, batched_mm) against each other."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2MoeConfig
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

from moai_llm import MoaiForCausalLM
from moai_llm.moe import MoaiSharedExpertMoeBlock

from .conftest import EXPERTS_IMPLEMENTATIONS, moe_config, moe_model


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
            hidden_size=64,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            norm_topk_prob=True,
        )
    )
    reference.load_state_dict(block.state_dict(), strict=True)
    x = torch.randn(2, 5, 64)
    assert (block(x) - reference(x)).abs().max() <= 1e-6


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
