"""MoaiForCausalLM vs transformers' Qwen3ForCausalLM: same config, same weights, interleaved repetitions.

Reports forward+backward tokens/s and greedy-generation tokens/s (median over repetitions) and their ratio.
A second Qwen3 instance with the same weights is timed too: its ratio to the first (an A/A comparison) is the
noise floor of the machine, so a Moai/Qwen3 ratio inside it is no difference at all.

    python benchmarks/bench_model.py [--reps 7] [--threads 2]
"""

import argparse
import statistics
import time

import torch
from transformers import Qwen3ForCausalLM

from moai_llm import MoaiConfig, MoaiForCausalLM
from moai_llm.export import qwen3_config_from


def train_step_seconds(model, ids) -> float:
    start = time.perf_counter()
    model(ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@torch.no_grad()
def generate_seconds(model, prompt, new_tokens, **kwargs) -> float:
    start = time.perf_counter()
    model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--new_tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MoaiConfig(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    moai = MoaiForCausalLM(config)
    qwen3 = Qwen3ForCausalLM(qwen3_config_from(config))
    qwen3.load_state_dict(moai.state_dict(), strict=True)
    control = Qwen3ForCausalLM(qwen3_config_from(config))
    control.load_state_dict(moai.state_dict(), strict=True)
    models = {"MoaiForCausalLM": moai, "Qwen3ForCausalLM": qwen3, "Qwen3ForCausalLM (A/A control)": control}
    order = list(models.items())
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq))
    prompt = ids[:1, :16]

    train = {name: [] for name in models}
    gen = {name: [] for name in models}
    for model in models.values():  # warm-up
        model.train()
        train_step_seconds(model, ids)
        model.eval()
        generate_seconds(model, prompt, 4)
    for rep in range(args.reps):
        for name, model in order[rep % 3 :] + order[: rep % 3]:  # rotate who goes first
            model.train()
            train[name].append(ids.numel() / train_step_seconds(model, ids))
            model.eval()
            gen[name].append(args.new_tokens / generate_seconds(model, prompt, args.new_tokens))

    rows = [(name, statistics.median(train[name]), statistics.median(gen[name])) for name in models]
    ratio = lambda a, b, col: rows[a][col] / rows[b][col]  # noqa: E731
    print(
        f"config: hidden {config.hidden_size}, layers {config.num_hidden_layers}, vocab {config.vocab_size}, "
        f"batch {args.batch} x seq {args.seq}, greedy {args.new_tokens} tokens, {args.reps} interleaved reps, "
        f"{args.threads} threads"
    )
    print("| model | fwd+bwd tokens/s | greedy generate tokens/s |")
    print("| --- | ---: | ---: |")
    for name, tr, ge in rows:
        print(f"| {name} | {tr:,.0f} | {ge:,.1f} |")
    print(f"| ratio Moai / Qwen3 | {ratio(0, 1, 1):.3f} | {ratio(0, 1, 2):.3f} |")
    print(f"| ratio Qwen3 / Qwen3 (noise floor) | {ratio(2, 1, 1):.3f} | {ratio(2, 1, 2):.3f} |")


if __name__ == "__main__":
    main()
