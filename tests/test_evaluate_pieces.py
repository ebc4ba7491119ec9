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
