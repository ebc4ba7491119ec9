"""MoE export: Qwen3-MoE for routed experts, Qwen2-MoE for a shared expert (QK-norm off), a one-line refusal when
neither can express the model; the exported directory loads with AutoModelForCausalLM in a process without moai_llm
and gives MOAI's logits."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from moai_llm import MoaiForCausalLM
from moai_llm.export import main as export_main

from .conftest import tiny_config

ROUTED = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, num_hidden_layers=3, mlp_only_layers=[0])
SHARED = dict(ROUTED, shared_expert_intermediate_size=48)


@pytest.mark.integration
def test_moe_exports_load_without_the_package_and_give_moais_logits(tmp_path):
    cases = {"qwen3_moe": ROUTED, "qwen2_moe": dict(SHARED, use_qk_norm=False)}
    ids = torch.randint(3, 128, (2, 12))
    expected = {}
    for model_type, fields in cases.items():
        torch.manual_seed(0)
        model = MoaiForCausalLM(tiny_config(**fields)).eval()
        model.save_pretrained(tmp_path / model_type / "moai")
        out = tmp_path / model_type / "export"
        assert export_main(["--model_path", str(tmp_path / model_type / "moai"), "--output_dir", str(out)]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == model_type and "auto_map" not in config
        assert not list(out.glob("*.py"))  # no remote code: transformers' own classes
        with torch.no_grad():
            expected[model_type] = model(ids).logits
    torch.save({"ids": ids, "logits": expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["moai_llm"] = None  # any `import moai_llm` now fails
        import torch
        from transformers import AutoModelForCausalLM
        expected = torch.load(r"{tmp_path / "expected.pt"}")
        for model_type, logits in expected["logits"].items():
            model = AutoModelForCausalLM.from_pretrained(r"{tmp_path}" + "/" + model_type + "/export").eval()
            assert type(model).__module__.startswith("transformers.models."), type(model).__module__
            with torch.no_grad():
                diff = (model(expected["ids"]).logits - logits).abs().max().item()
            print(model_type, type(model).__name__, diff)
            assert diff == 0.0, diff
        print("exports-ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "exports-ok" in result.stdout, result.stdout + result.stderr[-2000:]


def test_shared_expert_with_qk_norm_is_refused_in_one_line(tmp_path, capsys):
    MoaiForCausalLM(tiny_config(**SHARED)).save_pretrained(tmp_path / "moai")
    capsys.readouterr()  # save_pretrained's progress bar
    assert export_main(["--model_path", str(tmp_path / "moai"), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Qwen3-MoE has none" in err and "use_qk_norm=True" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["hub id", "corrupt weights", "no directory"])
def test_unloadable_model_is_refused_in_one_line(source, tmp_path, capsys, monkeypatch):
    """A Hub id that does not exist (offline here: no network in tests), a damaged checkpoint or a missing
    directory is a one-line error (`loading.load_pretrained`), not a traceback."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = {"hub id": "nobody-moai/no-such-model", "no directory": str(tmp_path / "missing")}.get(source)
    if path is None:
        path = str(tmp_path / "moai")
        MoaiForCausalLM(tiny_config()).save_pretrained(path)
        (tmp_path / "moai" / "model.safetensors").write_bytes(b"not safetensors")
    capsys.readouterr()
    assert export_main(["--model_path", path, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"moai_llm.export: error: --model_path {path}: ")
    assert not (tmp_path / "out").exists()


def test_a_hub_id_exports_with_its_tokenizer(tmp_path, monkeypatch):
    """`--model_path owner/name` reads the Hub repo (here a Hub cache, offline: no network in tests), its tokenizer
    files included, as a directory's are."""
    import huggingface_hub.constants

    from moai_llm.loading import load_tokenizer

    snapshot = tmp_path / "hub" / "models--nobody-moai--tiny" / "snapshots" / ("0" * 40)
    MoaiForCausalLM(tiny_config()).save_pretrained(snapshot)
    load_tokenizer().save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert export_main(["--model_path", "nobody-moai/tiny", "--output_dir", str(tmp_path / "out")]) == 0
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (snapshot / name).read_bytes()
