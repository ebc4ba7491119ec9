"""The code names that ARCHITECTURE.md and docs/*.md quote exist, so a renamed or removed function takes its
mention with it. Checked, in backticks:

- a path ending in `.py` (`moai_llm/data/rows.py`, `rows.py`): a tracked file whose path ends with it (or one of
  transformers' model files, which the model docs compare against); so is a file named first on a line of a plain
  fenced block (the file tables);
- a dotted name whose first part is a moai_llm module (`moai_llm.data`, `data_setup`, `sources`) or a class
  defined in moai_llm (`MoaiTrainer`): every later part is an attribute or a submodule (`data.sources.iter_records`,
  `MoaiTrainer.compute_loss`); names of files (`config.json`) are not code;
- a bare snake_case name (`causal_lm_loss`, `create_loss_function(spec)`): a word of the repository's code, or one
  of the other libraries' names in EXTERNAL.
"""

import ast
import dataclasses
import importlib
import inspect
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from .conftest import REPO

DOCS = [REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]
QUOTED = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"[\w./-]+\.py")
DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
SNAKE = re.compile(r"([a-z][a-z0-9]*_\w*)(?:\(.*\))?")
FILE_SUFFIXES = {"bin", "csv", "html", "jinja", "json", "jsonl", "md", "npy", "parquet", "png", "sh", "txt", "yaml"}
MISSING = object()
CODE_SUFFIXES = (".py", ".sh", ".yaml", ".json", ".html")
THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()
EXTERNAL = {
    "get_last_checkpoint",  # transformers.trainer_utils
    "loglikelihood_rolling",  # lm-eval's LM interface
    "main_process_first",  # transformers' TrainingArguments
    "save_to_disk",  # datasets.Dataset
    "moai_prompt_tokens_total",  # the /metrics name prometheus_client gives the counter moai_prompt_tokens
}


def quoted_names() -> list[tuple[str, str]]:
    """(doc, text) for every backticked span outside fenced blocks, and every .py file named first on a line of a
    plain fenced block."""
    found = []
    for doc in DOCS:
        fence = None
        for line in doc.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith("```"):
                fence = None if fence is not None else line.strip()[3:]
                continue
            if fence is None:
                found += [(doc.name, text) for text in QUOTED.findall(line)]
            elif fence == "" and line.split() and PATH.fullmatch(line.split()[0]):
                found.append((doc.name, line.split()[0]))
    return found


@cache
def tracked_files() -> tuple[str, ...]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return tuple(listed.split())


@cache
def code_words() -> frozenset[str]:
    words = set()
    for path in tracked_files():
        if path.endswith(CODE_SUFFIXES) and path != THIS_FILE:  # its examples of missing names are no code
            words.update(re.findall(r"[A-Za-z_]\w*", (REPO / path).read_text(encoding="utf-8", errors="ignore")))
    return frozenset(words)


@cache
def moai_names() -> dict[str, list[str]]:
    """First part -> what it may mean: module basenames (`sources`, `data`) and top-level classes of moai_llm."""
    names: dict[str, list[str]] = {"moai_llm": ["moai_llm"]}
    for path in sorted((REPO / "moai_llm").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names.setdefault(module.rsplit(".", 1)[-1], []).append(module)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                names.setdefault(node.name, []).append(f"{module}:{node.name}")
    return names


def has_attribute(owner, name: str):
    """The attribute, the submodule, or a dataclass field / attribute the class sets on `self`; MISSING if none."""
    if hasattr(owner, name):
        return getattr(owner, name)
    if inspect.ismodule(owner):
        try:
            return importlib.import_module(f"{owner.__name__}.{name}")
        except ModuleNotFoundError:
            return MISSING
    if inspect.isclass(owner):
        if dataclasses.is_dataclass(owner) and name in {f.name for f in dataclasses.fields(owner)}:
            return name
        if re.search(rf"self\.{name}\b", inspect.getsource(owner)):
            return name
    return MISSING


def dotted_exists(text: str) -> bool | None:
    """True/False for a moai_llm name; None when the first part names nothing of moai_llm."""
    first, *rest = text.split(".")
    meanings = moai_names().get(first)
    if not meanings or rest[-1] in FILE_SUFFIXES:
        return None
    for meaning in meanings:
        module, _, cls = meaning.partition(":")
        owner = importlib.import_module(module)
        owner = getattr(owner, cls) if cls else owner
        for part in rest:
            owner = has_attribute(owner, part)
            if owner is MISSING:
                break
        else:
            return True
    return False


def path_exists(text: str) -> bool:
    if any(path == text or path.endswith("/" + text) for path in tracked_files()):
        return True
    import transformers

    return "/" not in text and any(Path(transformers.__file__).parent.glob(f"models/*/{text}"))


def missing(doc: str, text: str) -> str | None:
    if PATH.fullmatch(text):
        return None if path_exists(text) else f"{doc}: `{text}`: no such file"
    if DOTTED.fullmatch(text):
        return None if dotted_exists(text) is not False else f"{doc}: `{text}`: no such name in moai_llm"
    snake = SNAKE.fullmatch(text)
    if snake and snake.group(1) not in code_words() and snake.group(1) not in EXTERNAL:
        return f"{doc}: `{text}`: named nowhere in the code"
    return None


def test_quoted_code_names_exist():
    problems = sorted({problem for doc, text in quoted_names() if (problem := missing(doc, text))})
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "text", ["moai_llm/data/nothing.py", "data_setup.no_such_function", "MoaiTrainer.no_such_method", "gone_name()"]
)
def test_a_missing_name_is_found(text):
    assert missing("doc", text)
