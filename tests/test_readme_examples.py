"""Every fenced python block of README.md and ARCHITECTURE.md runs, and so do the docs' fast shell lines.

A block that cannot run here says so, visibly, on the last non-blank line before its fence: one of
MARKERS. Blocks run in a scratch workspace that links the repo's files and holds
`outputs/pretrain-tiny/final_model` (the quick start's model, trained here in a few seconds), so nothing is
written into the checkout.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

DOCS = ("README.md", "ARCHITECTURE.md")
MARKERS = {
    "*Not run by the README test: needs a GPU.*": "needs a GPU",
    "*Not run by the README test: needs the Hugging Face Hub.*": "needs the Hugging Face Hub",
}
MARKER_PREFIX = "*Not run by the README test"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def _blocks():
    """(doc, line, language, code, marker or None) for every fenced block."""
    found = []
    for doc in DOCS:
        text = (REPO / doc).read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            before = [line.strip() for line in text[: match.start()].splitlines() if line.strip()]
            marker = before[-1] if before and before[-1].startswith(MARKER_PREFIX) else None
            line = text[: match.start()].count("\n") + 1
            found.append((doc, line, match.group(1), match.group(2), marker))
    return found


BLOCKS = _blocks()
PYTHON = [b for b in BLOCKS if b[2] == "python"]


def _shell_commands():
    """(doc, line, command) for each shell line that takes seconds: `--help`, or a `DRY_RUN=1` plan."""
    commands = []
    for doc, line, language, code, marker in BLOCKS:
        if language not in ("bash", "sh", "shell") or marker:
            continue
        for offset, command in enumerate(re.sub(r"\\\n\s*", " ", code).splitlines()):
            command = command.strip()
            if "--help" in command or command.startswith("DRY_RUN=1"):
                commands.append((doc, line + 1 + offset, command))
    return commands


SHELL = _shell_commands()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A directory that looks like the checkout (links) plus the quick start's trained final_model."""
    from .train_helpers import run_inprocess

    root = tmp_path_factory.mktemp("readme")
    for entry in REPO.iterdir():
        if entry.name not in (".git", "outputs"):
            (root / entry.name).symlink_to(entry)
    run_inprocess([
        "--output_dir", str(root / "outputs" / "pretrain-tiny"), "--max_steps", "3", "--max_seq_length", "64",
        "--batch_size", "2", "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true",
        "--disable_tqdm", "true", "--logging_steps", "1",
    ])
    assert (root / "outputs" / "pretrain-tiny" / "final_model" / "model.safetensors").is_file()
    return root


def _run(args, workspace, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(args, cwd=workspace, env=env, capture_output=True, text=True, timeout=timeout)


def test_markers_are_only_the_allowed_reasons():
    for doc in DOCS:
        for number, line in enumerate((REPO / doc).read_text(encoding="utf-8").splitlines(), 1):
            if line.strip().startswith(MARKER_PREFIX):
                assert line.strip() in MARKERS, f"{doc}:{number}: unknown not-run marker {line.strip()!r}"


def test_the_docs_have_examples_to_run():
    assert len([b for b in PYTHON if not b[4]]) >= 3
    assert any("train.py --help" in c for _, _, c in SHELL)
    assert any(c.startswith("DRY_RUN=1") and "pretrain.sh" in c for _, _, c in SHELL)
    assert any("moai_llm.export --help" in c for _, _, c in SHELL)


@pytest.mark.parametrize("doc, line, language, code, marker", PYTHON, ids=[f"{b[0]}:{b[1]}" for b in PYTHON])
def test_python_block_runs(doc, line, language, code, marker, workspace):
    if marker:
        pytest.skip(f"{doc}:{line}: {MARKERS[marker]}")
    script = workspace / f"block_{Path(doc).stem}_{line}.py"
    script.write_text(code, encoding="utf-8")
    result = _run([sys.executable, str(script)], workspace)
    assert result.returncode == 0, f"{doc}:{line} failed:\n{code}\n--- stderr:\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("doc, line, command", SHELL, ids=[f"{d}:{n}" for d, n, _ in SHELL])
def test_shell_line_runs(doc, line, command, workspace):
    result = _run(["bash", "-c", command.replace("python ", f"{sys.executable} ", 1)], workspace, timeout=120)
    assert result.returncode == 0, f"{doc}:{line}: {command}\n--- stderr:\n{result.stderr[-2000:]}"
