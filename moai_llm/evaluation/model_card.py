"""The model's card: the architecture facts of a loaded model (report.md, results.json), and final_model/README.md,
a Hugging Face model card (huggingface_hub's ModelCard) so that a pushed model shows what it is, how it was trained
and, once eval.py has run, its scores in the `model-index` block the Hub reads.

train.py writes the README.md at the end of a run; eval.py rewrites it with the results (a README.md that train.py
did not write, i.e. one without the `moai-llm` tag, is left alone)."""

import itertools
import json
import logging
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..moe import parameter_counts
from .report import facts_table, table
from .suites import headline_metric

logger = logging.getLogger(__name__)
TAG = "moai-llm"
HANGUL = re.compile(r"[\uac00-\ud7a3]")
LATIN = re.compile(r"[A-Za-z]")
ENGLISH_WORDS = re.compile(r"\b(the|and|of|to|is|that)\b", re.IGNORECASE)
GENERATION = "text-generation"  # the model-index task type of every score
PRETRAIN = "a base model from pretraining: it continues text, it does not follow chat turns"
SFT = "fine-tuned for chat (ChatML turns)"
CARD = """---
{{ card_data }}
---

# {{ name }}

A Qwen3-architecture causal language model trained with MOAI-LLM; {{ what }}.

## Architecture

{{ architecture }}

## Training

{{ training }}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{{ path }}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{{ path }}")
```

## Evaluation

{{ evaluation }}

License: not set; add a `license` to the metadata above before publishing.
"""


def _layer_ranges(layers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    parts = []
    for _, run in itertools.groupby(enumerate(layers), lambda pair: pair[1] - pair[0]):
        run = [layer for _, layer in run]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(parts) or "none"


def _rope(config) -> str:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = rope.get("rope_type") or rope.get("type") or "default"
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    text = f"{kind}, theta {theta:g}" if isinstance(theta, (int, float)) else kind
    if rope.get("factor"):
        text += f", factor {rope['factor']} from {rope.get('original_max_position_embeddings')}"
    return text


def moe_layout(config) -> str | None:
    experts = getattr(config, "num_experts", 0) or 0
    if not experts:
        return None
    layers = list(range(config.num_hidden_layers))
    is_moe = getattr(config, "is_moe_layer", None)
    moe_layers = [i for i in layers if is_moe(i)] if is_moe else layers
    text = f"{experts} routed experts, top-{config.num_experts_per_tok}, expert width {config.moe_intermediate_size}"
    if shared := getattr(config, "shared_expert_intermediate_size", 0):
        text += f", shared expert width {shared}"
    dense = [i for i in layers if i not in moe_layers]
    return text + f"; MoE layers {_layer_ranges(moe_layers)}" + (f", dense {_layer_ranges(dense)}" if dense else "")


def adapter_facts(model_path: str) -> str | None:
    path = Path(model_path) / "adapter_config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    targets = config.get("target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else targets
    return (
        f"{config.get('peft_type', 'LORA')} r={config.get('r')}, alpha={config.get('lora_alpha')} on {targets}; "
        f"base {config.get('base_model_name_or_path')} (merged for evaluation)"
    )


def model_card(model, model_path: str) -> dict[str, str]:
    """Ordered label -> value rows for the report's architecture table (also stored in results.json)."""
    config = model.config
    total, active = parameter_counts(model)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    card = {
        "architecture": f"{type(model).__name__} ({config.model_type})",
        "total parameters": f"{total:,}",
        "active parameters per token": f"{active:,}",
        "layers": str(config.num_hidden_layers),
        "hidden size": str(config.hidden_size),
        "attention heads (query / key-value)": f"{heads} / {kv_heads}, head_dim {head_dim}",
        "feed-forward width": str(config.intermediate_size),
        "vocabulary": f"{config.vocab_size:,}",
        "context (max_position_embeddings)": f"{config.max_position_embeddings:,}",
        "RoPE": _rope(config),
        "QK-norm": "yes" if getattr(config, "use_qk_norm", True) else "no",
        "tied embeddings": "yes" if getattr(config, "tie_word_embeddings", False) else "no",
        "Mixture of Experts": moe_layout(config) or "no (dense)",
        "dtype / attention": f"{str(model.dtype).removeprefix('torch.')} / {config._attn_implementation}",
    }
    if adapter := adapter_facts(model_path):
        card["LoRA adapter"] = adapter
    return card


def detect_languages(texts: list[str]) -> list[str]:
    """`ko` where Hangul is at least a fifth of the letters, `en` where Latin letters with common English words
    are; nothing for text this cannot tell (the card then carries no language)."""
    text = " ".join(texts)
    hangul, latin = len(HANGUL.findall(text)), len(LATIN.findall(text))
    letters = max(hangul + latin, 1)
    languages = []
    if latin / letters >= 0.2 and len(ENGLISH_WORDS.findall(text)) >= 0.01 * max(len(text.split()), 1):
        languages.append("en")
    if hangul / letters >= 0.2:
        languages.append("ko")
    return languages


def scores(results: dict) -> list[tuple[EvalResult, int | None, int | None]]:
    """(model-index entry, shots, documents): each benchmark's headline metric, bits per byte of each file."""
    found = []
    for task in results.get("summary_tasks", []):
        metrics, details = results["tasks"].get(task, {}), (results.get("task_details") or {}).get(task, {})
        metric, shots = headline_metric(task, metrics), details.get("num_fewshot")
        if metric and isinstance(metrics.get(metric), (int, float)):
            value, kind = round(float(metrics[metric]), 6), metric.split(",")[0]
            args = {"num_few_shot": shots} if shots is not None else None
            entry = EvalResult(GENERATION, task, task, kind, value, metric_name=metric, metric_args=args)
            found.append((entry, shots, details.get("documents")))
    for file, ppl in (results.get("perplexity") or {}).items():
        value = round(float(ppl["bits_per_byte"]), 6)
        found.append((EvalResult(GENERATION, "text", Path(file).name, "bits_per_byte", value), 0, ppl.get("documents")))
    return found


def render(data: ModelCardData, path: str, facts: dict, training: dict | None, results: dict | None) -> ModelCard:
    """The card: huggingface_hub writes the metadata block from `data`, CARD the Markdown under it."""
    rows = [
        [e.dataset_name, e.metric_name or e.metric_type, f"{e.metric_value:.4f}", shots, documents]
        for e, shots, documents in scores(results or {})
    ]
    return ModelCard.from_template(
        data,
        template_str=CARD,
        name=data.model_name,
        what=SFT if "sft" in (data.tags or []) else PRETRAIN,
        architecture=facts_table(facts),
        training=facts_table(training) if training else "No training record next to the model.",
        path=path,
        evaluation=table(["task", "metric", "value", "shots", "documents"], rows) if rows else "Not evaluated yet.",
    )


def write_model_card(model_dir, arguments: dict, facts: dict, training: dict | None, languages: list[str]) -> Path:
    """train.py's card: what the model is and how it was trained; no results yet."""
    path = Path(model_dir)
    model, data = arguments.get("model", {}), arguments.get("data", {})
    mode = arguments.get("training", {}).get("mode", "pretrain")
    moe = not facts.get("Mixture of Experts", "no").startswith("no")
    card_data = ModelCardData(
        model_name=path.parent.name or path.name,
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=model.get("pretrained_model"),
        datasets=[name for name in data.get("dataset") or [] if not Path(name).exists()] or None,
        language=languages or None,
        tags=[TAG, "qwen3", mode, *(["moe"] if moe else [])],
    )
    render(card_data, str(path), facts, training, None).save(path / "README.md")
    logger.info("model card written to %s", path / "README.md")
    return path / "README.md"


def update_model_card(model_dir, results: dict) -> Path | None:
    """Put eval.py's results into the card train.py wrote (model-index and the Evaluation table)."""
    path = Path(model_dir) / "README.md"
    if not path.is_file():
        return None
    data = ModelCard.load(path).data
    if TAG not in (data.tags or []):
        logger.info("%s was not written by train.py: left as it is", path)
        return None
    data.eval_results = [entry for entry, _, _ in scores(results)] or None
    render(data, str(model_dir), results.get("model_card") or {}, results.get("training"), results).save(path)
    logger.info("model card updated with the results: %s", path)
    return path
