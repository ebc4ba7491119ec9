"""--merge_lora merges into a float32 copy of the base whatever dtype the base was trained in: a bf16 base (how LoRA
loads it on a GPU) keeps deltas far below a bf16 step, and final_model is saved in float32."""

import torch

from moai_llm import MoaiForCausalLM
from moai_llm.training.lora import merge_adapters

from .conftest import tiny_config


def test_a_bf16_base_is_merged_in_float32(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = MoaiForCausalLM(tiny_config()).to(torch.bfloat16)  # the base as LoRA loads it on a GPU
    original = base.model.layers[0].self_attn.q_proj.weight.detach().float().clone()  # [out, in]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_A["default"].weight.fill_(1e-3)  # [r, in]
        layer.lora_B["default"].weight.fill_(1e-3)  # [out, r]: delta = B @ A = 4e-6 per weight
        delta = (layer.lora_B["default"].weight.float() @ layer.lora_A["default"].weight.float()).clone()
    model.save_pretrained(tmp_path / "adapter")
    merged = merge_adapters(model, str(tmp_path / "adapter"))
    weight = merged.model.layers[0].self_attn.q_proj.weight
    assert weight.dtype == torch.float32 and weight.device.type == "cpu"
    torch.testing.assert_close(weight.detach(), original + delta, rtol=0, atol=1e-9)
    in_place = (original.to(torch.bfloat16) + delta.to(torch.bfloat16)).float()  # peft's merge into the bf16 base
    assert (in_place == original).float().mean() > 0.9  # there the delta vanishes almost everywhere
