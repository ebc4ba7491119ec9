"""Gradient accumulation: GA=4 x batch 1 gives the same update as GA=1 x batch 4; MoE router losses scaled right."""

import copy

import torch
from transformers import Trainer

from moai_llm import MoaiForCausalLM
from moai_llm.training.arguments import MoaiTrainingArguments
from moai_llm.training.trainer import MoaiTrainer

from .conftest import moe_config, tiny_config

LENGTH = 16


def rows(vocab: int) -> list[dict]:
    """Four rows with 15, 9, 5 and 12 valid labels: unequal counts make a per-micro-batch mean wrong."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for valid in (15, 9, 5, 12):
        input_ids = torch.randint(3, vocab, (LENGTH,), generator=generator)
        labels = input_ids.clone()
        labels[valid + 1 :] = -100
        out.append({"input_ids": input_ids, "labels": labels})
    return out


def sgd_step(trainer_class, model, data, batch, accumulation, tmp_path):
    """Parameters after one SGD(lr=1) step taken by the trainer: exactly `params - grad`."""
    args = MoaiTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        weight_decay=0.0,
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = trainer_class(model=model, args=args, train_dataset=data)
    trainer.train()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_dense_accumulation_equals_big_batch(tmp_path):
    torch.manual_seed(0)
    model = MoaiForCausalLM(tiny_config())
    data = rows(128)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    accumulated = sgd_step(MoaiTrainer, copy.deepcopy(model), data, 1, 4, tmp_path / "a")
    big = sgd_step(MoaiTrainer, copy.deepcopy(model), data, 4, 1, tmp_path / "b")
    assert max_diff(accumulated, before) > 1e-3  # the step did something
    assert max_diff(accumulated, big) < 1e-6


AUX, Z = 0.5, 0.1  # large router coefficients, so a wrong scaling of either moves the step well past 1e-6


def padded_rows(vocab: int) -> list[dict]:
    """Four rows of 15, 9, 5 and 12 real tokens, right-padded with the pad token (attention mask 0, labels -100)."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for real in (15, 9, 5, 12):
        input_ids = torch.zeros(LENGTH, dtype=torch.long)  # pad_token_id=0
        input_ids[:real] = torch.randint(3, vocab, (real,), generator=generator)
        attention_mask = (torch.arange(LENGTH) < real).long()
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        out.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return out


def test_moe_router_losses_are_a_mean_over_micro_batches_of_real_tokens(tmp_path):
    """MoaiForCausalLM (MoE) with aux and z-loss, padded rows, GA=4 x batch 1: the step is that of
    sum_rows CE_row / tokens + mean_rows (AUX * aux_row + Z * z_row), the router terms of each row computed on its
    real tokens alone (an unpadded forward), as MoaiTrainer.compute_loss documents."""
    torch.manual_seed(0)
    model = MoaiForCausalLM(moe_config(router_aux_loss_coef=AUX, router_z_loss_coef=Z))
    data = padded_rows(128)
    reference = copy.deepcopy(model)
    total_items = sum(int(row["labels"][1:].ne(-100).sum()) for row in data)
    objective = 0.0
    for row in data:
        ids = row["input_ids"][row["attention_mask"].bool()][None]  # the real tokens, no padding at all
        out = reference(input_ids=ids)
        assert out.aux_loss.item() > 1.0 and 0.0 < out.router_z_loss.item() < 100.0  # top-2 of 4 balanced: ~2
        cross_entropy = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:], reduction="sum")
        objective = objective + cross_entropy / total_items + (AUX * out.aux_loss + Z * out.router_z_loss) / len(data)
    objective.backward()
    expected = {name: p.detach() - p.grad for name, p in reference.named_parameters()}

    ours = sgd_step(MoaiTrainer, copy.deepcopy(model), data, 1, 4, tmp_path / "ours")
    stock = sgd_step(Trainer, copy.deepcopy(model), data, 1, 4, tmp_path / "stock")
    router = "model.layers.0.mlp.gate.weight"
    assert (expected[router] - model.state_dict()[router]).abs().max().item() > 1e-3  # the router moved
    assert max_diff(ours, expected) < 1e-6
    assert (stock[router] - expected[router]).abs().max().item() > 1e-4  # stock counts the router terms 4 times
