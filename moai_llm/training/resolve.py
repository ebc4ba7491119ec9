"""The one resolve step: every default that depends on other arguments or on the machine, computed before anything
is built. train.py's arguments are read-only after this (torchtitan's rule: config resolved once, never mutated)."""

import dataclasses
import importlib.util
import json
import logging
import os

import torch

from ..errors import UsageError
from .arguments import TINY_MODEL_CONFIG, training_arguments
from .data_setup import reads_a_stream
from .schedule import scaled_learning_rate

logger = logging.getLogger(__name__)

# Learning rates used when --learning_rate is not given: a tiny model from scratch, full SFT, adapters. The pretraining
# rate is the best of 1e-3, 3e-3, 1e-2 for AdamW in benchmarks/bench_time_to_loss.py's sweep (hidden 384); wider
# models get it scaled down (schedule.scaled_learning_rate).
DEFAULT_LEARNING_RATES = {"pretrain": 1e-3, "sft": 2e-5, "lora": 2e-4}


def default_output_dir(model_args, values: dict) -> str:
    """outputs/stages for a staged run (each stage in a folder of its own), else outputs/<mode>-<model>: the
    pretrained model's directory name, or the model config's name without model_config_."""
    if values.get("stages"):
        return os.path.join("outputs", "stages")
    if model_args.pretrained_model:
        base = os.path.basename(os.path.normpath(model_args.pretrained_model))
    else:
        base = os.path.splitext(os.path.basename(model_args.model_config or TINY_MODEL_CONFIG))[0]
        base = base.removeprefix("model_config_").removeprefix("model_config") or "base"
    return os.path.join("outputs", f"{values.get('mode', 'pretrain')}-{base}")


def hidden_size(model_args) -> int | None:
    """The model's hidden size from its local config (the new model's, or a local pretrained model's), else None."""
    path = model_args.model_config or TINY_MODEL_CONFIG
    if model_args.pretrained_model:
        path = os.path.join(model_args.pretrained_model, "config.json")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle).get("hidden_size")
    except (OSError, ValueError):
        return None  # a hub id, or a bad file the model build reports


def resolve_mixed_precision(bf16: bool | None, fp16: bool, on_gpu: bool, bf16_supported: bool) -> tuple[bool, bool]:
    """(bf16, fp16). bf16 unset: bf16 where the device computes it natively (GPUs with bf16; CPUs with AMX or
    AVX512-BF16), fp16 on older GPUs (V100, T4), neither on other CPUs. An explicit --bf16 or --fp16 is kept."""
    if bf16 is not None or fp16:
        return bool(bf16), bool(fp16)
    if bf16_supported:
        return True, False
    return (False, True) if on_gpu else (False, False)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls run natively, so bf16 is the faster default there (benchmarks/README.md,
    CPU bf16)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def native_bf16(device_type: str) -> bool:
    """Whether bf16 runs natively on this device type, the rule behind train.py's default precision and
    eval.py's --precision auto."""
    return torch.cuda.is_bf16_supported() if device_type == "cuda" else device_type == "cpu" and cpu_has_native_bf16()


def attention_implementation(requested: str | None, cuda: bool) -> str | None:
    """flash-attn on CUDA when installed (launch_plan.py plans with the same rule), else sdpa; on CPU the model
    config's choice (None) unless given."""
    if requested is not None or not cuda:
        return requested
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def on_cuda(use_cpu: bool | None) -> bool:
    """Whether this run trains on a CUDA GPU (one is visible and --use_cpu is off)."""
    return not use_cpu and torch.cuda.is_available()


def resolve_training_values(model_args, data_args, values: dict) -> dict:
    """The TrainingArguments values with every derived default filled in; `values` holds what the user gave
    (YAML + command line), None where a field was left to its default."""
    values = dict(values)
    mode = values.get("mode", "pretrain")
    cuda = on_cuda(values.get("use_cpu"))
    on_cpu = values.get("use_cpu") or not (cuda or torch.backends.mps.is_available())
    if values.get("output_dir") is None:
        values["output_dir"] = default_output_dir(model_args, values)
    if values.get("learning_rate") is None:
        lora = model_args.use_lora or model_args.use_qlora
        values["learning_rate"] = DEFAULT_LEARNING_RATES["lora" if lora else mode]
        if mode == "pretrain" and not lora:
            values["learning_rate"] = scaled_learning_rate(values["learning_rate"], hidden_size(model_args))
    bf16_supported = native_bf16("cuda" if cuda else "cpu" if on_cpu else "mps")
    values["bf16"], values["fp16"] = resolve_mixed_precision(
        values.get("bf16"), values.get("fp16", False), cuda, bf16_supported
    )
    if values["bf16"] and on_cpu:
        values["use_cpu"] = True  # TrainingArguments refuses bf16 without a GPU unless told it runs on the CPU
    if values.get("tf32") is None and cuda and torch.cuda.get_device_capability()[0] >= 8:
        values["tf32"] = True  # Ampere and newer: TF32 matmuls for whatever still runs in fp32
    if not cuda:
        values["dataloader_pin_memory"] = False
    if reads_a_stream(data_args):
        values["accelerator_config"] = streams_on_every_rank(values.get("accelerator_config"))
    return values


def streams_on_every_rank(accelerator_config) -> dict:
    """accelerate's default for an IterableDataset reads it on rank 0 only and sends slices of each batch to the
    others (which drops the other ranks' shards, breaks on flash-attn's int `max_length_q` and on batches of
    different widths). Off, accelerate hands process r the stream's shard r (one shard per process)."""
    if isinstance(accelerator_config, str):  # a JSON file, as TrainingArguments accepts it
        try:
            with open(accelerator_config, encoding="utf-8") as handle:
                accelerator_config = json.load(handle)
        except (OSError, ValueError) as error:
            raise UsageError(f"--accelerator_config {accelerator_config}: cannot be read ({error})") from None
    config = dict(accelerator_config or {})
    if config.get("dispatch_batches"):
        logger.warning(
            "streaming: accelerator_config dispatch_batches replaced by False (each rank reads its own shard)"
        )
    config["dispatch_batches"] = False
    return config


def resolve(model_args, data_args, values: dict):
    """(model_args, data_args, MoaiTrainingArguments), all defaults resolved (a new model's config is the tiny one);
    the inputs are not changed."""
    training_values = resolve_training_values(model_args, data_args, values)
    model_config = model_args.model_config
    if model_config is None and not model_args.pretrained_model:
        model_config = TINY_MODEL_CONFIG
    attention = attention_implementation(model_args.attn_implementation, on_cuda(training_values.get("use_cpu")))
    model_args = dataclasses.replace(model_args, model_config=model_config, attn_implementation=attention)
    return model_args, data_args, training_arguments(training_values)
