"""README's Development block and .ci/run give the same commands in the same order, so the README line a developer
runs locally is what CI runs."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Development", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]
    return [command.strip() for line in lines for command in line.split("&&")]


def ci_commands() -> list[str]:
    lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    return [line.split("||", 1)[0].strip() for line in lines if re.match(r"(ruff|python -m pytest) ", line)]


def test_ci_runs_what_readme_gives():
    assert readme_commands() == ci_commands()
    assert any("not integration" in c for c in ci_commands()) and any(
        c.endswith("-m integration -q tests") for c in ci_commands()
    )
