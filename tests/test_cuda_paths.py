"""The CUDA paths against their references: bf16 parity with Qwen3 / Qwen3-MoE, packed rows on sdpa, flex_attention
and flash-attn, the fused RMSNorm kernel, the fused loss against float64, NCCL. Marked `cuda`: they skip without a
GPU and run in the GPU suite (benchmarks/gpu, part 1).

Tolerances are relative norms, ||ours - reference|| / ||reference||: bf16 operands land between 1e-3 and 1e-2."""

import socket

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3MoeForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from moai_llm import MoaiForCausalLM
from moai_llm.export import qwen3_moe_config_from
from moai_llm.losses import causal_lm_loss
from moai_llm.modeling_moai import MoaiRMSNorm, fused_rms_norm

from .conftest import qwen3_twin, tiny_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")]
BF16_TOLERANCE = 1e-2  # ours vs the reference model, both in bf16 on the GPU
SEPARATE_TOLERANCE = 2e-2  # a packed document vs the same document alone (other kernel shapes, bf16)
CONFIG = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8)
CONFIG.update(num_key_value_heads=4, head_dim=32, max_position_embeddings=1024)


def relative(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.double(), reference.double()
    return ((ours - reference).norm() / reference.norm()).item()


def _on_gpu(model, impl="sdpa"):
    model.set_attn_implementation(impl)
    return model.to("cuda", torch.bfloat16).eval()


@torch.no_grad()
def test_dense_bf16_logits_and_loss_match_qwen3():
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(**CONFIG))
    reference = _on_gpu(qwen3_twin(model))
    model = _on_gpu(model)
    ids = torch.randint(3, 1024, (2, 256), device="cuda")
    assert relative(model(ids).logits, reference(ids).logits) <= BF16_TOLERANCE
    ours, theirs = model(ids, labels=ids).loss, reference(ids, labels=ids).loss
    assert abs(ours.item() - theirs.item()) <= 1e-2 * theirs.item()


@pytest.mark.parametrize("experts", ["grouped_mm", "eager"])
@torch.no_grad()
def test_moe_bf16_logits_and_aux_loss_match_qwen3_moe(experts):
    config = tiny_config(**CONFIG, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128)
    torch.manual_seed(0)
    model = MoaiForCausalLM(config)
    reference = Qwen3MoeForCausalLM(qwen3_moe_config_from(config))
    reference.load_state_dict(model.state_dict(), strict=True)
    model, reference = _on_gpu(model), _on_gpu(reference)
    model.set_experts_implementation(experts)
    reference.set_experts_implementation(experts)
    ids = torch.randint(3, 1024, (2, 128), device="cuda")
    ours, theirs = model(ids), reference(ids)
    assert relative(ours.logits, theirs.logits) <= BF16_TOLERANCE
    assert abs(ours.aux_loss.item() - theirs.aux_loss.item()) <= 1e-2 * theirs.aux_loss.item()


def _packed(lengths, vocab=1024):
    torch.manual_seed(1)
    docs = [torch.randint(3, vocab, (n,), device="cuda") for n in lengths]
    position_ids = torch.cat([torch.arange(n, device="cuda") for n in lengths])[None]
    return docs, torch.cat(docs)[None], position_ids


def _flash_attn_missing() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.parametrize(
    "impl",
    [
        "sdpa",
        "flex_attention",
        pytest.param(
            "flash_attention_2",
            marks=pytest.mark.skipif(_flash_attn_missing(), reason="flash-attn not installed"),
        ),
    ],
)
def test_packed_documents_are_isolated_and_train(impl):
    """Forward: each document of a packed row equals the document alone; backward: gradients reach every layer."""
    torch.manual_seed(0)
    model = _on_gpu(MoaiForCausalLM(tiny_config(**CONFIG)), impl)
    docs, ids, position_ids = _packed([200, 57, 311, 128])
    with torch.no_grad():
        packed = model(ids, position_ids=position_ids).logits[0]
        start = 0
        for doc in docs:
            alone = model(doc[None]).logits[0]
            assert relative(packed[start : start + len(doc)], alone) <= SEPARATE_TOLERANCE, (impl, start)
            start += len(doc)
    model.train()
    model(ids, position_ids=position_ids, labels=ids).loss.backward()
    grads = [p.grad for p in model.model.layers[0].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.skipif(fused_rms_norm() is None, reason="flash-attn not installed: MoaiRMSNorm uses the torch path")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_rmsnorm_kernel_matches_the_torch_path(dtype):
    torch.manual_seed(0)
    ours, reference = MoaiRMSNorm(1024).cuda(), Qwen3RMSNorm(1024).cuda()
    with torch.no_grad():
        ours.weight.normal_()
        reference.weight.copy_(ours.weight)
    x = (torch.randn(4, 512, 1024, device="cuda") * 3).to(dtype).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    out = ours.to(dtype)(x)
    expected = reference.double()(x_ref)
    assert relative(out, expected) <= (BF16_TOLERANCE if dtype == torch.bfloat16 else 1e-5)
    grad = torch.randn_like(expected)
    out.backward(grad.to(dtype))
    expected.backward(grad)
    assert relative(x.grad, x_ref.grad) <= (BF16_TOLERANCE if dtype == torch.bfloat16 else 1e-4)
    assert relative(ours.weight.grad, reference.weight.grad) <= (2e-2 if dtype == torch.bfloat16 else 1e-4)


def test_rmsnorm_on_cuda_is_qwen3s_without_the_kernel():
    """Without the kernel, CUDA tensors take Qwen3's own forward: bit-equal to Qwen3RMSNorm."""
    norm, reference = MoaiRMSNorm(256).cuda(), Qwen3RMSNorm(256).cuda()
    x = torch.randn(2, 8, 256, device="cuda", dtype=torch.bfloat16)
    if fused_rms_norm() is None:
        assert torch.equal(norm.to(torch.bfloat16)(x), reference.to(torch.bfloat16)(x))
    else:
        assert relative(norm.to(torch.bfloat16)(x), reference.to(torch.bfloat16)(x)) <= BF16_TOLERANCE


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_loss_matches_float64(dtype):
    """The fused projection + cross-entropy on the GPU against float64 on the same (rounded) inputs."""
    torch.manual_seed(0)
    tokens, hidden_size, vocab = 2048, 512, 32000
    hidden = (torch.randn(1, tokens, hidden_size, device="cuda")).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, device="cuda") * 0.05).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (1, tokens), device="cuda")
    labels[0, :100] = -100
    loss = causal_lm_loss(hidden, weight, labels, chunk_size=512)
    loss.backward()
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    logits = (h64 @ w64.T)[0, :-1]
    expected = F.cross_entropy(logits, labels[0, 1:], ignore_index=-100)
    expected.backward()
    tolerance = 5e-3 if dtype == torch.bfloat16 else 1e-4  # fp32: room for TF32 matmuls if a caller enables them
    assert abs(loss.item() - expected.item()) <= tolerance * expected.item()
    assert relative(hidden.grad, h64.grad) <= 10 * tolerance
    assert relative(weight.grad, w64.grad) <= 10 * tolerance


def test_bf16_autocast_step_keeps_fp32_weights():
    """What training does on a GPU: fp32 weights, bf16 autocast; the step moves the fp32 weights."""
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(**CONFIG)).cuda().train()
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    ids = torch.randint(3, 1024, (2, 128), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    torch.optim.AdamW(model.parameters(), lr=1e-5).step()
    after = model.model.layers[0].mlp.up_proj.weight
    assert after.dtype == torch.float32 and torch.isfinite(loss)
    assert (after != before).float().mean().item() > 0.99


def test_nccl_all_reduce_in_a_one_rank_group():
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.fail("this torch has no NCCL")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, 1, is_master=True)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        tensor = torch.arange(4, device="cuda", dtype=torch.float32)
        dist.all_reduce(tensor)
        assert tensor.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        dist.destroy_process_group()
