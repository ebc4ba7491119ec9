"""eval.py's pieces that need no trained model: a broken training report never fails the run, and no script
shadows Hugging Face's `evaluate` library."""

import sys

from .conftest import REPO


def test_training_report_never_fails_the_run(caplog):
    from moai_llm.evaluation.end_of_run import write_training_report

    class Broken:
        args = type("Args", (), {"output_dir": "/nonexistent/run"})()

        def save_state(self):
            raise OSError("disk full")

    assert write_training_report(Broken()) is None
    assert "training report not written: OSError: disk full" in caplog.text


def test_hf_evaluate_library_is_not_shadowed_by_the_script(monkeypatch):
    """lm-eval imports Hugging Face's `evaluate`; with the repo root first on sys.path (as when `python eval.py`
    runs) that import must find the library, not a script of the same name."""
    monkeypatch.delitem(sys.modules, "evaluate", raising=False)
    monkeypatch.syspath_prepend(str(REPO))
    assert not (REPO / "evaluate.py").exists()
    import evaluate as library

    assert hasattr(library, "load") and "site-packages" in library.__file__


def test_a_hub_id_that_does_not_exist_or_a_corrupt_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    """eval.py: a Hub id as --model_path or as an adapter's base, corrupt weights or a corrupt adapter_config.json
    are `eval.py: error: ...` on one line (exit 2), not a traceback."""
    import json

    import torch

    import eval as eval_cli  # the repo's eval.py
    from moai_llm import MoaiForCausalLM
    from moai_llm.loading import load_tokenizer

    from .conftest import tiny_config
    from .eval_helpers import go_offline

    go_offline(monkeypatch)
    text = tmp_path / "doc.txt"
    text.write_text("To be, or not to be.")
    torch.manual_seed(0)
    (corrupt := tmp_path / "corrupt").mkdir()
    MoaiForCausalLM(tiny_config(vocab_size=8192)).save_pretrained(corrupt)
    load_tokenizer().save_pretrained(corrupt)
    (corrupt / "model.safetensors").write_bytes((corrupt / "model.safetensors").read_bytes()[:1000])
    (orphan := tmp_path / "adapter").mkdir()
    (orphan / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "moai-test/no-such-model"}))
    (broken := tmp_path / "broken_adapter").mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    cases = {
        "moai-test/no-such-model": "--model_path moai-test/no-such-model: no such directory",
        str(orphan): "--base_model moai-test/no-such-model: cannot be loaded (",
        str(corrupt): f"--model_path {corrupt}: cannot be loaded (",
        str(broken): f"--model_path {broken}: cannot be loaded (",
    }
    capsys.readouterr()  # the progress bars of the setup
    for model_path, message in cases.items():
        assert eval_cli.main(["--model_path", model_path, "--eval_file", str(text), "--no_samples"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"eval.py: error: {message}"), lines
