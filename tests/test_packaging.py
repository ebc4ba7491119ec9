"""A non-editable install carries what the code reads at run time (default model config, assets, chat page)."""

import subprocess
import sys
import zipfile

import pytest

from .conftest import REPO

pytestmark = pytest.mark.integration


def test_wheel_ships_default_model_config_and_assets(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("moai_llm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "moai_llm/configs/model_config_tiny.json",
        "moai_llm/configs/training_config.yaml",
        "moai_llm/assets/tokenizer/tokenizer.json",
        "moai_llm/serving/static/index.html",
        "moai_llm/training/resolve.py",
        "moai_llm/batch_format.py",
    ):
        assert expected in names, expected
