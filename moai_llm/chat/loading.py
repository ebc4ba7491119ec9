"""Load a model for chat: a final_model, a Trainer checkpoint, or a peft LoRA adapter (with its base)."""

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import UsageError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


ChatLoadError = UsageError  # the old name, importable from moai_llm.chat; raise UsageError


def best_device_and_dtype() -> tuple[str, torch.dtype]:
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps", torch.float16
    return "cpu", torch.float32


def load_for_chat(
    model_path: str, tokenizer_path: str | None = None, base_model: str | None = None, device: str | None = None
):
    """(model in eval mode on the best device, tokenizer); a UsageError names what is wrong."""
    import moai_llm  # noqa: F401  (registers the MOAI Auto classes)

    path = Path(model_path)
    if not path.is_dir():
        raise UsageError(f"--model_path {model_path}: no such directory")
    auto_device, dtype = best_device_and_dtype()
    device = device or auto_device
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        base = base_model or json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base:
            raise UsageError(f"--model_path {model_path}: LoRA adapter without a base; pass --base_model")
        model = _load(base, dtype, "--base_model")
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, model_path)
        default_tokenizer = model_path if (path / "tokenizer.json").exists() else base
    else:
        if not (path / "config.json").is_file():
            raise UsageError(f"--model_path {model_path}: no config.json (not a model directory)")
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise UsageError(f"--model_path {model_path}: no model.safetensors (incomplete model directory)")
        model = _load(model_path, dtype, "--model_path")
        default_tokenizer = model_path
    tokenizer_dir = tokenizer_path or default_tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as err:
        raise UsageError(
            f"tokenizer {tokenizer_dir}: cannot be loaded ({str(err).splitlines()[0][:120]}); pass --tokenizer_path"
        ) from None
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise UsageError(
            f"tokenizer {tokenizer_dir} has {len(tokenizer)} tokens but the model has {rows} "
            "embedding rows: they do not belong together"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _load(path: str, dtype, flag: str):
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise UsageError(f"{flag} {path}: cannot be loaded ({str(err).splitlines()[0][:160]})") from None
