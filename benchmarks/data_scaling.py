"""benchmarks/bench_data.py's parallel-preparation measurement (--scaling_only, and the last table of a full run):
`prepare_stores` by 1 and 2 single-threaded processes, by 1 process cutting the source in 2 parts, and by 1 process
with all its tokenizer threads, variants alternated in each repeat."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

BUILDER = """
import json, os, sys, time
from pathlib import Path
import torch
from moai_llm.data import MixtureSource, TextEncoder
from moai_llm.data.parts import Builders, prepare_stores, share
from moai_llm.loading import load_tokenizer
corpus, cache, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
index, count, parts = (int(x) for x in sys.argv[4:7])
if os.environ.get("RAYON_NUM_THREADS") == "1":
    torch.set_num_threads(1)
encoder, sources = TextEncoder(load_tokenizer()), [MixtureSource(corpus)]
work = share(sources, encoder, cache, False, parts)
(go.parent / f"ready{index}").touch()
while not go.exists():
    time.sleep(0.01)
start, cpu = time.time(), time.process_time()
store = prepare_stores(sources, encoder, work, Builders(index, count, index == 0))[0]
print(json.dumps({"start": start, "end": time.time(), "cpu": time.process_time() - cpu, "tokens": store.num_tokens,
                  "parts": len(work[0]["parts"] or [None])}))
"""
SCALING = {  # variant: (processes, parts, tokenizer threads limited to one)
    "1 process, 1 thread": (1, 1, True),
    "2 processes, 1 thread each": (2, 2, True),
    "1 process, 2 parts one after the other, 1 thread": (1, 2, True),
    "1 process, all threads": (1, 1, False),
}


def prepare_in_processes(corpus: Path, work: Path, processes: int, parts: int, one_thread: bool, env: dict) -> dict:
    """`processes` builders started together (after their imports) on one corpus cut in up to `parts` parts: wall,
    CPU (summed, and of the longest process), tokens, parts."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(env)
    if one_thread:
        env.update(RAYON_NUM_THREADS="1", RAYON_RS_NUM_CPUS="1", TOKENIZERS_PARALLELISM="false")
    else:
        env.update(TOKENIZERS_PARALLELISM="true")
    go = work / "go"
    command = [sys.executable, "-c", BUILDER, str(corpus), str(work / "cache"), str(go)]
    launched = []
    for index in range(processes):
        arguments = [*command, str(index), str(processes), str(parts)]
        launched.append(subprocess.Popen(arguments, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True))
    while not all((work / f"ready{i}").exists() for i in range(processes)):
        if any(p.poll() is not None for p in launched):
            sys.exit("a preparing process failed before it started")
        time.sleep(0.01)
    go.touch()
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in launched]
    if any(p.returncode for p in launched):
        sys.exit("a preparing process failed")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    cpu, longest = sum(r["cpu"] for r in results), max(r["cpu"] for r in results)
    return {"wall": wall, "cpu": cpu, "longest": longest, "tokens": results[0]["tokens"], "parts": results[0]["parts"]}


def scaling(corpus: Path, work: Path, repeats: int, env: dict) -> dict:
    runs = {name: [] for name in SCALING}
    for _ in range(repeats):
        for name, (processes, parts, one_thread) in SCALING.items():
            runs[name].append(prepare_in_processes(corpus, work / "scaling", processes, parts, one_thread, env))
            runs[name][-1]["load"] = os.getloadavg()[0]
            print(f"scaling: {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    return runs


def report_scaling(runs: dict, tokens_of_corpus: int) -> None:
    print(
        f"\nparallel preparation of one {tokens_of_corpus / 1e6:.1f} M-token .jsonl file (cut in byte ranges), "
        "variants alternated; machine shared with other jobs (2 cores); median of the repeats:"
    )
    print(
        "| variant | parts | wall s | tokens / wall-s | vs 1 process, 1 thread | CPU s (all processes) | tokens / CPU-s"
        " | longest process CPU s | 1 thread's CPU s / longest | load avg |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = {k: float(np.median([r[k] for r in runs["1 process, 1 thread"]])) for k in ("wall", "cpu")}
    for name, rs in runs.items():
        wall, cpu, longest = (float(np.median([r[k] for r in rs])) for k in ("wall", "cpu", "longest"))
        loads = " ".join(f"{r['load']:.1f}" for r in rs)
        print(
            f"| {name} | {rs[0]['parts']} | {wall:.1f} | {rs[0]['tokens'] / wall:,.0f} | {base['wall'] / wall:.2f}x | "
            f"{cpu:.1f} | {rs[0]['tokens'] / cpu:,.0f} | {longest:.1f} | {base['cpu'] / longest:.2f}x | {loads} |"
        )
    print(
        "(the longest process's CPU seconds: the wall time a variant needs where each of its processes has a free "
        "core, an estimate; the wall times here are those of a machine running other jobs)"
    )
