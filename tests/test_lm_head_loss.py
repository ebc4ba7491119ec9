"""The fused loss at the output projection: computed inside `lm_head`'s forward (so FSDP2 / ZeRO-3 gather a sharded
weight for it), and without weight-gradient work when the weight is frozen."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from moai_llm import MoaiForCausalLM
from moai_llm.losses import fused_linear_cross_entropy
from moai_llm.modeling_moai import MoaiLMHead

from .conftest import tiny_config
from .distributed_helpers import torchrun

VOCAB, HIDDEN, TOKENS = 96, 16, 40


class OutputShapes(TorchDispatchMode):
    """Records the shape of every tensor each aten op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [(str(func), tuple(t.shape)) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


def _frozen_case(weight_requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(TOKENS, HIDDEN, generator=g, requires_grad=True)
    weight = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.5).requires_grad_(weight_requires_grad)
    labels = torch.randint(0, VOCAB, (TOKENS,), generator=g)
    labels[:5] = -100
    with OutputShapes() as recorder:
        fused_linear_cross_entropy(hidden, weight, labels, chunk_size=16).backward()
    return hidden, weight, labels, recorder.shapes


def test_frozen_weight_costs_no_weight_gradient_buffer_or_gemm():
    *_, trainable = _frozen_case(weight_requires_grad=True)
    assert any(shape == (VOCAB, HIDDEN) for _, shape in trainable)  # the recorder sees the gradient when it exists
    hidden, weight, labels, frozen = _frozen_case(weight_requires_grad=False)
    assert not [op for op, shape in frozen if shape == (VOCAB, HIDDEN)], "a [vocab, hidden] tensor was produced"
    assert weight.grad is None
    reference = hidden.detach().double().requires_grad_()
    F.cross_entropy(reference @ weight.double().T, labels, ignore_index=-100).backward()
    assert (hidden.grad.double() - reference.grad).abs().max() <= 1e-6 * reference.grad.abs().max()


def test_the_loss_runs_inside_the_lm_head_call():
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(loss_chunk_size=8))
    assert type(model.lm_head) is MoaiLMHead and list(model.state_dict())[-1] == "lm_head.weight"
    seen = []
    model.lm_head.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("labels") is not None or len(args) > 1), with_kwargs=True
    )
    ids = torch.randint(3, 128, (2, 10))
    out = model(ids, labels=ids)
    assert seen == [True] and out.logits is None  # the loss, from one call of the module, no logits
    model.resize_token_embeddings(160)  # builds a plain nn.Linear head: it stays fused
    assert type(model.lm_head) is MoaiLMHead and model.lm_head.weight.shape == (160, 64)


def test_a_peft_lora_on_lm_head_is_not_bypassed():
    """peft wraps lm_head: the loss must come from its logits (base + adapter), not from the base weight alone."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(loss_chunk_size=8))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head"], init_lora_weights=False))
    ids = torch.randint(3, 128, (2, 10))
    logits = model(ids).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 128), ids[:, 1:].reshape(-1))
    assert torch.allclose(model(ids, labels=ids).loss, expected, rtol=1e-5)


# Both ranks: the model with lm_head (untied) or lm_head + the tied embedding as its own FSDP2 unit, so the weight is
# a DTensor shard outside that unit's forward; loss and gathered gradients equal the unsharded model's (gradients
# averaged over the two ranks' batches, as FSDP reduces them).
SHARDED_HEAD = """
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from moai_llm import MoaiForCausalLM
from tests.conftest import tiny_config

dist.init_process_group("gloo")
rank = dist.get_rank()
for tied in (False, True):
    torch.manual_seed(0)
    config = tiny_config(tie_word_embeddings=tied, loss_chunk_size=8)
    reference = MoaiForCausalLM(config)
    model = MoaiForCausalLM(config)
    model.load_state_dict(reference.state_dict())
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(3, 128, (2, 12), generator=g) for _ in range(2)]  # batch r is rank r's
    losses = []
    for ids in batches:
        loss = reference(ids, labels=ids).loss
        (loss / 2).backward()
        losses.append(loss.item())
    fully_shard([model.model.embed_tokens, model.lm_head] if tied else model.lm_head)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert isinstance(model.lm_head.weight, DTensor) and model.lm_head.weight.to_local().shape[0] == 64
    loss = model(batches[rank], labels=batches[rank]).loss
    loss.backward()
    assert abs(loss.item() - losses[rank]) <= 1e-6 * losses[rank], (loss.item(), losses[rank])
    expected = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        grad = param.grad.full_tensor()
        assert torch.allclose(grad, expected[name].grad, rtol=1e-5, atol=1e-7), (tied, name)
    print(f"rank {rank} tied={tied}: ok", flush=True)
dist.destroy_process_group()
"""


@pytest.mark.integration
def test_fused_loss_with_fsdp2_sharded_lm_head_equals_unsharded(tmp_path):
    result = torchrun(SHARDED_HEAD, [], tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout[-4000:]
    assert all(f"rank {r} tied={t}: ok" in result.stdout for r in (0, 1) for t in (False, True))


def test_moai_lm_head_is_an_nn_linear():
    head = MoaiLMHead(4, 6, bias=True)
    assert isinstance(head, nn.Linear)
    x = torch.randn(3, 4)
    assert torch.equal(head(x), F.linear(x, head.weight, head.bias))
