"""The GPU suite: each part in its own process with its own time budget, one after the other; a part that fails or
runs out of time is recorded and the next one runs. The suite exits non-zero if any part failed.

The output folder gets three files, rewritten after every part (the device tool returns at most 8 files):
results.json (every part's rows, status and seconds), results.md (every part's markdown table) and suite.log (each
part's output, the last 400 lines of it). The parts' own JSON and markdown files stay in the work folder.

    python benchmarks/gpu/suite.py --out DIR [--cpu-smoke] [--parts 2,3] [--budget_scale 1.0]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LOG_LINES = 400


@dataclass(frozen=True)
class Part:
    number: int
    name: str
    script: str
    budget_s: float  # on the H200; the sum stays under 8 minutes with the install step
    smoke_budget_s: float  # --cpu-smoke, on a shared 2-core CPU machine


PARTS = [
    Part(1, "tests", "part_tests.py", 70, 120),
    Part(2, "loss", "part_loss.py", 40, 60),
    Part(3, "train", "part_train.py", 155, 120),
    Part(4, "finetune", "part_finetune.py", 50, 90),
    Part(5, "pretrain", "part_pretrain.py", 90, 90),
    Part(6, "serve", "part_serve.py", 40, 60),
]


def run_part(part: Part, budget: float, workdir: Path, smoke: bool, log) -> dict:
    """Run one part's script in a new process group; kill the group when the budget is spent."""
    json_path, md_path = workdir / f"{part.number}_{part.name}.json", workdir / f"{part.number}_{part.name}.md"
    command = [sys.executable, str(HERE / part.script), "--json", str(json_path), "--md", str(md_path)]
    command += ["--workdir", str(workdir / part.name), "--budget_s", str(budget)] + (["--cpu-smoke"] if smoke else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    env["PYTHONUNBUFFERED"] = "1"
    output_path = workdir / f"{part.number}_{part.name}.log"
    start = time.perf_counter()
    with open(output_path, "w") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=budget)
            status = "passed" if returncode == 0 else f"failed (exit {returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = f"failed (over its {budget:.0f} s budget)"
    seconds = time.perf_counter() - start
    lines = output_path.read_text(errors="replace").splitlines()
    log.write(f"===== part {part.number} {part.name}: {status}, {seconds:.1f} s, last {LOG_LINES} lines =====\n")
    log.write("\n".join(lines[-LOG_LINES:]) + "\n")
    log.flush()
    result = {"part": part.number, "name": part.name, "status": status, "seconds": round(seconds, 1)}
    result["budget_s"] = budget
    try:
        result.update(report=json.loads(json_path.read_text()))
        result["markdown"] = md_path.read_text()
    except (OSError, ValueError):
        result["markdown"] = "(the part wrote no table)\n"
    if status == "passed" and result.get("report", {}).get("failures"):
        result["status"] = "failed (checks)"  # a part that reported failures but exited 0
    return result


def write_results(out: Path, results: list[dict], smoke: bool, total_s: float) -> None:
    failed = [r for r in results if r["status"] != "passed"]
    summary = {"cpu_smoke": smoke, "seconds": round(total_s, 1), "failed": [r["name"] for r in failed]}
    (out / "results.json").write_text(json.dumps({**summary, "parts": results}, indent=1, default=str))
    lines = [
        f"# GPU suite{' (CPU smoke)' if smoke else ''}: {len(results) - len(failed)}/{len(results)} parts passed, "
    ]
    lines[0] += f"{total_s:.0f} s"
    lines += ["", "| part | status | seconds | budget s |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['part']} {r['name']} | {r['status']} | {r['seconds']} | {r['budget_s']:.0f} |" for r in results]
    for result in results:
        lines += ["", f"## {result['part']}. {result['name']}: {result['status']}", "", result["markdown"]]
    (out / "results.md").write_text("\n".join(lines))


def main(argv=None, parts=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for results.json, results.md, suite.log")
    parser.add_argument("--cpu-smoke", action="store_true", help="every part at tiny sizes on the CPU")
    parser.add_argument("--parts", help="comma-separated part numbers or names (default: all)")
    parser.add_argument("--workdir", help="scratch folder for the parts (default: a temporary one)")
    parser.add_argument("--budget_scale", type=float, default=1.0, help="multiply every part's time budget")
    args = parser.parse_args(argv)
    parts = PARTS if parts is None else parts
    if args.parts:
        wanted = set(args.parts.split(","))
        unknown = wanted - {str(p.number) for p in parts} - {p.name for p in parts}
        if unknown:
            parser.error(f"--parts: unknown part(s) {', '.join(sorted(unknown))}")
        parts = [p for p in parts if str(p.number) in wanted or p.name in wanted]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="moai-gpu-suite-"))
    workdir.mkdir(parents=True, exist_ok=True)
    start, results = time.perf_counter(), []
    with open(out / "suite.log", "w") as log:
        for part in parts:
            budget = (part.smoke_budget_s if args.cpu_smoke else part.budget_s) * args.budget_scale
            print(f"suite: part {part.number} {part.name} (budget {budget:.0f} s)", flush=True)
            result = run_part(part, budget, workdir, args.cpu_smoke, log)
            print(f"suite: part {part.number} {part.name}: {result['status']} in {result['seconds']} s", flush=True)
            results.append(result)
            write_results(out, results, args.cpu_smoke, time.perf_counter() - start)
    failed = [r["name"] for r in results if r["status"] != "passed"]
    total = time.perf_counter() - start
    print(f"suite: {len(results) - len(failed)}/{len(results)} parts passed in {total:.0f} s; results in {out}")
    if failed:
        print(f"suite: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
