"""DDP skips the unused-parameter search (an extra autograd traversal per step) for models that use every parameter."""

from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen3Config, Qwen3MoeConfig

from moai_llm import MoaiForCausalLM
from moai_llm.training.arguments import MoaiTrainingArguments
from moai_llm.training.sharding import may_leave_parameters_unused
from moai_llm.training.trainer import MoaiTrainer

from .conftest import moe_config, tiny_config
from .distributed_helpers import torchrun


def _find_unused(tmp_path, model, **flags) -> bool:
    args = MoaiTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", eval_strategy="no", **flags)
    return MoaiTrainer(model=model, args=args).accelerator.ddp_handler.find_unused_parameters


@pytest.mark.parametrize(
    "config", [tiny_config(), moe_config(shared_expert_intermediate_size=48)], ids=["dense", "moe"]
)
def test_moai_models_skip_the_search_unless_the_user_asks(tmp_path, config):
    model = MoaiForCausalLM(config)
    assert _find_unused(tmp_path, model) is False
    assert _find_unused(tmp_path, model, ddp_find_unused_parameters=True) is True


def test_other_models_search_only_when_they_have_experts():
    assert not may_leave_parameters_unused(SimpleNamespace(config=Qwen3Config()))
    assert may_leave_parameters_unused(SimpleNamespace(config=Qwen3MoeConfig()))
    assert may_leave_parameters_unused(torch.nn.Linear(2, 2))  # no config: transformers' default stands


# Two DDP ranks through MoaiTrainer with its default (no search), a MoE model with a shared expert, top-1 of 8 experts
# and 2 tokens per rank: at most 4 experts per layer get a token each step. DDP raises at the next step if any
# parameter was left out of the reduction, so 3 steps finishing proves none was; every parameter outside the experts
# (router, shared expert and its gate, attention, embeddings) gets a finite, nonzero gradient each step.
MOE_DDP = """
import sys
import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainerCallback
from moai_llm import MoaiForCausalLM
from moai_llm.training.arguments import MoaiTrainingArguments
from moai_llm.training.trainer import MoaiTrainer
from tests.conftest import moe_config


class IdleExperts(TrainerCallback):
    idle = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # gradients already all-reduced
        for name, param in model.named_parameters():
            assert param.grad is not None and bool(param.grad.isfinite().all()), name
            assert ".experts." in name or param.grad.abs().sum() > 0, name
        for layer in model.model.layers:
            per_expert = layer.mlp.experts.down_proj.grad.flatten(1).abs().sum(-1)  # [experts]
            self.idle.append(int((per_expert == 0).sum()))


torch.manual_seed(0)
model = MoaiForCausalLM(moe_config(num_experts=8, num_experts_per_tok=1, shared_expert_intermediate_size=48))
rows = [{"input_ids": [5 + i, 40 + i], "labels": [5 + i, 40 + i]} for i in range(12)]
args = MoaiTrainingArguments(output_dir=sys.argv[1], use_cpu=True, ddp_backend="gloo", per_device_train_batch_size=1,
                             max_steps=3, save_strategy="no", eval_strategy="no", report_to="none", logging_steps=1,
                             disable_tqdm=True)
trainer = MoaiTrainer(model=model, args=args, train_dataset=rows, callbacks=[IdleExperts()])
trainer.train()
assert isinstance(trainer.model_wrapped, DistributedDataParallel)
assert trainer.model_wrapped.find_unused_parameters is False
assert len(IdleExperts.idle) == 6 and min(IdleExperts.idle) >= 4, IdleExperts.idle
print(f"rank {args.process_index}: ddp ok, idle experts per layer and step {IdleExperts.idle}", flush=True)
"""


@pytest.mark.integration
def test_moe_trains_under_ddp_without_the_search_while_experts_idle(tmp_path):
    result = torchrun(MOE_DDP, [tmp_path / "run"], tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "rank 0: ddp ok" in result.stdout and "rank 1: ddp ok" in result.stdout
