"""MoE MoaiForCausalLM vs transformers' Qwen3MoeForCausalLM: same config, same weights, interleaved repetitions.

Forward+backward tokens/s (median) for each experts implementation transformers offers (eager loop, grouped_mm,
batched_mm), MOAI vs Qwen3-MoE, plus a second Qwen3-MoE with the same weights (A/A control: its ratio to the
first is the noise floor). All compute the load-balancing loss (output_router_logits on); MOAI also computes its
z-loss and expert load, and its LM loss is the fused chunked one (config default). batched_mm is timed on a
one-row batch only (see main). Then greedy-generation tokens/s per implementation, both with their defaults.

    python benchmarks/bench_moe.py [--reps 7] [--threads 2]
"""

import argparse
import statistics

import torch
from bench_model import generate_seconds, train_step_seconds  # same timing as the dense benchmark
from transformers import Qwen3MoeForCausalLM

from moai_llm import MoaiConfig, MoaiForCausalLM
from moai_llm.export import qwen3_moe_config_from
from moai_llm.moe import parameter_counts

IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm")


def build(args):
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
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
        moe_intermediate_size=256,
    )
    moai = MoaiForCausalLM(config)
    models = {"MoaiForCausalLM": moai}
    for name in ("Qwen3MoeForCausalLM", "Qwen3MoeForCausalLM (A/A control)"):
        models[name] = Qwen3MoeForCausalLM(qwen3_moe_config_from(config))
        models[name].load_state_dict(moai.state_dict(), strict=True)
    return config, models


def time_training(models, ids, reps, implementations) -> dict:
    """(model name, implementation) -> median forward+backward tokens/s, all cases interleaved."""
    cases = [(name, impl) for impl in implementations for name in models]
    seconds = {case: [] for case in cases}
    for model in models.values():
        model.train()
    for rep in range(reps + 1):  # rep 0 warms up
        for name, impl in cases[rep % len(cases) :] + cases[: rep % len(cases)]:  # rotate who goes first
            models[name].set_experts_implementation(impl)
            elapsed = train_step_seconds(models[name], ids)
            if rep:
                seconds[(name, impl)].append(elapsed)
    return {case: ids.numel() / statistics.median(values) for case, values in seconds.items()}


def time_generation(models, prompt, new_tokens, reps) -> dict:
    """(model name, implementation) -> median greedy tokens/s; both skip router losses while decoding (defaults)."""
    runs = {name: models[name] for name in ("MoaiForCausalLM", "Qwen3MoeForCausalLM")}
    cases = [(name, impl) for impl in IMPLEMENTATIONS for name in runs]
    seconds = {case: [] for case in cases}
    for model in runs.values():
        model.eval()
    # Qwen3-MoE's default, and needed: with router logits on, its aux loss fails on cached masked steps
    runs["Qwen3MoeForCausalLM"].config.output_router_logits = False
    for rep in range(reps + 1):
        for name, impl in cases[rep % len(cases) :] + cases[: rep % len(cases)]:
            runs[name].set_experts_implementation(impl)
            elapsed = generate_seconds(runs[name], prompt, new_tokens if rep else 4)
            if rep:
                seconds[(name, impl)].append(elapsed)
    return {case: new_tokens / statistics.median(values) for case, values in seconds.items()}


def print_training_table(train, names, implementations, title) -> None:
    print(f"\n{title}\n")
    print(
        "| experts implementation | MoaiForCausalLM | Qwen3MoeForCausalLM | Qwen3-MoE A/A control "
        "| ratio Moai / Qwen3-MoE | ratio A/A (noise floor) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for impl in implementations:
        moai, qwen, control = (train[(name, impl)] for name in names)
        print(f"| {impl} | {moai:,.0f} | {qwen:,.0f} | {control:,.0f} | {moai / qwen:.3f} | {control / qwen:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--small_seq", type=int, default=32, help="tokens of the 1-row batch all three run on")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top_k", type=int, default=2)
    parser.add_argument("--new_tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, models = build(args)
    for model in models.values():
        model.config.output_router_logits = True  # same work: every model computes the load-balancing loss
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq))
    # batched_mm copies each token's expert weights ([tokens * top_k, 2 * moe_intermediate, hidden]): GBs at this
    # batch, so it is timed on the small batch only, where it is meant to be used.
    train = time_training(models, ids, args.reps, ("eager", "grouped_mm"))
    small = time_training(models, ids[:1, : args.small_seq], args.reps, IMPLEMENTATIONS)
    gen = time_generation(models, ids[:1, :16], args.new_tokens, args.reps)

    total, active = parameter_counts(models["MoaiForCausalLM"])
    print(
        f"config: hidden {config.hidden_size}, layers {config.num_hidden_layers}, {config.num_experts} experts "
        f"top-{config.num_experts_per_tok} (moe_intermediate {config.moe_intermediate_size}), vocab "
        f"{config.vocab_size}, {total:,} parameters ({active:,} active per token); {args.reps} interleaved reps "
        f"(medians), {args.threads} threads"
    )
    names = list(models)
    print_training_table(
        train, names, ("eager", "grouped_mm"), f"forward+backward tokens/s, batch {args.batch} x {args.seq}"
    )
    print_training_table(small, names, IMPLEMENTATIONS, f"forward+backward tokens/s, batch 1 x {args.small_seq}")
    print(f"\ngreedy generation tokens/s (prompt 16, {args.new_tokens} new tokens)\n")
    print("| experts implementation | MoaiForCausalLM | Qwen3MoeForCausalLM | ratio Moai / Qwen3-MoE |")
    print("| --- | ---: | ---: | ---: |")
    for impl in IMPLEMENTATIONS:
        moai, qwen = gen[("MoaiForCausalLM", impl)], gen[("Qwen3MoeForCausalLM", impl)]
        print(f"| {impl} | {moai:,.1f} | {qwen:,.1f} | {moai / qwen:.3f} |")


if __name__ == "__main__":
    main()
