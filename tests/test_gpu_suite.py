"""The GPU suite (benchmarks/gpu) rehearsed here: its runner (budgets, failing parts, the files it leaves), the wheel
closure check, the plan-estimate reader, and the whole suite in --cpu-smoke mode (integration)."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

GPU = REPO / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))

import check_wheels  # noqa: E402
import suite  # noqa: E402
from part_pretrain import plan_estimate  # noqa: E402

PART = """import argparse, json, pathlib, sys, time
p = argparse.ArgumentParser()
for flag in ("--json", "--md", "--workdir", "--budget_s"):
    p.add_argument(flag)
p.add_argument("--cpu-smoke", action="store_true")
a = p.parse_args()
pathlib.Path(a.json).write_text(json.dumps({{"rows": [{{"x": 1}}], "failures": {failures}}}))
pathlib.Path(a.md).write_text("| x |\\n| --- |\\n| 1 |\\n")
time.sleep({sleep})
sys.exit({code})
"""


def fake_part(tmp_path: Path, number: int, name: str, code=0, sleep=0.0, failures="[]") -> suite.Part:
    script = tmp_path / f"{name}.py"
    script.write_text(PART.format(code=code, sleep=sleep, failures=failures))
    return suite.Part(number, name, str(script), budget_s=3, smoke_budget_s=3)


@pytest.mark.integration  # the suite starts each part as a process
def test_suite_runs_past_failing_and_overrunning_parts_and_exits_non_zero(tmp_path, capsys):
    parts = [
        fake_part(tmp_path, 1, "fails", code=3),
        fake_part(tmp_path, 2, "hangs", sleep=60),
        fake_part(tmp_path, 3, "reports", failures='["a check"]'),
        fake_part(tmp_path, 4, "passes"),
    ]
    out = tmp_path / "out"
    assert suite.main(["--out", str(out), "--workdir", str(tmp_path / "work")], parts=parts) == 1
    results = json.loads((out / "results.json").read_text())
    status = {part["name"]: part["status"] for part in results["parts"]}
    assert status == {
        "fails": "failed (exit 3)",
        "hangs": "failed (over its 3 s budget)",
        "reports": "failed (checks)",
        "passes": "passed",
    }
    hung = next(part for part in results["parts"] if part["name"] == "hangs")
    assert hung["seconds"] < 10 and hung["report"]["rows"] == [{"x": 1}]  # killed, its rows kept
    assert results["failed"] == ["fails", "hangs", "reports"]
    assert sorted(path.name for path in out.iterdir()) == ["results.json", "results.md", "suite.log"]
    markdown = (out / "results.md").read_text()
    assert "1/4 parts passed" in markdown and markdown.count("| 1 |") == 4
    assert "suite: failed: fails, hangs, reports" in capsys.readouterr().err


@pytest.mark.integration  # the suite starts each part as a process
def test_suite_runs_only_the_parts_asked_for(tmp_path):
    parts = [fake_part(tmp_path, 1, "one"), fake_part(tmp_path, 2, "two", code=1)]
    out = tmp_path / "out"
    assert suite.main(["--out", str(out), "--parts", "one", "--workdir", str(tmp_path / "w")], parts=parts) == 0
    assert [part["name"] for part in json.loads((out / "results.json").read_text())["parts"]] == ["one"]
    with pytest.raises(SystemExit):
        suite.main(["--out", str(out), "--parts", "three"], parts=parts)


def test_suite_fits_eight_minutes_with_its_install():
    assert sum(part.budget_s for part in suite.PARTS) <= 450
    assert all((GPU / part.script).is_file() for part in suite.PARTS)


def make_wheel(folder: Path, name: str, version: str, *requires: str) -> None:
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        lines = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")


def test_check_wheels_finds_missing_wrong_and_duplicate_requirements(tmp_path):
    make_wheel(tmp_path, "alpha", "1.0", "beta>=2", "torch", "gamma; python_version < '3.10'", "delta; extra == 'x'")
    make_wheel(tmp_path, "beta", "2.1")
    assert check_wheels.problems(tmp_path) == []  # torch is on the image; the marker and extra do not apply
    make_wheel(tmp_path, "omega", "1.0", "beta>=3", "not-on-the-image", "torch>=2.12")  # the image has 2.11
    make_wheel(tmp_path, "omega", "1.1")
    found = check_wheels.problems(tmp_path)
    assert any("two versions" in line and "omega" in line for line in found)
    assert any("beta>=3, carried 2.1" in line for line in found)
    assert any("not-on-the-image" in line for line in found)
    assert any("torch>=2.12, the image has 2.11.0" in line for line in found)


def test_plan_estimate_reads_the_first_size_on_an_estimate_line():
    plan = "model: MODEL_SIZE=2b GPU_MEMORY=141\nmemory: estimated peak 61.5 GiB per GPU of 141 GB\n"
    assert plan_estimate(plan) == (61.5, "memory: estimated peak 61.5 GiB per GPU of 141 GB")
    assert plan_estimate("estimate: 80 GB")[0] == pytest.approx(80e9 / 2**30)
    assert plan_estimate("model: GPU_MEMORY=141 (GB)\nbatch: per-device 8") == (None, None)


def test_plan_estimate_reads_pretrain_sh_dry_run():
    """The plan pretrain.sh prints today: the memory model's total under its "estimate per GPU" heading."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUM_GPUS", "GPU_MEMORY", "MODEL_SIZE")}
    env.update(DRY_RUN="1", NUM_GPUS="1", GPU_MEMORY="141", MODEL_SIZE="2b")
    plan = subprocess.run(["bash", "pretrain.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    total = next(line for line in plan.stdout.splitlines() if line.strip().startswith("total:"))
    estimate, line = plan_estimate(plan.stdout)
    assert line == total.strip() and estimate == pytest.approx(float(total.split()[1]) * 1e9 / 2**30)


@pytest.mark.integration  # six processes: pytest, train.py runs, pretrain.sh (torchrun), serve.py
def test_run_sh_cpu_smoke_runs_every_part(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "SITE": str(tmp_path / "site")}
    done = subprocess.run(
        ["bash", str(GPU / "run.sh"), "--cpu-smoke", "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    results = json.loads((out / "results.json").read_text())
    assert [part["status"] for part in results["parts"]] == ["passed"] * len(suite.PARTS)
    assert len(list(out.iterdir())) <= 8  # what the device tool returns
    tests = results["parts"][0]["report"]["rows"]
    assert tests and all(row["outcome"] == "skipped" for row in tests)
    assert any(row["detail"] == "no CUDA" for row in tests)
    markdown = (out / "results.md").read_text()
    assert "skipped: no CUDA" in markdown and "6/6 parts passed" in markdown
    train = {
        (row["model"], row["trainer"], row["attention"], row["compile"]): row
        for row in results["parts"][2]["report"]["rows"]
    }
    assert train[("dense", "train.py", "sdpa", False)]["tokens_per_s"] > 0
    assert train[("moe", "stock Trainer + Qwen3", "sdpa", False)]["tokens_per_s"] > 0
    assert train[("dense", "train.py", "flex_attention", False)]["note"].startswith("skipped: no CUDA")
