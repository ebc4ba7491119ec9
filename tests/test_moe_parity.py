"""MoE MoaiForCausalLM against transformers' Qwen3MoeForCausalLM holding the same random weights."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from moai_llm import MoaiForCausalLM
from moai_llm.export import qwen3_moe_config_from
from moai_llm.moe import MoaiMoeCausalLMOutputWithPast

from .conftest import tiny_config

LAYOUTS = {"all-moe": {}, "first-dense": {"num_hidden_layers": 3, "mlp_only_layers": [0]}}


def _pair(**overrides):
    config = tiny_config(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, **overrides)
    torch.manual_seed(0)
    model = MoaiForCausalLM(config).eval()
    reference = Qwen3MoeForCausalLM(qwen3_moe_config_from(config)).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    return model, reference


@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
def test_logits_aux_loss_and_loss_match_qwen3_moe(layout):
    model, reference = _pair(**LAYOUTS[layout])
    ids = torch.randint(3, 128, (2, 40))
    ours, theirs = model(ids), reference(ids)
    assert isinstance(ours, MoaiMoeCausalLMOutputWithPast)
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5
    assert torch.equal(ours.aux_loss, load_balancing_loss_func(theirs.router_logits, 4, 2))
    assert torch.equal(ours.aux_loss, theirs.aux_loss)
    assert (
        len(ours.router_logits)
        == len(theirs.router_logits)
        == model.config.num_hidden_layers - len(model.config.mlp_only_layers)
    )
    fused, ref = model(ids, labels=ids), reference(ids, labels=ids)
    assert fused.logits is None
    assert abs(fused.loss.item() - ref.loss.item()) <= 1e-6 * ref.loss.item()
    model.config.loss_chunk_size = 0  # plain path: transformers' own loss on full logits
    assert torch.equal(model(ids, labels=ids).loss, ref.loss)


def test_router_logits_off_gives_qwen3_moes_plain_loss():
    model, reference = _pair()
    reference.config.output_router_logits = False
    model.config.loss_chunk_size = 0
    ids = torch.randint(3, 128, (2, 16))
    ours = model(ids, labels=ids, output_router_logits=False)
    assert ours.aux_loss is None and ours.router_logits is None and ours.expert_load is None
    assert torch.equal(ours.loss, reference(ids, labels=ids).loss)


def test_state_dict_loads_both_ways_strict():
    model, reference = _pair()
    assert list(model.state_dict()) == list(reference.state_dict())
    torch.manual_seed(1)
    fresh = Qwen3MoeForCausalLM(reference.config).eval()  # other random weights, Qwen3-MoE's init
    model.load_state_dict(fresh.state_dict(), strict=True)
    ids = torch.randint(3, 128, (1, 12))
    assert (model(ids).logits - fresh(ids).logits).abs().max() <= 1e-5


def test_greedy_generation_matches_qwen3_moe_with_left_padding():
    model, reference = _pair()
    # Qwen3-MoE's load_balancing_loss_func fails on a cached step (its 2-D mask also covers the past tokens), so its
    # router logits stay off; ours are asked for, and count the mask's last columns.
    reference.config.output_router_logits = False
    ids = torch.randint(3, 128, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :5] = 0
    ids[mask == 0] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ours = model.generate(ids, **kwargs, output_router_logits=True)
    assert torch.equal(ours, reference.generate(ids, **kwargs))


@torch.no_grad()
def test_cache_decoding_equals_full_forward_and_counts_new_tokens():
    model, _ = _pair()
    ids = torch.randint(3, 128, (2, 12))
    mask = torch.ones_like(ids)
    full = model(ids, attention_mask=mask)
    out = model(ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True)
    step = model(ids[:, -1:], attention_mask=mask, cache=out.cache, use_cache=True)
    assert (full.logits[:, -1] - step.logits[:, -1]).abs().max() <= 1e-5
    assert step.router_logits[0].shape == (2, 4)  # one new token per row
    assert torch.allclose(step.expert_load.sum(-1), torch.ones(2))


def test_checkpoint_files_are_qwen3_moes_and_load_both_ways(tmp_path):
    model, reference = _pair()
    model.save_pretrained(tmp_path / "moai")
    reference.save_pretrained(tmp_path / "qwen3_moe")
    assert (tmp_path / "moai" / "moe.py").is_file()  # shipped as remote code with modeling_moai.py
    config = json.loads((tmp_path / "moai" / "config.json").read_text())
    assert config["num_experts"] == 4 and config["output_router_logits"] is True
    # one tensor per expert on disk, exactly Qwen3-MoE's file layout
    keys = {name: set(safe_open(tmp_path / name / "model.safetensors", "pt").keys()) for name in ("moai", "qwen3_moe")}
    assert keys["moai"] == keys["qwen3_moe"] and "model.layers.0.mlp.experts.3.gate_proj.weight" in keys["moai"]
    ids = torch.randint(3, 128, (1, 10))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "moai")
    assert isinstance(loaded, MoaiForCausalLM) and torch.equal(loaded(ids).logits, model(ids).logits)
    from_qwen = MoaiForCausalLM.from_pretrained(tmp_path / "qwen3_moe")
    assert from_qwen.config.num_experts == 4 and from_qwen.config.model_type == "moai"
    assert torch.equal(from_qwen(ids).logits, model(ids).logits)
    qwen3_moe_config_from(model.config).save_pretrained(tmp_path / "moai")  # same files, Qwen3-MoE's config.json
    as_qwen = Qwen3MoeForCausalLM.from_pretrained(tmp_path / "moai")
    assert torch.equal(as_qwen(ids).logits, model(ids).logits)


def test_generate_skips_router_bookkeeping_unless_asked():
    model, _ = _pair()
    seen = []
    model.register_forward_hook(lambda mod, args, kwargs, out: seen.append(out.aux_loss), with_kwargs=True)
    ids = torch.randint(3, 128, (1, 5))
    default = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert len(seen) == 3 and all(aux is None for aux in seen)  # generate never returns router logits
    seen.clear()
    asked = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0, output_router_logits=True)
    assert torch.equal(default, asked) and all(aux is not None for aux in seen)
