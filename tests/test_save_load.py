"""Checkpoints: safetensors round trip, Auto classes, remote code without the package, Qwen3 export."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, Qwen3ForCausalLM

from moai_llm import MoaiConfig, MoaiForCausalLM, MoaiModel
from moai_llm.export import main as export_main

from .conftest import tiny_config


def test_round_trip_with_auto_classes(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert {"modeling_moai.py", "configuration_moai.py", "losses.py"} <= files
    assert "legacy_losses.py" not in files  # the old tool's loss API is no part of the model
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "moai"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_moai.MoaiForCausalLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_moai.MoaiConfig"
    # registered only while saving: generate() treats registered classes as remote code (slower decoding)
    assert MoaiForCausalLM._auto_class is None and MoaiConfig._auto_class is None
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MoaiConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, MoaiForCausalLM)
    ids = torch.randint(3, 128, (1, 10))
    assert torch.equal(loaded(ids).logits, tiny_model(ids).logits)
    assert isinstance(AutoModel.from_pretrained(tmp_path), MoaiModel)


MOE = dict(
    num_experts=4,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
    num_hidden_layers=3,
    mlp_only_layers=[0],
)  # every kind of feed-forward: dense, routed experts, shared expert


@pytest.mark.integration
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_remote_code_load_without_the_package(tmp_path, tiny_model, moe):
    if moe:
        tiny_model = MoaiForCausalLM(tiny_config(**MOE)).eval()
    tiny_model.save_pretrained(tmp_path / "model")
    ids = torch.randint(3, 128, (1, 10))
    with torch.no_grad():
        out = tiny_model(ids)
    aux = out.aux_loss if moe else None
    torch.save({"ids": ids, "logits": out.logits, "aux": aux}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["moai_llm"] = None  # any `import moai_llm` now fails
        try:
            import moai_llm
            raise SystemExit("moai_llm unexpectedly importable")
        except ImportError:
            pass
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(r"{tmp_path / "model"}", trust_remote_code=True).eval()
        expected = torch.load(r"{tmp_path / "expected.pt"}")
        diff = (model(expected["ids"]).logits - expected["logits"]).abs().max().item()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert diff == 0.0, diff
        if expected["aux"] is not None:
            assert model.config._experts_implementation == "grouped_mm", model.config._experts_implementation
            assert torch.equal(model(expected["ids"]).aux_loss, expected["aux"])
        print("remote-ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "remote-ok" in result.stdout, result.stderr[-2000:]


def test_export_to_plain_qwen3(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "moai")
    assert export_main(["--model_path", str(tmp_path / "moai"), "--output_dir", str(tmp_path / "qwen3")]) == 0
    config = json.loads((tmp_path / "qwen3" / "config.json").read_text())
    assert config["model_type"] == "qwen3" and "auto_map" not in config
    qwen3 = Qwen3ForCausalLM.from_pretrained(tmp_path / "qwen3")
    ids = torch.randint(3, 128, (1, 10))
    assert (qwen3(ids).logits - tiny_model(ids).logits).abs().max() <= 1e-6


def test_export_refuses_model_without_qk_norm(tmp_path, capsys):
    MoaiForCausalLM(tiny_config(use_qk_norm=False)).save_pretrained(tmp_path / "moai")
    assert export_main(["--model_path", str(tmp_path / "moai"), "--output_dir", str(tmp_path / "out")]) == 2
    assert "use_qk_norm=False" in capsys.readouterr().err


def test_qwen3_checkpoint_loads_into_moai(tmp_path, tiny_model):
    """A plain Qwen3 checkpoint loads into MoaiForCausalLM with every weight read (same logits as Qwen3's)."""
    from .conftest import qwen3_twin

    qwen3 = qwen3_twin(tiny_model)
    qwen3.save_pretrained(tmp_path)
    model = MoaiForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(model, MoaiForCausalLM)
    ids = torch.randint(3, 128, (2, 12))
    with torch.no_grad():
        assert (model(ids).logits - qwen3(ids).logits).abs().max() <= 1e-6
