"""The docs' examples are tests: in README.md, ARCHITECTURE.md, docs/*.md and benchmarks/README.md every fenced
python block runs, and so does every shell line that takes seconds (a line with `--help`, or starting with
`DRY_RUN=1`). A docs example that is not run drifts, and so does a link: every relative link must name a file that
exists and, with `#anchor`, a heading in it.

A python block may stay unrun only when the last non-blank line before its fence is one of SKIP_MARKERS (it needs
a GPU or the Hugging Face Hub); such blocks are still compiled. Examples run from a scratch copy of the repo
(symlinks, so nothing is written into the checkout) holding `outputs/pretrain-tiny/final_model`, the quick-start
model, made here by a one-step `train.py` run. All python blocks share one interpreter (one import of torch and
transformers), each in fresh globals; a block that kills the interpreter fails alone and the rest go on.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from .conftest import REPO

DOCS = (
    "README.md",
    "ARCHITECTURE.md",
    *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")),
    "benchmarks/README.md",
)
MARKER_PREFIX = "*Not run by the README test"
SKIP_MARKERS = (
    "*Not run by the README test: needs a GPU.*",
    "*Not run by the README test: needs the Hugging Face Hub.*",
)
SHELL_LANGS = {"bash", "sh", "shell", "console"}
QUICKSTART_RUN = [
    "train.py",
    "--max_steps",
    "1",
    "--batch_size",
    "1",
    "--max_seq_length",
    "64",
    "--eval_fraction",
    "0",
    "--save_strategy",
    "no",
    "--output_dir",
    "outputs/pretrain-tiny",
]
RUNNER = """
import json, os, sys, time, traceback
blocks, results, start = json.load(open(sys.argv[1])), open(sys.argv[2], "a"), int(sys.argv[3])
workspace = os.getcwd()
for block in blocks[start:]:
    os.chdir(workspace)
    began, error = time.time(), None
    try:
        exec(compile(block["source"], block["doc"], "exec"), {"__name__": "__main__"})
    except SystemExit as stop:
        error = None if stop.code in (None, 0) else f"SystemExit({stop.code!r})"
    except BaseException:
        error = traceback.format_exc()[-3000:]
    results.write(json.dumps({"id": block["id"], "error": error, "seconds": time.time() - began}) + "\\n")
    results.flush()
"""


@dataclass
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None  # the last non-blank line before the fence when it is a skip marker

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def fenced_blocks(doc: str) -> list[Block]:
    lines = (REPO / doc).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"\s*(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, lang = opening.groups()
        end = i + 1
        while end < len(lines) and not re.fullmatch(rf"\s*{re.escape(fence[0])}{{{len(fence)},}}\s*", lines[end]):
            end += 1
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        marker = before if before.startswith(MARKER_PREFIX) else None
        blocks.append(Block(doc, i + 1, lang.lower(), textwrap.dedent("\n".join(lines[i + 1 : end])), marker))
        i = end + 1
    return blocks


def shell_commands(block: Block) -> list[tuple[int, str]]:
    """(line, command) of the lines run here: `--help` among the words, or starting with DRY_RUN=1."""
    commands, pending, first = [], "", None
    for number, line in enumerate(block.code.splitlines(), block.line + 1):
        line = line.strip().removeprefix("$ ")
        first = number if not pending else first
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        command, pending = (pending + line).strip(), ""
        try:
            words = shlex.split(command, comments=True)
        except ValueError:
            words = command.split()
        if words and ("--help" in words or words[0] == "DRY_RUN=1"):
            commands.append((first, command))
    return commands


BLOCKS = [block for doc in DOCS for block in fenced_blocks(doc)]
PYTHON = [b for b in BLOCKS if b.lang in ("python", "py") and b.marker is None]
UNRUN = [b for b in BLOCKS if b.lang in ("python", "py") and b.marker is not None]
SHELL = [(f"{b.doc}:{line}", command) for b in BLOCKS if b.lang in SHELL_LANGS for line, command in shell_commands(b)]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg")
    for name in ("NUM_GPUS", "GPU_MEMORY", "MODEL_SIZE", "NNODES", "NODE_RANK", "MASTER_ADDR", "DRY_RUN"):
        env.pop(name, None)  # the examples say what they set
    return env


def _repo_state():
    """What the examples could leave behind in the checkout: git's view and the (git-ignored) outputs/."""
    status = ""
    if (REPO / ".git").exists():
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    outputs = sorted(str(p) for p in (REPO / "outputs").rglob("*")) if (REPO / "outputs").is_dir() else []
    return status, outputs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A scratch repo root: symlinks to every top-level entry but outputs/, and processes started in it at once
    (the quick-start model's training and the shell lines) so they overlap."""
    root = tmp_path_factory.mktemp("readme")
    logs = tmp_path_factory.mktemp("readme_logs")
    before = _repo_state()
    for entry in REPO.iterdir():
        if entry.name not in (".git", "outputs"):
            (root / entry.name).symlink_to(entry)

    def start(name, args):
        out = open(logs / f"{name}.log", "w+")  # noqa: SIM115  (closed in the teardown below, after the process)
        return subprocess.Popen(args, cwd=root, env=_env(), stdout=out, stderr=subprocess.STDOUT), out

    training = start("train", [sys.executable, *QUICKSTART_RUN])
    shells = {where: start(f"shell{i}", ["bash", "-c", command]) for i, (where, command) in enumerate(SHELL)}
    yield {"root": root, "logs": logs, "training": training, "shells": shells, "before": before}
    for process, out in [training, *shells.values()]:
        if process.poll() is None:
            process.kill()
            process.wait()
        out.close()


def _finish(process_and_log, timeout=300) -> tuple[int, str]:
    process, out = process_and_log
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    out.seek(0)
    return code, out.read()


@pytest.fixture(scope="module")
def python_results(workspace):
    code, log = _finish(workspace["training"])
    assert code == 0, f"the quick-start run ({' '.join(QUICKSTART_RUN)}) failed:\n{log[-3000:]}"
    assert (workspace["root"] / "outputs" / "pretrain-tiny" / "final_model" / "config.json").is_file()
    logs = workspace["logs"]
    payload = [{"id": b.id, "doc": b.doc, "source": "\n" * b.line + b.code} for b in PYTHON]  # doc line numbers
    (logs / "blocks.json").write_text(json.dumps(payload))
    (logs / "runner.py").write_text(RUNNER)
    results, start = {}, 0
    while start < len(payload):
        run = subprocess.run(
            [
                sys.executable,
                str(logs / "runner.py"),
                str(logs / "blocks.json"),
                str(logs / "results.jsonl"),
                str(start),
            ],
            cwd=workspace["root"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
        )
        for line in (logs / "results.jsonl").read_text().splitlines():
            entry = json.loads(line)
            results[entry["id"]] = entry
        done = sum(1 for block in payload if block["id"] in results)
        if done < len(payload):  # the interpreter died inside block `done`: blame it, go on after it
            results[payload[done]["id"]] = {
                "error": f"the interpreter died (exit {run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}",
                "seconds": None,
            }
            done += 1
        start = done
    return results


@pytest.fixture(scope="module")
def shell_results(workspace):
    return {where: _finish(handle, timeout=120) for where, handle in workspace["shells"].items()}


def test_skip_markers_name_an_allowed_reason_next_to_a_python_block():
    problems = []
    for doc in DOCS:
        lines = (REPO / doc).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip().startswith(MARKER_PREFIX):
                continue
            if line.strip() not in SKIP_MARKERS:
                problems.append(f"{doc}:{number}: {line.strip()!r} is not one of {SKIP_MARKERS}")
            following = next((later.strip() for later in lines[number:] if later.strip()), "")
            if not re.match(r"(`{3,}|~{3,})\s*py(thon)?\s*$", following):
                problems.append(f"{doc}:{number}: the marker is not right before a python block")
    assert not problems, "\n".join(problems)


def test_docs_have_python_examples():
    assert PYTHON, f"no runnable python block found in {', '.join(DOCS)}"


def test_unrun_python_blocks_still_compile():
    for block in UNRUN:
        compile("\n" * block.line + block.code, block.doc, "exec")  # a SyntaxError names the doc and line


@pytest.mark.integration
@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs(block, python_results):
    result = python_results[block.id]
    assert result["error"] is None, f"{block.id} failed:\n{result['error']}"


@pytest.mark.integration
@pytest.mark.parametrize("where, command", SHELL, ids=[where for where, _ in SHELL])
def test_shell_line_exits_0(where, command, shell_results):
    code, output = shell_results[where]
    assert code == 0, f"{where}: `{command}` exited {code}:\n{output[-3000:]}"


@pytest.mark.integration
def test_examples_leave_the_checkout_untouched(workspace, python_results, shell_results):
    assert _repo_state() == workspace["before"]


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _outside_code(text: str) -> str:
    """The Markdown text without its fenced blocks (a `#` comment in code is not a heading, `](` in code no link)."""
    return re.sub(r"^[ \t]*(`{3,}|~{3,}).*?^[ \t]*\1", "", text, flags=re.MULTILINE | re.DOTALL)


def _anchors(text: str) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", _outside_code(text), flags=re.MULTILINE)
    return {heading_anchor(heading) for heading in headings}


def test_relative_links_point_to_existing_files_and_headings():
    problems = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _outside_code((REPO / doc).read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (REPO / doc).parent / path if path else REPO / doc
            if not file.exists():
                problems.append(f"{doc}: link {target!r}: {path} does not exist")
            elif anchor and anchor not in _anchors(file.read_text(encoding="utf-8")):
                problems.append(f"{doc}: link {target!r}: no heading with anchor #{anchor} in {path or doc}")
    assert not problems, "\n".join(problems)
