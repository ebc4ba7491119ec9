"""The model card facts of a loaded model: architecture, total and active parameters, context, MoE layout."""

import json
from pathlib import Path

from ..moe import parameter_counts


def _layer_ranges(layers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    parts, start = [], None
    for index, layer in enumerate(layers):
        if start is None:
            start = layer
        if index + 1 == len(layers) or layers[index + 1] != layer + 1:
            parts.append(str(start) if start == layer else f"{start}-{layer}")
            start = None
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
    shared = getattr(config, "shared_expert_intermediate_size", 0) or 0
    if shared:
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
    adapter = adapter_facts(model_path)
    if adapter:
        card["LoRA adapter"] = adapter
    return card
