"""MoaiForCausalLM against transformers' Qwen3ForCausalLM holding the same random weights."""

import pytest
import torch

from moai_llm import MoaiForCausalLM

from .conftest import qwen3_twin, tiny_config

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32.0, "beta_slow": 1.0}


def _pair(**overrides):
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(**overrides)).eval()
    return model, qwen3_twin(model)


@pytest.mark.parametrize("rope", [None, YARN], ids=["default", "yarn"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_logits_and_loss_match_qwen3(rope, tie):
    model, reference = _pair(rope_parameters=rope, tie_word_embeddings=tie)
    seq = 96 if rope else 48  # YaRN: beyond original_max_position_embeddings=32
    ids = torch.randint(3, 128, (2, seq))
    assert (model(ids).logits - reference(ids).logits).abs().max() <= 1e-5
    fused, ref = model(ids, labels=ids), reference(ids, labels=ids)
    assert fused.logits is None  # the fused loss never builds full logits
    assert abs(fused.loss.item() - ref.loss.item()) <= 1e-6 * ref.loss.item()
    model.config.loss_chunk_size = 0  # plain path: transformers' own loss on full logits
    assert torch.equal(model(ids, labels=ids).loss, ref.loss)
    if rope:
        assert model.model.rotary_emb.rope_type == "yarn"


def test_state_dict_keys_are_qwen3s():
    model, reference = _pair()
    assert list(model.state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_generate_matches_qwen3_with_left_padding(mode):
    model, reference = _pair()
    ids = torch.randint(3, 128, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :5] = 0
    ids[mask == 0] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    if mode == "beam":
        kwargs["num_beams"] = 3
    assert torch.equal(model.generate(ids, **kwargs), reference.generate(ids, **kwargs))


def test_sampling_is_seeded_and_matches_qwen3():
    model, reference = _pair()
    ids = torch.randint(3, 128, (2, 5))
    kwargs = dict(max_new_tokens=6, do_sample=True, top_k=20, temperature=0.8, pad_token_id=0)
    torch.manual_seed(7)
    ours = model.generate(ids, **kwargs)
    torch.manual_seed(7)
    theirs = reference.generate(ids, **kwargs)
    assert torch.equal(ours, theirs)


def test_cache_decoding_equals_full_forward():
    model, _ = _pair()
    ids = torch.randint(3, 128, (1, 12))
    full = model(ids).logits[:, -1]
    out = model(ids[:, :-1], use_cache=True)
    step = model(ids[:, -1:], cache=out.cache, use_cache=True).logits[:, -1]
    assert (full - step).abs().max() <= 1e-5


def test_gradient_checkpointing_gives_same_gradients():
    model, _ = _pair()
    model.train()
    ids = torch.randint(3, 128, (2, 16))
    model(ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, plain[name], atol=1e-6), name


@torch.no_grad()  # flex_attention has no backward on CPU
@pytest.mark.parametrize("impl", ["eager", "sdpa", "flex_attention"])
def test_attention_backends_agree(impl):
    model, _ = _pair()
    ids = torch.randint(3, 128, (2, 20))
    expected = model(ids).logits
    model.set_attn_implementation(impl)
    assert model.config._attn_implementation == impl
    assert (model(ids).logits - expected).abs().max() <= 1e-5


def test_model_declares_backend_support():
    assert MoaiForCausalLM._supports_sdpa and MoaiForCausalLM._supports_flash_attn
    assert MoaiForCausalLM._supports_flex_attn and MoaiForCausalLM.supports_gradient_checkpointing
    assert MoaiForCausalLM._no_split_modules == ["MoaiDecoderLayer"]
