"""GPU paths decided on CPU: load dtype for fine-tuning, mixed precision, DataParallel refusal, the wsd alias."""

from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from moai_llm import MoaiForCausalLM
from moai_llm.training.arguments import MoaiTrainingArguments
from moai_llm.training.cli import build_parser, load_yaml_config, parse_args
from moai_llm.training.distributed import data_parallel_error
from moai_llm.training.resolve import resolve_mixed_precision
from moai_llm.training.run import load_dtype
from moai_llm.training.trainer import MoaiTrainer

from .conftest import REPO, tiny_config
from .train_helpers import fast_args, run_inprocess

SFT_FILE = str(REPO / "moai_llm" / "assets" / "sample" / "sft_messages.jsonl")
BF16, FP32 = torch.bfloat16, torch.float32


@pytest.mark.parametrize(
    "cuda, bf16, lora, qlora, expected",
    [
        (True, True, False, False, FP32),  # full fine-tuning on a GPU: fp32 master weights, bf16 autocast
        (True, True, True, False, BF16),  # LoRA: the frozen base in bf16
        (True, True, False, True, BF16),  # QLoRA: non-quantized parts and compute dtype in bf16
        (True, False, True, False, FP32),  # no mixed precision asked: fp32
        (False, True, False, False, FP32),  # CPU, even with --bf16 and a bf16 checkpoint
        (False, False, True, False, FP32),
    ],
)
def test_load_dtype_keeps_trained_weights_fp32(cuda, bf16, lora, qlora, expected):
    assert load_dtype(cuda, bf16, lora, qlora) == expected


def test_load_dtype_fp16_gpus_freeze_the_base_in_fp16():
    assert load_dtype(True, False, True, False, fp16=True) == torch.float16
    assert load_dtype(True, False, False, False, fp16=True) == FP32


def moved_fraction(before: torch.Tensor, after: torch.Tensor) -> float:
    return (before.float() != after.float()).float().mean().item()


def test_adamw_on_bf16_weights_loses_a_fine_tuning_step():
    """Why master weights stay fp32: at lr 2e-5 the ~70% of an N(0, 0.02) matrix with |w| > 2^-7 never changes in
    bf16 (half an ulp there is 3e-5), while every fp32 weight moves."""
    assert torch.tensor(0.02, dtype=BF16) - 2e-5 == torch.tensor(0.02, dtype=BF16)
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(256, 256, generator=generator) * 0.02
    grad = torch.randn(256, 256, generator=generator)
    moved = {}
    for dtype in (BF16, FP32):
        weight = torch.nn.Parameter(start.to(dtype, copy=True))
        weight.grad = grad.to(dtype)
        torch.optim.AdamW([weight], lr=2e-5, weight_decay=0.0).step()
        moved[dtype] = moved_fraction(start.to(dtype), weight.detach())
    assert moved[FP32] > 0.99 and moved[BF16] < 0.4, moved


@pytest.mark.integration  # a whole train.py run
def test_bf16_sft_from_a_bf16_checkpoint_trains_fp32_weights(tmp_path):
    """--bf16 (autocast) SFT from a checkpoint saved in bf16: the weights load in fp32 and move at lr 2e-5.
    (Before: dtype bf16 on CUDA, or transformers' dtype="auto" = the checkpoint's bf16 elsewhere.)"""
    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    MoaiForCausalLM(tiny_config(vocab_size=8192)).to(BF16).save_pretrained(base_dir)
    args = fast_args(
        tmp_path / "sft",
        "unused",
        "--mode",
        "sft",
        "--pretrained_model",
        str(base_dir),
        "--train_file",
        SFT_FILE,
        "--max_steps",
        "2",
        "--bf16",
        "true",
        "--learning_rate",
        "2e-5",
        "--warmup_steps",
        "0",
        "--lr_scheduler_type",
        "constant",
        "--max_seq_length",
        "128",
    )
    args[args.index("--model_config") : args.index("--model_config") + 2] = []
    result = run_inprocess(args)[0]
    before, after = load_file(str(base_dir / "model.safetensors")), load_file(f"{result.final_model}/model.safetensors")
    layers = [name for name in after if ".layers." in name and name.endswith("proj.weight")]
    assert layers and all(after[name].dtype == FP32 for name in after)
    moved = min(moved_fraction(before[name], after[name]) for name in layers)
    assert moved > 0.95, moved


def test_mixed_precision_resolution():
    assert resolve_mixed_precision(None, False, on_gpu=True, bf16_supported=True) == (True, False)
    assert resolve_mixed_precision(None, False, on_gpu=True, bf16_supported=False) == (False, True)  # V100, T4
    assert resolve_mixed_precision(None, False, on_gpu=False, bf16_supported=False) == (False, False)
    assert resolve_mixed_precision(False, False, on_gpu=True, bf16_supported=True) == (False, False)  # explicit off
    assert resolve_mixed_precision(None, True, on_gpu=True, bf16_supported=True) == (False, True)  # explicit fp16
    assert resolve_mixed_precision(None, False, on_gpu=False, bf16_supported=True) == (True, False)  # AMX CPU


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_by_default_where_the_cpu_computes_it_natively(native, tmp_path):
    """AMX / AVX512-BF16 CPUs get bf16 autocast by default (and use_cpu, which TrainingArguments requires for bf16
    without a GPU); other CPUs stay fp32; --bf16 false wins either way."""
    with (
        mock.patch("torch.cuda.is_available", return_value=False),
        mock.patch("moai_llm.training.resolve.cpu_has_native_bf16", return_value=native),
    ):
        default = parse_args(["--output_dir", str(tmp_path)])[2]
        off = parse_args(["--output_dir", str(tmp_path), "--bf16", "false"])[2]
    assert (default.bf16, default.fp16, default.use_cpu) == (native, False, native)
    assert not off.bf16 and not off.fp16
    assert not default.dataloader_pin_memory


@pytest.mark.integration  # a whole train.py run
def test_bf16_true_alone_trains_on_a_cpu_machine(tmp_path):
    """`--bf16 true` without `--use_cpu` on a machine without a GPU (transformers alone refuses it)."""
    args = fast_args(tmp_path / "run", "unused", "--max_steps", "1", "--bf16", "true")
    args[args.index("--use_cpu") : args.index("--use_cpu") + 2] = []
    args[args.index("--model_config") : args.index("--model_config") + 2] = []
    from transformers import TrainerCallback

    from moai_llm.training import stages

    class Precision(TrainerCallback):
        """The dtype a layer's matmul produces in the training step, and the weights' dtype."""

        seen: set = set()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            Precision.flags = (args.bf16, args.fp16, args.use_cpu)
            Precision.weights = {p.dtype for p in model.parameters()}
            model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, out: Precision.seen.add(out.dtype))

    run_training = stages.run_training
    with (
        mock.patch("torch.cuda.is_available", return_value=False),
        mock.patch.object(stages, "run_training", lambda *a, **k: run_training(*a, extra_callbacks=[Precision()], **k)),
    ):
        result = run_inprocess(args)[0]
    assert result.final_model is not None
    assert Precision.flags == (True, False, True)  # bf16 autocast on the CPU
    assert Precision.seen == {BF16} and Precision.weights == {FP32}  # bf16 compute over fp32 weights


def test_fp16_fallback_on_a_gpu_without_bf16(tmp_path):
    cuda = {"is_available": True, "is_bf16_supported": False, "get_device_capability": (7, 5), "device_count": 1}
    patches = [mock.patch(f"torch.cuda.{name}", return_value=value) for name, value in cuda.items()]
    patches.append(mock.patch("torch.cuda.set_device"))
    for patch in patches:
        patch.start()
    try:
        args = parse_args(["--output_dir", str(tmp_path)])[2]
    finally:
        for patch in patches:
            patch.stop()
    assert (args.bf16, args.fp16) == (False, True)


def test_shipped_yaml_leaves_bf16_automatic():
    values = load_yaml_config(str(REPO / "configs" / "training_config.yaml"), build_parser())
    assert values.get("bf16") is None and not values.get("fp16")


def test_several_gpus_without_torchrun_is_refused(tmp_path, capsys):
    assert data_parallel_error(0) is None and data_parallel_error(1) is None
    assert "torchrun --nproc_per_node 4" in data_parallel_error(4)
    from train import main

    with mock.patch.object(MoaiTrainingArguments, "n_gpu", new_callable=mock.PropertyMock, return_value=2):
        assert main(["--output_dir", str(tmp_path), "--use_cpu", "true", "--max_steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 GPUs are visible" in err and "pretrain.sh" in err, err
    assert not (tmp_path / "final_model").exists()


@pytest.mark.parametrize("name", ["wsd", "warmup_stable_decay"])
def test_wsd_alias_is_accepted(name, tmp_path):
    args = MoaiTrainingArguments(
        output_dir=str(tmp_path),
        lr_scheduler_type=name,
        learning_rate=1.0,
        warmup_steps=0,
        wsd_decay_ratio=0.5,
        min_lr_ratio=0.0,
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
    )
    trainer = MoaiTrainer(model=MoaiForCausalLM(tiny_config()), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs[:6] == [1.0] * 6 and lrs[6] < 1.0 and lrs[-1] < 0.2  # stable, then decay to min_lr_ratio
