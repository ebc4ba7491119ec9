"""Part 6: serve.py on the GPU: 1 and 16 concurrent streaming clients, aggregate generated tokens/s and time to
first token. The server, the clients and the load levels are bench_serve.py's (random weights, 64-token answers,
ignore_eos, the chat page's sampling defaults); the model is a ~0.5B dense MOAI model (tiny in the CPU smoke)."""

import asyncio
import sys
from pathlib import Path

import torch
from common import REPO, Report, error_line, part_arguments

sys.path.insert(0, str(REPO / "benchmarks"))
MODEL_05B = dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=24, num_attention_heads=16)
MODEL_05B |= dict(num_key_value_heads=8, head_dim=64, vocab_size=122_880, max_position_embeddings=4096)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
TINY |= dict(head_dim=16, vocab_size=8192, max_position_embeddings=512)


def save_model(path: Path, cuda: bool) -> None:
    from moai_llm import MoaiConfig, MoaiForCausalLM
    from moai_llm.loading import load_tokenizer

    torch.manual_seed(0)
    config = MoaiConfig(**(MODEL_05B if cuda else TINY), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    MoaiForCausalLM(config).to(torch.bfloat16 if cuda else torch.float32).save_pretrained(path)
    load_tokenizer().save_pretrained(path)


def main() -> int:
    args = part_arguments(__doc__)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    import bench_serve

    levels, tokens, requests = ([1, 16], 64, 8) if cuda else ([1, 2], 8, 2)  # a level: >= `requests`, >= 1 each
    columns = {"clients": "clients", "requests": "requests", "tps": "aggregate tokens/s", "x_one": "x one client"}
    columns |= {"p50": "p50 TTFT ms", "p95": "p95 TTFT ms", "mean_batch": "mean batch", "note": "note"}
    size = "~0.5B dense, bf16" if cuda else "tiny, fp32"
    report = Report(args, f"serve.py on {'the GPU' if cuda else 'the CPU'} ({size}), {tokens}-token answers", columns)
    path = Path(args.workdir) / "model"
    save_model(path, cuda)
    process, url = bench_serve.start_server(path, 16, threads=4 if cuda else 1)
    try:
        one = None
        for clients in levels:
            try:
                per_client = max(2 if cuda else 1, requests // clients)
                result = asyncio.run(bench_serve.load_level(url, clients, per_client, tokens))
            except Exception as error:
                report.add(clients=clients, note=error_line(error))
                report.fail(f"{clients} clients: {error_line(error)}")
                continue
            one = one or result["tps"]
            report.add(
                clients=clients,
                requests=result["requests"],
                tps=result["tps"],
                x_one=result["tps"] / one,
                p50=result["p50"] * 1000,
                p95=result["p95"] * 1000,
                mean_batch=result["mean_batch"],
            )
    finally:
        bench_serve.stop(process)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
