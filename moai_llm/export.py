"""Write a MOAI checkpoint as a plain transformers checkpoint for serving stacks that know Qwen3 models: dense ->
Qwen3, MoE -> Qwen3-MoE, MoE with a shared expert -> Qwen2-MoE (which has no QK-norm, so only `use_qk_norm=False`
models, with no attention bias and head_dim = hidden / heads, export there). The directory needs no moai_llm.

    python -m moai_llm.export --model_path outputs/run/final_model --output_dir outputs/run/qwen3

The weights are already named as the target's: the state dict loads strictly into the target class, which saves it
(experts one tensor each, as Qwen-MoE checkpoints are laid out), and the tokenizer files are copied (from the
Hub for a Hub id).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from transformers import (
    PreTrainedConfig,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)
from transformers.utils.hub import cached_files

from .configuration_moai import MoaiConfig
from .errors import UsageError
from .flags import Parser
from .loading import load_pretrained
from .modeling_moai import MoaiForCausalLM

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _fields(config: MoaiConfig, target: type[PreTrainedConfig]) -> dict:
    """The target's architecture fields, read from the MOAI config. PreTrainedConfig's own fields are class metadata
    (model_type, attribute_map, parallel plans) or run options, and stay the target's, except the dtype."""
    own = set(target.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__) | {"dtype"}
    return {name: getattr(config, name) for name in sorted(own) if hasattr(config, name)}


def _target_config(config: MoaiConfig, target: type[PreTrainedConfig], **extra) -> PreTrainedConfig:
    """The target's config with the model's architecture fields; a UsageError when QK-norm is off, except for
    Qwen2-MoE, which has none."""
    name = {Qwen3Config: "Qwen3", Qwen3MoeConfig: "Qwen3-MoE"}.get(target)
    if name and not config.use_qk_norm:
        raise UsageError(f"export: use_qk_norm=False has no {name} equivalent ({name} always normalises q and k)")
    architecture = target.__name__.replace("Config", "ForCausalLM")
    return target(**_fields(config, target), **extra, architectures=[architecture])


def qwen3_config_from(config: MoaiConfig) -> Qwen3Config:
    """The dense Qwen3Config with the same architecture; a UsageError when Qwen3 cannot express the model."""
    if getattr(config, "num_experts", 0):
        raise UsageError("export: an MoE model is not a dense Qwen3 model (export_config picks Qwen3-MoE)")
    return _target_config(config, Qwen3Config)


def qwen3_moe_config_from(config: MoaiConfig) -> Qwen3MoeConfig:
    """Qwen3-MoE's config (never Qwen2-MoE's, as export picks for a shared expert), also for comparisons against
    transformers' Qwen3-MoE (parity tests, benchmarks); a UsageError when Qwen3-MoE cannot express the model."""
    if not config.num_experts:
        raise UsageError("qwen3_moe: num_experts=0 is a dense model (see qwen3_config_from)")
    if config.shared_expert_intermediate_size:
        raise UsageError("qwen3_moe: Qwen3-MoE has no shared expert (shared_expert_intermediate_size > 0)")
    return _target_config(config, Qwen3MoeConfig, head_dim=config.head_dim)


def export_config(config: MoaiConfig):
    """(target config, target model class) for a MOAI config: Qwen3, Qwen3-MoE, or Qwen2-MoE for a shared expert."""
    if not getattr(config, "num_experts", 0):
        return qwen3_config_from(config), Qwen3ForCausalLM
    if any(kind != "full_attention" for kind in config.layer_types or []):
        raise UsageError("export: sliding-window layers in an MoE model are not exported (full attention only)")
    if not config.shared_expert_intermediate_size:
        return qwen3_moe_config_from(config), Qwen3MoeForCausalLM
    head_dim = config.hidden_size // config.num_attention_heads
    if config.use_qk_norm or config.attention_bias or config.head_dim != head_dim:
        raise UsageError(
            "export: a shared expert exists only in Qwen2-MoE (Qwen3-MoE has none), and Qwen2-MoE has no QK-norm, "
            f"no output-projection bias and head_dim = hidden_size / heads ({head_dim}); this model has "
            f"use_qk_norm={config.use_qk_norm}, attention_bias={config.attention_bias}, head_dim={config.head_dim}"
        )
    return _target_config(config, Qwen2MoeConfig, qkv_bias=False), Qwen2MoeForCausalLM


def export_qwen3(model_path: str, output_dir: str) -> Path:
    """Export to the Qwen family checkpoint that expresses the model; returns the output directory."""
    config, model_class = export_config(load_pretrained(MoaiConfig, model_path))  # refuse before loading weights
    model = load_pretrained(MoaiForCausalLM, model_path)
    exported = model_class(config).to(model.dtype)
    exported.load_state_dict(model.state_dict(), strict=True)
    exported.generation_config = model.generation_config
    out = Path(output_dir)
    exported.save_pretrained(out)
    # a directory's own files or the Hub repo's, whichever exist (a model saved without a tokenizer has none)
    for path in cached_files(model_path, list(_TOKENIZER_FILES), _raise_exceptions_for_missing_entries=False) or []:
        shutil.copy(path, out / Path(path).name)
    return out


def main(argv=None) -> int:
    parser = Parser("moai_llm.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="a MOAI model: final_model, a checkpoint or a Hub id")
    parser.add_argument("--output_dir", required=True, help="where the Qwen3 / Qwen-MoE checkpoint is written")
    args = parser.parse_args(argv)
    try:
        out = export_qwen3(args.model_path, args.output_dir)
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    kind = {"qwen3": "Qwen3", "qwen3_moe": "Qwen3-MoE", "qwen2_moe": "Qwen2-MoE"}
    model_type = json.loads((out / "config.json").read_text())["model_type"]
    print(f"wrote {kind.get(model_type, model_type)} checkpoint to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
