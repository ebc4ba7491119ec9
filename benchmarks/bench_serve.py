"""serve.py under load: aggregate generated tokens/s and time to first token with 1, 4, 8 and 16 concurrent
streaming clients, batched (serve.py's default --max_batch_size) against the same server queueing requests
(--max_batch_size 1).
With --transformers_serve, `transformers serve --continuous-batching` on the Qwen3 export of the same weights
takes the same load. A second table times the decode engines alone (no HTTP) on 8 sequences: our BatchEngine,
transformers' continuous batching (`generate_batch`, on the Qwen3 export of the same weights: it does not run
MoaiForCausalLM) with its default and a CPU-sized paged cache, and `generate` one sequence at a time.

Random weights (speed does not depend on them), saved with the bundled tokenizer; the server is `serve.py` in its
own process, the clients are asyncio streams in this one. Every answer is 64 tokens (`ignore_eos`), sampled with
the chat page's defaults (temperature 0.7, top_p 0.9, top_k 50); each client sends its requests back to back.
Both servers run at once and the levels alternate between them, repeated: the median repetition is shown, so a
burst of load on a shared machine hits both alike.

    python benchmarks/bench_serve.py [--configs tiny 50m] [--clients 1 4 8 16] [--threads 1]
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from transformers import ContinuousBatchingConfig, GenerationConfig, Qwen3ForCausalLM

from moai_llm import MoaiConfig, MoaiForCausalLM
from moai_llm.chat import SamplingParams
from moai_llm.export import export_qwen3, qwen3_config_from
from moai_llm.loading import load_tokenizer
from moai_llm.serving import MAX_BATCH_SIZE, BatchEngine, Finished, GenerationRequest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tiny": json.loads((REPO / "configs" / "model_config_tiny.json").read_text()),
    "50m": {
        **json.loads((REPO / "configs" / "model_config_tiny.json").read_text()),
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
    },
}


def save_model(name: str, root: Path) -> tuple[Path, int]:
    torch.manual_seed(0)
    model = MoaiForCausalLM(MoaiConfig(**CONFIGS[name]))
    path = root / name
    model.save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(path: Path, max_batch_size: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    pythonpath = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])  # keeps carried packages
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "serve.py"),
            "--model_path",
            f"m={path}",
            "--port",
            str(port),
            "--max_batch_size",
            str(max_batch_size),
            "--log_level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, wait_until_healthy(process, f"http://127.0.0.1:{port}", 600, "server")


def wait_until_healthy(process: subprocess.Popen, url: str, attempts: int, name: str) -> str:
    """`url` once its /health answers 200, polled every 0.1 s; the process is killed if it never does."""
    for _ in range(attempts):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{name} did not start")


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, tokens: int, model: str = "m"):
    """(seconds to the first generated text, completion tokens) of one streamed chat completion. `transformers
    serve` refuses vLLM's extensions (ignore_eos, top_k): it gets temperature and top_p only (random weights
    rarely sample EOS; tokens are counted from the usage chunk either way)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.7,
        "top_p": 0.9,
    }
    if model == "m":
        body.update(ignore_eos=True, top_k=50)
    start, first, generated = time.perf_counter(), None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
    return first, generated


async def engine_counters(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """Tokens generated and decode steps of model "m", from /metrics (None for a server without them)."""
    response = await client.get(f"{url}/metrics")
    if response.status_code != 200 or "moai_decode_steps_total" not in response.text:
        return {}
    counters = {}
    for line in response.text.splitlines():
        for name in ("moai_generation_tokens_total", "moai_decode_steps_total"):
            if line.startswith(name + '{model="m"}'):
                counters[name] = float(line.split()[-1])
    return counters


async def load_level(url: str, clients: int, per_client: int, tokens: int, model: str = "m") -> dict:
    async def client_loop(client, index):
        return [
            await one_request(client, url, f"Client {index}, question {j}: tell me about Seoul.", tokens, model)
            for j in range(per_client)
        ]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        await one_request(client, url, "warm up", 4, model)
        before = await engine_counters(client, url)
        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client_loop(client, i) for i in range(clients))) for r in rs]
        seconds = time.perf_counter() - start
        after = await engine_counters(client, url)
    ttft = sorted(r[0] for r in results if r[0] is not None)
    generated = sum(r[1] for r in results)
    steps = after.get("moai_decode_steps_total", 0) - before.get("moai_decode_steps_total", 0)
    made = after.get("moai_generation_tokens_total", 0) - before.get("moai_generation_tokens_total", 0)
    return {
        "requests": len(results),
        "tokens": generated,
        "seconds": seconds,
        "tps": generated / seconds,
        "p50": statistics.median(ttft),
        "p95": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
        "mean_batch": made / steps if steps else float("nan"),  # unknown for transformers serve
    }


def engine_rates(name: str, sequences: int, tokens: int) -> dict[str, float]:
    """Greedy tokens/s of each decode engine on the same weights and prompts, in this process."""
    torch.manual_seed(0)
    moai = MoaiForCausalLM(MoaiConfig(**CONFIGS[name])).eval()
    qwen3 = Qwen3ForCausalLM(qwen3_config_from(moai.config)).eval()
    qwen3.load_state_dict(moai.state_dict(), strict=True)
    tokenizer = load_tokenizer()
    prompts = [
        tokenizer(f"Client {i}: tell me about Seoul.", add_special_tokens=False)["input_ids"] for i in range(sequences)
    ]
    rates = {}

    engine = BatchEngine(moai, tokenizer, max_batch_size=sequences)
    params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens)
    finished = []

    def deliver(event):
        if isinstance(event, Finished):
            finished.append(event)

    for _ in range(2):  # the first round warms up
        finished.clear()
        start = time.perf_counter()
        for prompt in prompts:
            engine.submit_all([GenerationRequest(prompt, params, deliver, ignore_eos=True)])
        while len(finished) < sequences:
            time.sleep(0.001)
        rates["BatchEngine (serve.py)"] = sequences * tokens / (time.perf_counter() - start)
    engine.close()

    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    for label, cb in [
        ("transformers generate_batch, default paged cache", None),
        (
            "transformers generate_batch, 64 blocks x 64 tokens",
            ContinuousBatchingConfig(num_blocks=64, page_size=64, max_batch_tokens=256),
        ),
    ]:
        for _ in range(2):
            start = time.perf_counter()
            qwen3.generate_batch(prompts, generation_config=config, continuous_batching_config=cb)
            rates[label] = sequences * tokens / (time.perf_counter() - start)

    start = time.perf_counter()
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            moai.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=0,
            )
    rates["generate, one sequence at a time"] = sequences * tokens / (time.perf_counter() - start)
    return rates


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_transformers_serve(path: Path, threads: int) -> tuple[subprocess.Popen, str]:
    """`transformers serve --continuous-batching` on the Qwen3 export of the same weights (it cannot load MOAI's
    directory), with a paged cache sized for CPU (64 blocks of 64 tokens)."""
    export = path.parent / f"{path.name}-qwen3"
    if not export.exists():
        export_qwen3(str(path), str(export))
    port = free_port()
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(export), "--continuous-batching"]
    command += ["--device", "cpu", "--port", str(port), "--cb-num-blocks", "64", "--cb-block-size", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, wait_until_healthy(process, f"http://127.0.0.1:{port}", 1200, "transformers serve")


def measure_config(name: str, path: Path, args) -> list[dict]:
    """All servers up at once; levels interleaved between them, repeated; the median repetition per level."""
    servers, models = {}, {MAX_BATCH_SIZE: "m", 1: "m"}
    try:
        for batch in (MAX_BATCH_SIZE,) if args.skip_queued else (MAX_BATCH_SIZE, 1):
            servers[batch] = start_server(path, batch, args.threads)
        if args.transformers_serve:
            servers[0] = start_transformers_serve(path, args.threads)
            models[0] = str(path.parent / f"{path.name}-qwen3")
        runs = {}
        for rep in range(args.reps):
            for clients in args.clients:
                for batch, (_, url) in servers.items():
                    per_client = max(args.requests_per_client, 8 // clients)
                    result = asyncio.run(load_level(url, clients, per_client, args.tokens, models[batch]))
                    runs.setdefault((batch, clients), []).append(result)
                    print(
                        f"{name} rep {rep} batch<={batch} clients={clients}: {result['tps']:.1f} tokens/s",
                        flush=True,
                        file=sys.stderr,
                    )
    finally:
        for process, _ in servers.values():
            stop(process)
    rows = []
    for (batch, clients), results in runs.items():
        middle = sorted(results, key=lambda r: r["tps"])[len(results) // 2]
        rows.append({"batch": batch, "clients": clients, **middle})
    return sorted(rows, key=lambda r: (-r["batch"] if r["batch"] else -0.5, r["clients"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "50m"], choices=list(CONFIGS))
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--requests_per_client", type=int, default=2, help="at least 8 requests per level")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per level; the median one is shown")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server process")
    parser.add_argument("--skip_engines", action="store_true", help="leave out the engines-alone table")
    parser.add_argument("--skip_queued", action="store_true", help="leave out the --max_batch_size 1 server")
    parser.add_argument(
        "--transformers_serve",
        action="store_true",
        help="also load `transformers serve --continuous-batching` on the Qwen3 export of the same weights",
    )
    args = parser.parse_args()
    print(
        f"\n{args.tokens}-token streamed answers, servers on {args.threads} CPU thread(s), median of {args.reps} "
        "interleaved repetitions\n"
    )
    print(
        "| model | server | clients | requests | aggregate tokens/s | x one client | p50 TTFT ms | p95 TTFT ms "
        "| mean batch |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            path, parameters = save_model(name, Path(tmp))
            rows = measure_config(name, path, args)
            for r in rows:
                single = next(x for x in rows if x["batch"] == r["batch"] and x["clients"] == min(args.clients))
                server = {
                    MAX_BATCH_SIZE: f"batched ({MAX_BATCH_SIZE})",
                    1: "queued (1)",
                    0: "transformers serve, continuous batching",
                }[r["batch"]]
                print(
                    f"| {name} ({parameters / 1e6:.1f}M) | {server} | {r['clients']} | {r['requests']} | "
                    f"{r['tps']:,.1f} | {r['tps'] / single['tps']:.2f}x | {r['p50'] * 1000:,.0f} | "
                    f"{r['p95'] * 1000:,.0f} | {r['mean_batch']:.1f} |".replace("| nan |", "| n/a |"),
                    flush=True,
                )
    if args.skip_engines:
        return
    torch.set_num_threads(args.threads)
    print(
        f"\nDecode engines alone, 8 sequences x {args.tokens} greedy tokens, {args.threads} CPU thread(s), tokens/s\n"
    )
    print("| engine | " + " | ".join(args.configs) + " |")
    print("| --- |" + " ---: |" * len(args.configs))
    table = {name: engine_rates(name, 8, args.tokens) for name in args.configs}
    for label in table[args.configs[0]]:
        print(f"| {label} | " + " | ".join(f"{table[name][label]:,.1f}" for name in args.configs) + " |")


if __name__ == "__main__":
    main()
