"""Part 1: the test suite's CUDA-marked tests (`pytest -m cuda`), one row per test with its outcome and seconds.

Only the files that hold cuda-marked tests are collected: the others import packages the GPU image may lack
(lm_eval, pexpect, a browser driver), and a collection error there is not a CUDA finding."""

import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from common import REPO, Report, part_arguments


def cuda_test_files() -> list[str]:
    return sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "tests").glob("test_*.py")
        if "pytest.mark.cuda" in path.read_text(encoding="utf-8")
    )


def outcomes(junit: Path) -> list[dict]:
    rows = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[child.tag]
                detail = (child.get("message") or "").splitlines()[0][:200] if child.get("message") else ""
        module = case.get("classname", "").rsplit(".", 1)[-1]
        rows.append(
            {"test": f"{module}::{case.get('name')}", "outcome": outcome, "seconds": float(case.get("time", 0))}
            | {"detail": detail}
        )
    return rows


def main() -> int:
    args = part_arguments(__doc__)
    report = Report(args, "CUDA-marked tests", {"test": "test", "outcome": "outcome", "seconds": "s", "detail": "why"})
    files = cuda_test_files()
    junit = Path(args.workdir) / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", f"--junitxml={junit}", *files]
    done = subprocess.run(command, cwd=REPO)
    if not junit.exists():
        report.fail(f"pytest wrote no report (exit {done.returncode})")
        return report.finish()
    for row in outcomes(junit):
        report.add(**row)
    counts = {o: sum(r["outcome"] == o for r in report.rows) for o in ("passed", "FAILED", "ERROR", "skipped")}
    report.note(", ".join(f"{n} {o}" for o, n in counts.items()) + f" in {', '.join(files)}")
    if done.returncode != 0 or counts["FAILED"] or counts["ERROR"]:
        report.fail(f"pytest exited {done.returncode}")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
