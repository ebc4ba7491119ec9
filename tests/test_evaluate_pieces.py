"""evaluate.py's pieces that need no trained model: a broken training report never fails the run, and the script
does not shadow Hugging Face's `evaluate` library."""

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
    """The repo root (evaluate.py's folder) is first on sys.path here, as when `python evaluate.py` runs."""
    from moai_llm.evaluation.benchmarks import import_hf_evaluate

    monkeypatch.delitem(sys.modules, "evaluate", raising=False)
    monkeypatch.syspath_prepend(str(REPO))
    import_hf_evaluate()
    import evaluate as library

    assert hasattr(library, "load") and "site-packages" in library.__file__
