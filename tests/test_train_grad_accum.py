"""Gradient accumulation: GA=4 x batch 1 gives the same update as GA=1 x batch 4; MoE aux loss scaled right."""

import copy

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM, Trainer

from moai_llm import MoaiForCausalLM
from moai_llm.training.arguments import MoaiTrainingArguments
from moai_llm.training.trainer import MoaiTrainer

from .conftest import tiny_config

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


def moe_model():
    config = Qwen3MoeConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        output_router_logits=True,
        router_aux_loss_coef=0.5,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return Qwen3MoeForCausalLM(config)


def test_moe_aux_loss_is_a_mean_over_micro_batches(tmp_path):
    model = moe_model()
    data = rows(128)
    coef = model.config.router_aux_loss_coef
    reference = copy.deepcopy(model)
    total_items = sum(int(row["labels"][1:].ne(-100).sum()) for row in data)
    objective = 0.0
    for row in data:
        out = reference(input_ids=row["input_ids"][None], labels=row["labels"][None], num_items_in_batch=total_items)
        objective = objective + (out.loss - coef * out.aux_loss) + coef * out.aux_loss / len(data)
    objective.backward()
    expected = {name: p.detach() - p.grad for name, p in reference.named_parameters()}

    ours = sgd_step(MoaiTrainer, copy.deepcopy(model), data, 1, 4, tmp_path / "ours")
    stock = sgd_step(Trainer, copy.deepcopy(model), data, 1, 4, tmp_path / "stock")
    assert max_diff(ours, expected) < 1e-6
    router = "model.layers.0.mlp.gate.weight"
    assert (stock[router] - expected[router]).abs().max().item() > 1e-4  # stock counts the aux loss 4 times
