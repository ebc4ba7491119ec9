"""One training run (one stage): tokenizer, model, data, MoaiTrainer, final_model."""

import json
import logging
import os
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, set_seed

from .. import MoaiConfig, MoaiForCausalLM
from ..losses import create_loss_function
from .arguments import DEFAULT_LEARNING_RATES, PACKAGE_DIR, TINY_MODEL_CONFIG
from .callbacks import GracefulStopCallback, ThroughputCallback, detect_peak_tflops, flops_per_token
from .cli import UsageError
from .data_setup import build_datasets
from .trainer import MoaiTrainer, latest_complete_checkpoint

logger = logging.getLogger(__name__)
DEFAULT_TOKENIZER = os.path.join(PACKAGE_DIR, "assets", "tokenizer")
CHAT_END_TOKEN = "<|im_end|>"


@dataclass
class RunResult:
    output_dir: str
    final_model: str | None  # None when stopped by a signal before the end
    metrics: dict
    stopped_at_step: int | None = None


def default_run_name(model_args, training_args) -> str:
    if model_args.pretrained_model:
        base = os.path.basename(os.path.normpath(model_args.pretrained_model))
    else:
        base = os.path.splitext(os.path.basename(model_args.model_config or TINY_MODEL_CONFIG))[0]
        base = base.removeprefix("model_config_").removeprefix("model_config") or "base"
    return f"{training_args.mode}-{base}"


def load_tokenizer(model_args):
    path = model_args.tokenizer_path
    if path is None and model_args.pretrained_model and os.path.isfile(
        os.path.join(model_args.pretrained_model, "tokenizer_config.json")
    ):
        path = model_args.pretrained_model
    path = path or DEFAULT_TOKENIZER
    if os.path.sep in path and not os.path.isdir(path):
        raise UsageError(f"--tokenizer_path {path}: directory not found")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise UsageError(f"--tokenizer_path {path}: the tokenizer needs pad and eos tokens")
    return tokenizer


def configure_hardware(model_args, training_args) -> None:
    """On CUDA: flash-attn when installed (bf16 and TF32 are chosen by the arguments); nothing changes on CPU."""
    if not torch.cuda.is_available() or training_args.use_cpu:
        training_args.dataloader_pin_memory = False
        return
    if model_args.attn_implementation is None:
        try:
            import flash_attn  # noqa: F401

            model_args.attn_implementation = "flash_attention_2"
        except ImportError:
            model_args.attn_implementation = "sdpa"


def build_model(model_args, training_args, tokenizer):
    dtype = torch.bfloat16 if training_args.bf16 and torch.cuda.is_available() else None
    if training_args.mode == "sft" and not model_args.pretrained_model:
        raise UsageError("--mode sft needs --pretrained_model (a pretrained model directory or hub id)")
    if model_args.use_qlora and not model_args.pretrained_model:
        raise UsageError("--use_qlora needs --pretrained_model (a 4-bit base is loaded from a trained model)")
    if model_args.pretrained_model:
        quantization = None
        if model_args.use_qlora:
            from .lora import quantization_config

            quantization = quantization_config(model_args)
        model = AutoModelForCausalLM.from_pretrained(
            model_args.pretrained_model, attn_implementation=model_args.attn_implementation, dtype=dtype,
            quantization_config=quantization,
        )
    else:
        path = model_args.model_config or TINY_MODEL_CONFIG
        if not os.path.isfile(path):
            raise UsageError(f"--model_config {path}: file not found")
        config = MoaiConfig.from_json_file(path)
        if model_args.attn_implementation:
            config._attn_implementation = model_args.attn_implementation
        model = MoaiForCausalLM(config)
    if hasattr(model.config, "loss_config"):
        model.config.loss_config = loss_config(model_args)
        if model_args.loss_chunk_size is not None:
            model.config.loss_chunk_size = model_args.loss_chunk_size
    if len(tokenizer) > model.config.vocab_size:
        raise UsageError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}"
        )
    return model


def loss_config(model_args) -> dict:
    """{"type", "params"} for MoaiConfig.loss_config from --loss_type/--loss_params/--z_loss_coef (validated)."""
    params = model_args.loss_params or {}
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError as error:
            raise UsageError(f"--loss_params: not valid JSON ({error.msg})") from None
    if model_args.z_loss_coef:
        params = {**params, "z_loss_coef": model_args.z_loss_coef}
    spec = {"type": model_args.loss_type, "params": params}
    create_loss_function(dict(spec))  # raises a ValueError naming the bad field
    return spec


def resolve_resume(training_args) -> str | None:
    value = training_args.resume_from_checkpoint
    if value in (None, "", "false", "False", "no"):
        return None
    if value == "auto":
        path = latest_complete_checkpoint(training_args.output_dir)
        logger.info("resume auto: %s", path or f"no complete checkpoint in {training_args.output_dir}, starting fresh")
        return path
    if not os.path.isdir(value):
        raise UsageError(f"--resume_from_checkpoint {value}: directory not found")
    return value


def save_final_model(trainer, tokenizer, model_args, training_args) -> str:
    """final_model: weights (adapters merged when asked), tokenizer + chat template, generation config."""
    final_dir = os.path.join(training_args.output_dir, "final_model")
    model = trainer.accelerator.unwrap_model(trainer.model)
    eos_ids = [tokenizer.eos_token_id]
    if CHAT_END_TOKEN in tokenizer.get_vocab():
        eos_ids.append(tokenizer.convert_tokens_to_ids(CHAT_END_TOKEN))
    if training_args.should_save:
        if model_args.merge_lora and hasattr(model, "merge_and_unload"):
            model.save_pretrained(os.path.join(training_args.output_dir, "adapter"))
            model = model.merge_and_unload()
        generation = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id
        )
        target = model.base_model.model if hasattr(model, "peft_config") else model
        target.generation_config = generation
        model.save_pretrained(final_dir)
        tokenizer.save_pretrained(final_dir)
        generation.save_pretrained(final_dir)
        logger.info("final model written to %s", final_dir)
    trainer.accelerator.wait_for_everyone()
    return final_dir


def final_evaluation(trainer) -> dict:
    """Eval metrics at the last step: reused when the eval schedule just ran there, else evaluated now."""
    last = {}
    for entry in trainer.state.log_history:
        if entry.get("step") == trainer.state.global_step and any(k.startswith("eval_") for k in entry):
            last.update({k: v for k, v in entry.items() if k.startswith("eval_")})
    return last if "eval_loss" in last else trainer.evaluate()


def run_training(model_args, data_args, training_args, extra_callbacks=()) -> RunResult:
    """Train one stage end to end; returns where final_model went (None if a signal stopped the run)."""
    configure_hardware(model_args, training_args)
    if getattr(training_args, "default_output_dir", False):
        training_args.output_dir = os.path.join("outputs", default_run_name(model_args, training_args))
    if model_args.use_lora and getattr(training_args, "default_learning_rate", False):
        training_args.learning_rate = DEFAULT_LEARNING_RATES["lora"]
    resume = resolve_resume(training_args)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args)
    model = build_model(model_args, training_args, tokenizer)
    if model_args.use_lora or model_args.use_qlora:
        from .lora import apply_lora

        model = apply_lora(model, model_args)
    flash = model.config._attn_implementation == "flash_attention_2"
    train_dataset, eval_dataset, collator = build_datasets(data_args, tokenizer, training_args, flash=flash)
    if eval_dataset is None and training_args.eval_strategy != "no":
        training_args.eval_strategy = "no"
    config = model.config
    throughput = ThroughputCallback(
        flops_per_token(config, data_args.max_seq_length),
        training_args.peak_tflops or detect_peak_tflops(),
        world_size=training_args.world_size,
    )
    stopper = GracefulStopCallback()
    trainer = MoaiTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[stopper, *extra_callbacks],
        throughput=throughput,
    )
    train_output = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_output.metrics)
    if stopper.stopped_at is not None:
        logger.warning(
            "stopped by signal at step %d; checkpoint saved in %s (resume with --resume_from_checkpoint auto)",
            stopper.stopped_at, training_args.output_dir,
        )
        return RunResult(training_args.output_dir, None, metrics, stopper.stopped_at)
    if eval_dataset is not None:
        metrics.update(final_evaluation(trainer))
    trainer.save_metrics("all", metrics)
    final_dir = save_final_model(trainer, tokenizer, model_args, training_args)
    if trainer.is_world_process_zero():
        from ..evaluation.training_report import write_training_report

        write_training_report(trainer, model_args, data_args)  # plots + training_report.md; never raises
    return RunResult(training_args.output_dir, final_dir, metrics)
