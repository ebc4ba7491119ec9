"""Where models, tokenizers and the files around them come from: the bundled assets, the special tokens, the
completion markers, and the one model loader and one tokenizer loader behind chat, serving, evaluation and
training."""

import json
import os
import socket
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .errors import UsageError

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_TOKENIZER = ASSETS / "tokenizer"  # byte-level BPE, 8,192 tokens, trained on the sample corpus
SAMPLE_CORPUS = ASSETS / "sample" / "pretrain.jsonl"

# ids 0..6, in this order, in every tokenizer this project trains or extends
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_END_TOKEN = "<|im_end|>"  # ends every ChatML turn: generation stops on it as on EOS

# Written last, fsynced: `save_pretrained` writes config.json before the weights, so only the marker tells a
# finished save from one killed in the middle.
FINAL_MARKER = "training_complete.json"  # in final_model, once every rank finished the stage
COMPLETE_MARKER = "checkpoint_complete.json"  # in checkpoint-N, before older checkpoints are rotated away

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


ChatLoadError = UsageError  # the old name, importable from moai_llm.chat; raise UsageError


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a sibling, fsync it and rename it over `path`: a reader sees the whole file or none, and a
    file that exists survives a crash (markers and meta.json are trusted by their presence)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_step_marker(path: str | os.PathLike, global_step: int) -> None:
    """FINAL_MARKER or COMPLETE_MARKER: the step the saved weights belong to."""
    write_atomically(path, json.dumps({"global_step": global_step}))


def load_tokenizer(
    path: str | os.PathLike | None = None,
    model: str | None = None,
    flag: str = "--tokenizer_path",
    training: bool = False,
) -> PreTrainedTokenizerBase:
    """AutoTokenizer from `path`, else from the model directory `model` when it holds one, else the bundled one.

    Every failure is a UsageError naming `flag` and the path (a CLI's one line): a directory that is missing or
    holds no tokenizer, or one transformers cannot load. `owner/name` that is no directory is a Hub id, except for
    training (train.py's paths are local: a mistyped one fails at once, not after the Hub's retries), which also
    needs pad and eos (padding, and the end of every packed document)."""
    if path is None and model and os.path.isfile(os.path.join(model, "tokenizer_config.json")):
        path = model
    path = str(path or BUNDLED_TOKENIZER)
    if os.path.isdir(path):
        if not any(os.path.exists(os.path.join(path, name)) for name in TOKENIZER_FILES):
            raise UsageError(f"{flag} {path}: no tokenizer.json in the directory")
    elif os.path.sep in path and (training or not _hub_id(path)):
        raise UsageError(f"{flag} {path}: directory not found")
    tokenizer = load_pretrained(AutoTokenizer, path, flag)
    if training and (tokenizer.pad_token_id is None or tokenizer.eos_token_id is None):
        raise UsageError(f"{flag} {path}: the tokenizer needs pad and eos tokens")
    return tokenizer


def best_device_and_dtype() -> tuple[str, torch.dtype]:
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps", torch.float16
    return "cpu", torch.float32


def load_model(
    model_path: str, tokenizer_path: str | None = None, base_model: str | None = None, device: str | None = None
):
    """(model in eval mode on the best device, tokenizer) from a final_model, a Trainer checkpoint, or a peft LoRA
    adapter (with its base); a UsageError names what is wrong."""
    import moai_llm  # noqa: F401  (registers the MOAI Auto classes)

    path = Path(model_path)
    if not path.is_dir():
        raise UsageError(f"--model_path {model_path}: no such directory")
    auto_device, dtype = best_device_and_dtype()
    device = device or auto_device
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        settings = _load("--model_path", model_path, json.loads, adapter.read_text())
        base = base_model or settings.get("base_model_name_or_path")
        if not base:
            raise UsageError(f"--model_path {model_path}: LoRA adapter without a base; pass --base_model")
        model = load_pretrained(AutoModelForCausalLM, base, "--base_model", dtype=dtype)
        from peft import PeftModel

        model = _load("--model_path", model_path, PeftModel.from_pretrained, model, model_path)
        default_tokenizer = model_path if (path / "tokenizer.json").exists() else base
    else:
        if not (path / "config.json").is_file():
            raise UsageError(f"--model_path {model_path}: no config.json (not a model directory)")
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise UsageError(f"--model_path {model_path}: no model.safetensors (incomplete model directory)")
        model = load_pretrained(AutoModelForCausalLM, model_path, dtype=dtype)
        default_tokenizer = model_path
    tokenizer_dir = tokenizer_path or default_tokenizer
    try:
        tokenizer = load_tokenizer(tokenizer_dir, flag="tokenizer")
    except UsageError as err:
        raise UsageError(f"{err}; pass --tokenizer_path") from None
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise UsageError(
            f"tokenizer {tokenizer_dir} has {len(tokenizer)} tokens but the model has {rows} "
            "embedding rows: they do not belong together"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _load(flag: str, path: str, load, *args, **kwargs):
    """`load(*args, **kwargs)`; a missing, unreadable or corrupt file, or a Hub id that does not exist, is one
    UsageError line naming `flag` and `path`."""
    try:
        return load(*args, **kwargs)
    except (OSError, ValueError, SafetensorError) as err:
        raise UsageError(f"{flag} {path}: cannot be loaded ({_first_line(err, 160)})") from None


def load_pretrained(cls, path: str, flag: str = "--model_path", **kwargs):
    """`cls.from_pretrained(path, **kwargs)`; what cannot be loaded (no such directory, a Hub id that does not exist
    or cannot be reached, a corrupt config, weights or tokenizer file) is a UsageError naming `flag` and `path`."""
    if os.path.sep in path and not os.path.isdir(path) and not _hub_id(path):
        raise UsageError(f"{flag} {path}: no such directory")
    return _load(flag, path, cls.from_pretrained, path, **kwargs)


def _hub_id(path: str) -> bool:
    """`owner/name`: what transformers would look up on the Hub rather than on disk."""
    return path.count("/") == 1 and not path.startswith((".", "/", "~")) and all(path.split("/"))


def _first_line(err: BaseException, limit: int) -> str:
    return str(err).splitlines()[0][:limit] if str(err) else type(err).__name__
