"""Data at scale: preparation and training-rank memory, store size, throughput and start-up time.

The shared corpus holds ~1.7 M tokens of real prose, so larger corpora are synthesized from it: each document is
a run of randomly drawn real paragraphs (Shakespeare, Korean statutes and bills) averaging ~360 tokens, as in the
issue's measurement (25,000 documents = 9 M tokens), written as .jsonl to a temporary folder. Every measurement
runs `train.py` in a fresh process:

- prepare: `train.py --prepare_only` (tokenize + plan, rows of 2,048): peak RSS (wait4), seconds, tokens/s;
- throughput: the preparation code (`build_store`) against the tokenizer's own `encode_batch_fast` on the same
  25,000 documents held in memory, alternated in one process (medians; per wall- and per CPU-second);
- rank: `train.py` on the prepared store (tiny model, batch 1 x 2,048, a few steps), launched several times:
  seconds from launch to the first optimizer step's log line (mostly imports, so it moves with the machine's
  load, printed beside it), the data set-up alone, peak RSS, and USS (private memory: what is not shared);
- scaling (data_scaling.py): parallel preparation (`prepare_stores`, the source cut in byte ranges) by 1 and 2
  processes, each limited to one thread (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false, torch threads 1), and
  by 1 process with all its tokenizer threads (the ceiling of one process), and the two parts built one after the
  other by one process (what cutting and joining cost alone): tokens per wall-second (from the start signal to the
  last process's end, joining the parts included) and per CPU-second (summed over the processes), and the CPU
  seconds of the longest process (the wall time where each process has a free core); variants alternated in each
  repeat so other jobs' load hits them alike;
- 8 ranks: torchrun, 8 CPU processes over gloo, on the largest store: summed RSS, PSS and USS of the workers.
  RSS counts every resident page of the memory-mapped store in every process that touched it, so summed RSS
  double-counts shared pages; PSS divides shared pages among their users and USS counts private pages only.

    python benchmarks/bench_data.py [--sizes 9,36,108] [--ranks 8] [--launches 3] [--repeats 3] [--keep]
    python benchmarks/bench_data.py --scaling_only [--scaling_tokens 6] [--repeats 3]
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from data_scaling import report_scaling, scaling

REPO = Path(__file__).resolve().parents[1]
TOKENS_PER_DOCUMENT = 360
SEQ = 2048
MB = 1e6


def paragraphs() -> list[str]:
    roots = [REPO.parent / "shared" / "corpora", Path("/work/shared/corpora")]
    root = next((r for r in roots if r.is_dir()), None)
    if root is None:
        sys.exit("bench_data.py needs the shared corpora (../shared/corpora)")
    out = []
    for path in sorted(root.rglob("*.txt")):
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        out += [p.strip() for p in text.split("\n\n") if p.strip()]
    return out


def synthesize(path: Path, documents: int, seed: int = 0) -> None:
    """`documents` documents of random real paragraphs, ~TOKENS_PER_DOCUMENT tokens each on average."""
    from moai_llm.loading import load_tokenizer

    pool = paragraphs()
    lengths = np.array([len(x) for x in load_tokenizer()(pool, add_special_tokens=False)["input_ids"]])
    rng = np.random.default_rng(seed)
    per_doc = TOKENS_PER_DOCUMENT / lengths.mean()
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(documents):
            picks = rng.integers(0, len(pool), 1 + rng.poisson(per_doc - 1))
            out.write(json.dumps({"text": "\n\n".join(pool[i] for i in picks)}, ensure_ascii=False) + "\n")


class Sampler(threading.Thread):
    """Peak summed RSS / PSS / USS of a process's train.py descendants (or itself), sampled every 0.5 s."""

    def __init__(self, pid: int, workers_only: bool):
        super().__init__(daemon=True)
        self.root, self.workers_only, self.stop = psutil.Process(pid), workers_only, threading.Event()
        self.peak = {"rss": 0, "pss": 0, "uss": 0, "processes": 0}

    def run(self):
        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                if self.workers_only:
                    procs = [p for p in procs if p.pid != self.root.pid]
                infos = [p.memory_full_info() for p in procs]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                infos = []
            if infos:
                for key in ("rss", "pss", "uss"):
                    self.peak[key] = max(self.peak[key], sum(getattr(i, key) for i in infos))
                self.peak["processes"] = max(self.peak["processes"], len(infos))
            self.stop.wait(0.5)


def run(command: list[str], env: dict, workers_only: bool = False, marker: str | None = None) -> dict:
    """Run `command`; wall seconds, peak RSS (wait4) and sampled RSS/PSS/USS, seconds until a `marker` line."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(process.pid, workers_only)
    sampler.start()
    lines, first = [], None
    for line in process.stdout:
        lines.append(line)
        if marker and first is None and re.search(marker, line):
            first = time.perf_counter() - start
    _, status, usage = os.wait4(process.pid, 0)
    sampler.stop.set()
    sampler.join()
    output = "".join(lines)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(command)}\n{output[-4000:]}")
    return {
        "seconds": time.perf_counter() - start,
        "max_rss": usage.ru_maxrss * 1024,
        "first": first,
        "output": output,
        **sampler.peak,
    }


def throughput(corpus: Path, documents: int, repeats: int) -> dict:
    """Preparation (`build_store`: read .jsonl, encode, append to disk) against the fast tokenizer's own batched
    encode of the same documents already in memory, alternated `repeats` times in one fresh process: tokens per
    wall-second and per CPU-second (the latter is less sensitive to other jobs on the machine)."""
    code = f"""
import json, shutil, tempfile, time
from pathlib import Path
from moai_llm.data import MixtureSource, TextEncoder
from moai_llm.data.encode import BATCH_DOCUMENTS, build_store
from moai_llm.loading import load_tokenizer
tokenizer = load_tokenizer()
lines = [line for _, line in zip(range({documents}), open({str(corpus)!r}, encoding="utf-8"))]
sample = Path(tempfile.mkdtemp()) / "sample.jsonl"
sample.write_text("".join(lines), encoding="utf-8")
texts = [json.loads(line)["text"] for line in lines]

def alone():
    backend = tokenizer.backend_tokenizer
    start, cpu, tokens = time.perf_counter(), time.process_time(), 0
    for i in range(0, len(texts), BATCH_DOCUMENTS):
        tokens += sum(len(e.ids) for e in backend.encode_batch_fast(texts[i : i + BATCH_DOCUMENTS],
                                                                    add_special_tokens=False))
    return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)

def prepared():
    store = sample.parent / "store"
    start, cpu = time.perf_counter(), time.process_time()
    build_store(store, MixtureSource(str(sample)), TextEncoder(tokenizer), False, False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = json.loads((store / "meta.json").read_text())["tokens"] - len(texts)  # EOS tokens are not encoded
    shutil.rmtree(store)
    return tokens / wall, tokens / cpu

runs = {{"alone": [], "prepare": []}}
for _ in range({repeats}):
    runs["alone"].append(alone())
    runs["prepare"].append(prepared())
shutil.rmtree(sample.parent)
print(json.dumps(runs))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environment(), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def data_flags(corpus: Path, cache: Path) -> list[str]:
    return [
        "--train_file",
        str(corpus),
        "--data_cache_dir",
        str(cache),
        "--max_seq_length",
        str(SEQ),
        "--eval_fraction",
        "0",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
    ]


def train_flags(out: Path, steps: int) -> list[str]:
    return [
        "--model_config",
        str(REPO / "configs" / "model_config_tiny.json"),
        "--output_dir",
        str(out),
        "--batch_size",
        "1",
        "--max_steps",
        str(steps),
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
    ]


def measure_size(size_m: int, work: Path, steps: int, launches: int) -> dict:
    corpus, cache = work / f"corpus-{size_m}M.jsonl", work / f"cache-{size_m}M"
    documents = round(size_m * 1e6 / TOKENS_PER_DOCUMENT)
    synthesize(corpus, documents)
    prep = run(
        [sys.executable, "train.py", "--prepare_only", *data_flags(corpus, cache), "--output_dir", str(work / "prep")],
        environment(),
    )
    tokens = int(re.search(r"prepared \S+: \d+ documents, (\d+) tokens", prep["output"]).group(1))
    rates = re.search(r"\(([\d.]+) tokens/s, ([\d.]+) per CPU-second\)", prep["output"])
    store = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    ranks = []
    for _ in range(launches):  # start-up time is mostly imports: the machine's load moves it, so several launches
        rank = run(
            [sys.executable, "train.py", *data_flags(corpus, cache), *train_flags(work / "run", steps)],
            environment(),
            marker=r"'loss'",
        )
        rank["ready"] = float(re.search(r"data ready in ([\d.]+) s", rank["output"]).group(1))
        rank["load"] = os.getloadavg()[0]
        ranks.append(rank)
    return {
        "size": size_m,
        "documents": documents,
        "tokens": tokens,
        "prep": prep,
        "prep_rate": (float(rates.group(1)), float(rates.group(2))),
        "store": store,
        "ranks": ranks,
        "corpus": corpus,
        "cache": cache,
    }


def measure_ranks(result: dict, work: Path, processes: int, steps: int) -> dict:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(port),
        "train.py",
        *data_flags(result["corpus"], result["cache"]),
        *train_flags(work / "ranks", steps),
        "--ddp_backend",
        "gloo",
    ]
    return run(command, environment(), workers_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="9,36,108", help="corpus sizes in millions of tokens")
    parser.add_argument("--ranks", type=int, default=8, help="processes of the shared-store run (0: skip)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--launches", type=int, default=3, help="training launches per size (start-up time)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated throughput measurements")
    parser.add_argument("--workdir", default="/tmp/moai_bench_data")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and stores")
    parser.add_argument("--scaling_tokens", type=float, default=6, help="millions of tokens of the scaling corpus")
    parser.add_argument("--scaling_only", action="store_true", help="measure parallel preparation alone")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "scaling.jsonl"
    try:
        synthesize(corpus, round(args.scaling_tokens * 1e6 / TOKENS_PER_DOCUMENT))
        runs = scaling(corpus, work, args.repeats, environment())
        if args.scaling_only:
            report_scaling(runs, runs["1 process, 1 thread"][0]["tokens"])
            return
        results = []
        for size in (int(s) for s in args.sizes.split(",")):
            results.append(measure_size(size, work, args.steps, args.launches))
            print(f"measured {size}M", file=sys.stderr, flush=True)
        speed = throughput(results[0]["corpus"], 25_000, args.repeats)
        ranks = measure_ranks(results[-1], work, args.ranks, args.steps) if args.ranks else None
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results, speed, ranks, args.ranks)
    report_scaling(runs, runs["1 process, 1 thread"][0]["tokens"])


def report(results: list[dict], speed: dict, ranks: dict | None, processes: int) -> None:
    print(
        f"synthesized corpora (random runs of real paragraphs, ~{TOKENS_PER_DOCUMENT} tokens per document), rows "
        f"of {SEQ}, bundled tokenizer; MB = 10^6 bytes; machine shared with other jobs (2 cores)"
    )
    print(
        "| tokens | documents | prepare s | prepare tokens/s (per CPU-s) | prepare peak RSS MB | store MB | "
        "bytes/token | launch to first step s, min / median (load) | data ready s | rank peak RSS MB | rank USS MB |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        wall, cpu = r["prep_rate"]
        firsts = sorted(x["first"] for x in r["ranks"])
        loads = " ".join(f"{x['load']:.1f}" for x in r["ranks"])
        print(
            f"| {r['tokens'] / 1e6:.1f} M | {r['documents']:,} | {r['prep']['seconds']:.0f} | {wall:,.0f} "
            f"({cpu:,.0f}) | {r['prep']['max_rss'] / MB:,.0f} | {r['store'] / MB:,.1f} | "
            f"{r['store'] / r['tokens']:.2f} | {firsts[0]:.1f} / {firsts[len(firsts) // 2]:.1f} ({loads}) | "
            f"{max(x['ready'] for x in r['ranks']):.1f} | {max(x['max_rss'] for x in r['ranks']) / MB:,.0f} | "
            f"{max(x['uss'] for x in r['ranks']) / MB:,.0f} |"
        )

    print("\npreparation vs the tokenizer alone on the same 25,000 documents, alternated in one process (tokens/s):")
    print("| run | tokenizer alone | preparation | ratio | tokenizer alone per CPU-s | preparation per CPU-s | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = list(zip(speed["alone"], speed["prepare"]))
    for i, ((aw, ac), (pw, pc)) in enumerate(rows, 1):
        print(f"| {i} | {aw:,.0f} | {pw:,.0f} | {pw / aw:.2f} | {ac:,.0f} | {pc:,.0f} | {pc / ac:.2f} |")
    med = [float(np.median([r[k][j] for r in rows])) for k in (0, 1) for j in (0, 1)]
    print(
        f"| median | {med[0]:,.0f} | {med[2]:,.0f} | {med[2] / med[0]:.2f} | {med[1]:,.0f} | {med[3]:,.0f} | "
        f"{med[3] / med[1]:.2f} |"
    )
    if ranks is None:
        return
    last = results[-1]
    one = max(x["max_rss"] for x in last["ranks"])
    bound = one * processes + last["store"]
    print(
        f"\n{processes} CPU processes (gloo) training from the {last['tokens'] / 1e6:.0f} M-token store "
        f"({last['store'] / MB:,.0f} MB), peaks of the sums over the workers, MB:"
    )
    print(
        f"| workers | sum RSS | sum PSS | sum USS | USS per worker | one process: RSS / USS | one process RSS x "
        f"{processes} + store | sum RSS <= that |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print(
        f"| {ranks['processes']} | {ranks['rss'] / MB:,.0f} | {ranks['pss'] / MB:,.0f} | {ranks['uss'] / MB:,.0f} | "
        f"{ranks['uss'] / max(ranks['processes'], 1) / MB:,.0f} | {one / MB:,.0f} / "
        f"{max(x['uss'] for x in last['ranks']) / MB:,.0f} | {bound / MB:,.0f} | "
        f"{'yes' if ranks['rss'] <= bound else 'no'} |"
    )


if __name__ == "__main__":
    main()
