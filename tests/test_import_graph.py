"""The package's import graph, read from the source (AST, every import including those inside functions): no
cycle, no module importing a command-line script, remote code that a Hub user can load, and training that does
not import the report and plotting code until a run's end asks for it."""

import ast
import functools
import sys
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = REPO / "moai_llm"
SCRIPTS = {p.stem for p in REPO.glob("*.py")} | {"evaluate"}  # train, chat, serve, eval, ...; evaluate: HF's name
REMOTE_ROOTS = ("moai_llm.modeling_moai", "moai_llm.configuration_moai")  # what `auto_map` names
# ARCHITECTURE.md: the model's remote code imports only the standard library, torch, transformers (and
# huggingface_hub, which transformers requires) and flat siblings, which save_pretrained ships with it
REMOTE_PACKAGES = {"torch", "transformers", "huggingface_hub"}
REPORT_MODULES = {f"moai_llm.evaluation.{name}" for name in ("end_of_run", "report", "plots", "model_card", "history")}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@functools.cache
def syntax_tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"))


def imports(name: str, functions: bool = True) -> list[tuple[str, ast.stmt]]:
    """(absolute target, node) of every import in a module; relative imports resolved against its package.
    `from X import y` names X.y when that is a module of the package, else X. With functions=False, only the
    imports that run when the module is imported (not those inside function bodies)."""
    path = MODULES[name]
    tree = syntax_tree(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and not functions:
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                nodes.append(child)
            visit(child)

    visit(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        found += [(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base, node) for a in node.names]
    return found


def graph(functions: bool = True) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (the nearest enclosing module of each target). A package's
    own `__init__` that Python runs on the way to a submodule is not an edge: it would make every submodule that
    its `__init__` imports a cycle."""
    edges = {}
    for name in MODULES:
        targets = set()
        for target, _ in imports(name, functions):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, grey/black marking)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(edges: dict[str, set[str]], roots) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += edges[node]
    return seen


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_no_module_imports_a_script():
    """The CLIs (train.py, eval.py, ...) import the library, never the other way round; `importlib.import_module`
    and `__import__` with a literal name count too."""
    found = [f"{name}: {target}" for name in MODULES for target, _ in imports(name) if target.split(".")[0] in SCRIPTS]
    for name in MODULES:
        for node in ast.walk(syntax_tree(name)):
            called = getattr(node, "func", None)
            if getattr(called, "attr", getattr(called, "id", None)) in ("import_module", "__import__"):
                literal = node.args[0] if node.args and isinstance(node.args[0], ast.Constant) else None
                if literal is not None and str(literal.value).split(".")[0] in SCRIPTS:
                    found.append(f"{name}: import_module({literal.value!r})")
    assert not found, found


def optional_imports(name: str) -> set[int]:
    """ids of the import nodes under `try: ... except ImportError` (transformers' remote-code check skips them)."""
    found = set()
    for node in ast.walk(syntax_tree(name)):
        caught = [h.type for h in getattr(node, "handlers", [])]
        if isinstance(node, ast.Try) and any(isinstance(t, ast.Name) and "ImportError" in t.id for t in caught):
            found |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return found


def test_remote_code_imports_only_torch_transformers_stdlib_and_flat_siblings():
    edges = graph()
    remote = reachable(edges, REMOTE_ROOTS)
    assert {"moai_llm.moe", "moai_llm.losses"} <= remote
    wrong = []
    for name in sorted(remote):
        optional = optional_imports(name)
        for target, node in imports(name):
            if id(node) in optional:
                continue
            top = target.split(".")[0]
            if isinstance(node, ast.ImportFrom) and node.level:
                flat = node.level == 1 and node.module is not None and "." not in node.module
                if not (flat and f"moai_llm.{node.module}" in MODULES and "." not in name.removeprefix("moai_llm.")):
                    wrong.append(f"{name}: from {'.' * node.level}{node.module or ''} (not a flat sibling)")
            elif top not in REMOTE_PACKAGES and top not in sys.stdlib_module_names:
                wrong.append(f"{name}: {target}")
    assert not wrong, wrong


def test_importing_training_does_not_import_the_report_or_plotting_code():
    """Only the imports that run at import time count: the report is imported inside the function that writes it."""
    assert REPORT_MODULES <= MODULES.keys(), sorted(REPORT_MODULES - MODULES.keys())  # a rename must update the list
    edges = graph(functions=False)
    training = [name for name in MODULES if name.startswith("moai_llm.training")]
    loaded = reachable(edges, training)
    assert not loaded & REPORT_MODULES, sorted(loaded & REPORT_MODULES)
    third_party = {target.split(".")[0] for name in loaded for target, _ in imports(name, functions=False)}
    assert not third_party & {"matplotlib", "lm_eval"}, sorted(third_party & {"matplotlib", "lm_eval"})


@pytest.mark.integration  # a whole (one-step) train.py run, in this process
@pytest.mark.parametrize("logged", [False, True])
def test_a_run_imports_the_plotting_code_only_for_a_plot(tmp_path, monkeypatch, logged):
    """With nothing logged to draw (no logging, no checkpoint) the run's end writes training_report.md without
    importing the plotting module; with logging on (the default) it draws plots/training.png."""
    from .train_helpers import fast_args, run_inprocess, write_tiny_config

    monkeypatch.delitem(sys.modules, "moai_llm.evaluation.plots", raising=False)
    matplotlib_before = "matplotlib" in sys.modules
    quiet = [] if logged else ["--logging_strategy", "no", "--save_strategy", "no"]
    run = tmp_path / "run"
    extra = ["--max_steps", "1", "--eval_fraction", "0", *quiet]
    run_inprocess(fast_args(run, write_tiny_config(tmp_path), *extra))
    assert (run / "training_report.md").is_file()
    assert (run / "plots" / "training.png").is_file() == logged
    assert ("moai_llm.evaluation.plots" in sys.modules) == logged
    if not matplotlib_before and not logged:
        assert "matplotlib" not in sys.modules
