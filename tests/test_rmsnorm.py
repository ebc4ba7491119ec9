"""MoaiRMSNorm: the CPU path is Qwen3's; every path (CPU, and on CUDA the backend selected) matches float64 math."""

import pytest
import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from moai_llm.modeling_moai import MoaiRMSNorm, fused_rms_norm

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # relative to the largest reference value


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_path_equals_qwen3_rmsnorm(dtype):
    torch.manual_seed(0)
    ours, reference = MoaiRMSNorm(64, eps=1e-6), Qwen3RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        reference.weight.copy_(ours.weight)
    x = (torch.randn(3, 5, 64) * 10).to(dtype)
    assert torch.equal(ours.to(dtype)(x), reference.to(dtype)(x))


def assert_matches_float64(device: str, dtype: torch.dtype, hidden: int = 256, eps: float = 1e-6) -> None:
    """Forward and both gradients (input, weight) of MoaiRMSNorm against y = w * x / sqrt(mean(x^2) + eps) in float64.

    The weights are random (all ones would hide a norm that ignores them), the input is scaled so the norm matters.
    """
    torch.manual_seed(0)
    norm = MoaiRMSNorm(hidden, eps=eps).to(device=device, dtype=dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(hidden) * 0.5 + 1.0)
    x = (torch.randn(4, 32, hidden) * 3.0).to(device=device, dtype=dtype).requires_grad_()
    grad_out = torch.randn(4, 32, hidden).to(device=device, dtype=dtype)
    out = norm(x)
    out.backward(grad_out)

    x64 = x.detach().double().requires_grad_()
    w64 = norm.weight.detach().double().requires_grad_()
    ref = w64 * x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps)
    ref.backward(grad_out.double())

    pairs = (("output", out, ref), ("d_input", x.grad, x64.grad), ("d_weight", norm.weight.grad, w64.grad))
    for name, got, want in pairs:
        assert got is not None and got.dtype == dtype, name
        error = (got.double() - want.detach()).abs().max().item()
        assert error <= TOLERANCE[dtype] * want.abs().max().item(), (name, error)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_path_close_to_float64_reference(dtype):
    assert_matches_float64("cpu", dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_path_close_to_reference(dtype):
    """Whichever backend MoaiRMSNorm selected on this machine (flash-attn's kernel or Qwen3's forward)."""
    assert MoaiRMSNorm(8).fused is fused_rms_norm()
    assert_matches_float64("cuda", dtype)
