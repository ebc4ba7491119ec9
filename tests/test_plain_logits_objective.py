"""The training objective is honoured when the loss is computed on full logits (`--loss_chunk_size 0`, or LoRA on
lm_head): focal, label smoothing and z-loss give the fused path's loss and gradients, not plain cross-entropy."""

import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.losses import Objective, objective_from_spec

from .conftest import tiny_config

OBJECTIVES = [
    {"type": "focal", "params": {"gamma": 2.0}},
    {"type": "label_smoothing", "params": {"label_smoothing": 0.1}},
    {"type": "cross_entropy", "params": {"z_loss_coef": 0.01}},
]


def batch(vocab: int):
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, vocab, (2, 16), generator=generator)
    labels = input_ids.clone()
    labels[1, 10:] = -100
    return input_ids, labels


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda spec: spec["type"] + str(list(spec["params"])))
def test_plain_logits_path_trains_the_configured_objective(objective):
    torch.manual_seed(0)
    fused = MoaiForCausalLM(tiny_config(loss_config=objective))
    plain = MoaiForCausalLM(tiny_config(loss_config=objective, loss_chunk_size=0))
    plain.load_state_dict(fused.state_dict())
    input_ids, labels = batch(fused.config.vocab_size)
    fused_loss = fused(input_ids=input_ids, labels=labels).loss
    plain_loss = plain(input_ids=input_ids, labels=labels).loss
    fused_loss.backward()
    plain_loss.backward()
    assert plain_loss.item() == pytest.approx(fused_loss.item(), rel=1e-5)
    for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        cross_entropy = MoaiForCausalLM(tiny_config(loss_chunk_size=0))
        cross_entropy.load_state_dict(fused.state_dict())
        ce = cross_entropy(input_ids=input_ids, labels=labels).loss.item()
    assert objective_from_spec(objective) != Objective() and abs(ce - plain_loss.item()) > 1e-3


def test_lora_on_the_head_keeps_the_objective():
    """peft's LoRA wrapper on lm_head is not a MoaiLMHead: the loss runs on its logits, with the objective."""
    from peft import LoraConfig, get_peft_model

    objective = {"type": "focal", "params": {"gamma": 2.0}}
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config(loss_config=objective))
    input_ids, labels = batch(model.config.vocab_size)
    with torch.no_grad():
        expected = model(input_ids=input_ids, labels=labels).loss.item()  # fused, before adapters (B = 0)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        assert lora(input_ids=input_ids, labels=labels).loss.item() == pytest.approx(expected, rel=1e-5)
