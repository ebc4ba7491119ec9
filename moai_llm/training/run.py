"""One training run (one stage): tokenizer, model, data, MoaiTrainer, final_model."""

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, set_seed
from transformers.trainer import TRAINING_ARGS_NAME

from .. import MoaiConfig, MoaiForCausalLM
from ..errors import UsageError
from ..loading import CHAT_END_TOKEN, FINAL_MARKER, load_tokenizer, write_step_marker
from ..losses import objective_from_spec
from .callbacks import GracefulStopCallback, ThroughputCallback, detect_peak_tflops, flops_per_token
from .data_setup import build_datasets, check_data_position, reads_a_stream
from .distributed import data_parallel_error, resolve_resume
from .memory import log_estimate, setup_for_run
from .resolve import on_cuda
from .sharding import initialise, starts_sharded
from .trainer import MoaiTrainer, writes_on_this_node

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    output_dir: str
    final_model: str | None  # None when stopped by a signal before the end
    metrics: dict
    stopped_at_step: int | None = None


def load_dtype(cuda: bool, bf16: bool, lora: bool, qlora: bool, fp16: bool = False) -> torch.dtype:
    """The dtype to load --pretrained_model in: fp32 for weights that train (AdamW on bf16 weights rounds a
    fine-tuning step away); a frozen base (LoRA, QLoRA) on a GPU in the compute dtype, to halve its memory."""
    if (lora or qlora) and cuda and (bf16 or fp16):
        return torch.bfloat16 if bf16 else torch.float16
    return torch.float32


def build_model(model_args, training_args, tokenizer):
    dtype = load_dtype(
        on_cuda(training_args.use_cpu),
        training_args.bf16,
        model_args.use_lora,
        model_args.use_qlora,
        training_args.fp16,
    )
    if training_args.mode == "sft" and not model_args.pretrained_model:
        raise UsageError("--mode sft needs --pretrained_model (a pretrained model directory or hub id)")
    if model_args.use_qlora and not model_args.pretrained_model:
        raise UsageError("--use_qlora needs --pretrained_model (a 4-bit base is loaded from a trained model)")
    if model_args.pretrained_model:
        local = model_args.pretrained_model.startswith(("/", ".", "~"))  # a hub id starts with neither
        if local and not os.path.isdir(os.path.expanduser(model_args.pretrained_model)):
            raise UsageError(f"--pretrained_model {model_args.pretrained_model}: directory not found")
        quantization = None
        if model_args.use_qlora:
            from .lora import quantization_config

            quantization = quantization_config(dtype)
        model = AutoModelForCausalLM.from_pretrained(
            model_args.pretrained_model,
            attn_implementation=model_args.attn_implementation,
            dtype=dtype,
            quantization_config=quantization,
        )
    else:
        path = model_args.model_config  # resolve.resolve: the tiny config when none is given
        if not os.path.isfile(path):
            raise UsageError(f"--model_config {path}: file not found")
        try:
            config = MoaiConfig.from_json_file(path)
        except ValueError as error:  # not JSON, or a field MoaiConfig refuses
            raise UsageError(f"--model_config {path}: {str(error).splitlines()[0]}") from None
        if model_args.attn_implementation:
            config._attn_implementation = model_args.attn_implementation
        model = new_model(config, training_args, lora=model_args.use_lora or model_args.use_qlora)
    if hasattr(model.config, "loss_config"):
        model.config.loss_config = loss_config(model_args)
        if model_args.loss_chunk_size is not None:
            model.config.loss_chunk_size = model_args.loss_chunk_size
    if len(tokenizer) > model.config.vocab_size:
        raise UsageError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}"
        )
    return model


def new_model(config, training_args, lora: bool = False):
    """A model from scratch, its weights a function of `--seed` and each module's name (`sharding.initialise`).
    FSDP2: every rank builds on the meta device and `start_sharded` later creates only its shards; FSDP1 or LoRA with
    `cpu_ram_efficient_loading`: rank 0 builds it and accelerate broadcasts; otherwise every process builds it."""
    with torch.device("meta"):
        model = MoaiForCausalLM(config)
    if starts_sharded(training_args, lora):
        logger.info(
            "rank %d: model built on the meta device; its shards are created once sharded", training_args.process_index
        )
        return model
    broadcast = training_args.fsdp and (training_args.fsdp_config or {}).get("cpu_ram_efficient_loading")
    if broadcast and training_args.process_index != 0:
        # RoPE's inverse frequencies are non-persistent buffers: not in the state dict rank 0 sends, so built for real.
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
        logger.info(
            "rank %d: model built on the meta device; FSDP fills its shards from rank 0", training_args.process_index
        )
        return model
    model.to_empty(device="cpu")
    model.tie_weights()
    initialise(model, training_args.seed)
    return model


def evaluation_switched(training_args, data_args, eval_dataset):
    """The one place evaluation is switched off: with nothing held out (`--eval_fraction 0`, or a holdout that came
    out empty) the run's arguments get `eval_strategy` "no" (a new, validated object); else they are unchanged."""
    if eval_dataset is not None or training_args.eval_strategy == "no":
        return training_args
    if data_args.eval_fraction:
        logger.warning("no documents were held out for evaluation: evaluation is off for this run")
    else:
        logger.info("--eval_fraction 0: nothing is held out, evaluation is off for this run")
    return dataclasses.replace(training_args, eval_strategy="no")


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
    try:
        objective_from_spec(spec)
    except ValueError as error:  # names the bad field
        raise UsageError(f"--loss_type/--loss_params: {error}") from None
    return spec


def save_final_model(trainer, tokenizer, model_args, training_args) -> str:
    """final_model: weights (adapters merged when asked), tokenizer + chat template, generation config.

    Called on every rank: `Trainer.save_model` gathers FSDP / ZeRO-3 shards from all ranks, then rank 0 writes. A
    sharded LoRA model is merged on rank 0 into a float32 copy of the base, reloaded with the adapter just saved.
    """
    final_dir = os.path.join(training_args.output_dir, "final_model")
    model = trainer.accelerator.unwrap_model(trainer.model)
    eos_ids = [tokenizer.eos_token_id]
    if CHAT_END_TOKEN in tokenizer.get_vocab():
        eos_ids.append(tokenizer.convert_tokens_to_ids(CHAT_END_TOKEN))
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id
    )
    (model.base_model.model if hasattr(model, "peft_config") else model).generation_config = generation
    if trainer.is_fsdp_enabled:  # a whole model, whatever format the checkpoints used
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    written = [final_dir]
    if model_args.merge_lora and hasattr(model, "merge_and_unload"):
        adapter_dir = os.path.join(training_args.output_dir, "adapter")
        trainer.save_model(adapter_dir)
        written.append(adapter_dir)
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        sharded = trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3)  # FSDP, ZeRO-3
        if training_args.should_save:
            from .lora import merge_adapters

            model = merge_adapters(model, adapter_dir, sharded, model_args.pretrained_model, trainer.args)
            model.generation_config = generation
            with writes_on_this_node(model, training_args):
                model.save_pretrained(final_dir)
    else:
        trainer.save_model(final_dir)
    if training_args.should_save:
        for directory in written:  # the pickled TrainingArguments Trainer.save_model adds: not part of a model
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, TRAINING_ARGS_NAME))
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
    error = data_parallel_error(training_args.n_gpu)
    if error:
        raise UsageError(error)
    resume = resolve_resume(training_args)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args.tokenizer_path, model_args.pretrained_model, training=True)
    model = build_model(model_args, training_args, tokenizer)
    if model_args.use_lora or model_args.use_qlora:
        from .lora import apply_lora

        model = apply_lora(model, model_args)
    flash = model.config._attn_implementation == "flash_attention_2"
    streaming = reads_a_stream(data_args)
    check_data_position(resume, training_args, streaming)
    train_dataset, eval_dataset, collator = build_datasets(data_args, tokenizer, training_args, flash=flash)
    training_args = evaluation_switched(training_args, data_args, eval_dataset)
    config = model.config
    cuda = on_cuda(training_args.use_cpu)
    memory = log_estimate(config.to_dict(), setup_for_run(config, model_args, data_args, training_args, cuda))
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
        streaming=streaming,
    )
    if training_args.eval_tasks and training_args.eval_strategy == "no":
        logger.warning("--eval_tasks %s: not scored, evaluation is off for this run", training_args.eval_tasks)
    elif training_args.eval_tasks:
        from ..evaluation.during_training import BenchmarkCallback
        from ..evaluation.suites import resolve_tasks

        specs = resolve_tasks(training_args.eval_tasks, None, None, training_args.eval_tasks_limit)
        include = (training_args.eval_tasks_include_path,) if training_args.eval_tasks_include_path else ()
        trainer.add_callback(BenchmarkCallback(trainer, specs, include, training_args.per_device_eval_batch_size))
    try:
        return _train_and_save(trainer, stopper, resume, tokenizer, model_args, data_args, training_args, memory)
    finally:
        stopper.restore()


def _train_and_save(trainer, stopper, resume, tokenizer, model_args, data_args, training_args, memory) -> RunResult:
    train_output = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_output.metrics)
    metrics.update(memory_metrics(memory, on_cuda(training_args.use_cpu)))
    if stopper.stopped_at is not None:
        logger.warning(
            "stopped by signal at step %d; checkpoint saved in %s (resume with --resume_from_checkpoint auto)",
            stopper.stopped_at,
            training_args.output_dir,
        )
        return RunResult(training_args.output_dir, None, metrics, stopper.stopped_at)
    if trainer.eval_dataset is not None:
        metrics.update(final_evaluation(trainer))
    trainer.save_metrics("all", metrics)
    # a stage counts as done only with FINAL_MARKER: a stale one goes first, the new one once every rank has saved
    marker = os.path.join(training_args.output_dir, "final_model", FINAL_MARKER)
    if training_args.should_save and os.path.exists(marker):
        os.remove(marker)
    final_dir = save_final_model(trainer, tokenizer, model_args, training_args)
    if training_args.should_save:
        write_step_marker(marker, trainer.state.global_step)
    if trainer.is_world_process_zero():
        from ..evaluation.end_of_run import write_training_report

        write_training_report(trainer, model_args, data_args)  # plots + training_report.md; never raises
    return RunResult(training_args.output_dir, final_dir, metrics)


def memory_metrics(memory, cuda: bool) -> dict:
    """The measured peak of this process next to the estimate logged at the start (docs/scaling.md)."""
    from .memory_meter import process_peak_bytes

    peak, what = process_peak_bytes(cuda)
    metrics = {"memory_peak_gb": round(peak / 1e9, 3)}
    if memory is not None:
        metrics["memory_estimate_gb"] = round(memory.total / 1e9, 3)
        logger.info(
            "memory: estimated %.2f GB per device, measured peak %.2f GB (%s)", memory.total / 1e9, peak / 1e9, what
        )
    return metrics
