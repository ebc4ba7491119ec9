import pytest
import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from moai_llm.modeling_moai import MoaiRMSNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_path_equals_qwen3_rmsnorm(dtype):
    torch.manual_seed(0)
    ours, reference = MoaiRMSNorm(64, eps=1e-6), Qwen3RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        reference.weight.copy_(ours.weight)
    x = (torch.randn(3, 5, 64) * 10).to(dtype)
    assert torch.equal(ours.to(dtype)(x), reference.to(dtype)(x))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_path_close_to_reference():
    ours, reference = MoaiRMSNorm(256).cuda(), Qwen3RMSNorm(256).cuda()
    x = torch.randn(4, 32, 256, device="cuda", dtype=torch.bfloat16)
    assert torch.allclose(ours(x).float(), reference.to(torch.bfloat16)(x).float(), atol=2e-2, rtol=2e-2)
