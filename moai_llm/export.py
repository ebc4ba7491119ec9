"""Write a dense MOAI checkpoint as a plain Qwen3 checkpoint, for serving stacks that know Qwen3.

    python -m moai_llm.export --model_path outputs/run/final_model --output_dir outputs/run/qwen3

The weights are already named as Qwen3's, so this only rewrites the config (model_type qwen3, no auto_map)
and copies the tokenizer files. MoE models and models without QK-norm have no Qwen3 equivalent.
"""

import argparse
import shutil
import sys
from pathlib import Path

from transformers import Qwen3Config, Qwen3ForCausalLM

from .configuration_moai import MoaiConfig
from .modeling_moai import MoaiForCausalLM

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def qwen3_config_from(config: MoaiConfig) -> Qwen3Config:
    """The Qwen3Config with the same architecture; ValueError when Qwen3 cannot express the model."""
    if not config.use_qk_norm:
        raise ValueError("export: use_qk_norm=False has no Qwen3 equivalent (Qwen3 always normalises q and k)")
    if getattr(config, "num_experts", 0):
        raise ValueError("export: MoE models are not Qwen3 dense models; load them with MoaiForCausalLM")
    skip = {"architectures", "auto_map", "transformers_version"}
    fields = {
        name: getattr(config, name)
        for name in Qwen3Config.__dataclass_fields__
        if hasattr(config, name) and not name.startswith("_") and name not in skip
    }
    return Qwen3Config(**fields, architectures=["Qwen3ForCausalLM"])


def export_qwen3(model_path: str, output_dir: str) -> Path:
    model = MoaiForCausalLM.from_pretrained(model_path)
    qwen3 = Qwen3ForCausalLM(qwen3_config_from(model.config)).to(model.dtype)
    qwen3.load_state_dict(model.state_dict(), strict=True)
    qwen3.generation_config = model.generation_config
    out = Path(output_dir)
    qwen3.save_pretrained(out)
    for name in _TOKENIZER_FILES:
        if (Path(model_path) / name).exists():
            shutil.copy(Path(model_path) / name, out / name)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="a MOAI model directory (final_model or checkpoint)")
    parser.add_argument("--output_dir", required=True, help="where the Qwen3 checkpoint is written")
    args = parser.parse_args(argv)
    if not Path(args.model_path, "config.json").is_file():
        print(f"error: --model_path {args.model_path}: no config.json there", file=sys.stderr)
        return 2
    try:
        out = export_qwen3(args.model_path, args.output_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote Qwen3 checkpoint to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
