"""LoRA / QLoRA on MOAI models through peft, and merging the adapters into a full-precision final model."""

import logging

import torch

from ..errors import UsageError

logger = logging.getLogger(__name__)


def apply_lora(model, model_args):
    """Wrap `model` with LoRA adapters on `lora_target_modules`; QLoRA needs a 4-bit base (CUDA + bitsandbytes)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if model_args.use_qlora:
        if not getattr(model, "is_loaded_in_4bit", False):
            raise UsageError("--use_qlora: the base model was not loaded in 4 bits")
        model = prepare_model_for_kbit_training(model)
    targets = [name.strip() for name in model_args.lora_target_modules.split(",") if name.strip()]
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [name for name in targets if name not in present]
    if missing:
        raise UsageError(f"--lora_target_modules: no module named {', '.join(missing)} in the model")
    config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA: %s trainable of %s parameters (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model


def quantization_config(compute_dtype: torch.dtype):
    """BitsAndBytes NF4 config for --use_qlora (CUDA, or CPU with a bitsandbytes that has CPU 4-bit kernels)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        hint = "" if torch.cuda.is_available() else " (recent versions, e.g. 0.50, run 4-bit on CPU; or use --use_lora)"
        raise UsageError(f"--use_qlora needs bitsandbytes: pip install -e '.[qlora]'{hint}") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def merge_adapters(model, adapter_dir: str, sharded: bool = False, pretrained_model: str | None = None, args=None):
    """The adapters (reloaded from `adapter_dir`) merged into a float32 copy of the base on the CPU: the base
    dequantized when 4/8-bit, or, sharded (FSDP, ZeRO-3: no rank holds whole weights), reloaded from
    `pretrained_model` with the DeepSpeed config detached (ZeRO-3 would partition it). peft's `merge_and_unload` adds
    the delta in the base's dtype: into bf16 a small delta vanishes, and QLoRA re-quantizes to NF4, a checkpoint CPU
    inference cannot load."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.integrations import deepspeed

    if sharded:
        if not pretrained_model:
            raise UsageError(
                f"--merge_lora under FSDP / ZeRO-3 merges into --pretrained_model, none given ({adapter_dir})"
            )
        deepspeed.unset_hf_deepspeed_config()
        try:
            base = AutoModelForCausalLM.from_pretrained(pretrained_model, dtype=torch.float32)
        finally:
            if getattr(args, "hf_deepspeed_config", None) is not None:
                deepspeed.set_hf_deepspeed_config(args.hf_deepspeed_config)
        return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    quantized = getattr(model.get_base_model(), "is_loaded_in_4bit", False) or getattr(
        model.get_base_model(), "is_loaded_in_8bit", False
    )
    base = model.unload()  # LoRA layers off, the base layers back in place
    if quantized:
        # bitsandbytes' AVX512-BF16 CPU kernels repack NF4 weights in place at the first inference forward
        # (evaluation) and only `state_dict()` packs them back; `dequantize` reads the raw data and would decode the
        # repacked bytes.
        base.state_dict()
        base = base.dequantize(dtype=torch.float32)
    base = base.to(device="cpu", dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
