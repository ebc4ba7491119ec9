"""Evaluate a MOAI model: lm-eval benchmarks, perplexity on local text, generation samples, a Markdown report.

    python eval.py --model_path outputs/pretrain-tiny/final_model --eval_file held_out.jsonl
    python eval.py --model_path DIR --suite leaderboard_v1
    python eval.py --model_path DIR --tasks mytask --include_path my_tasks/ --limit 100
    python eval.py --compare outputs/base/final_model outputs/sft/final_model --output_dir outputs/compare

See docs/evaluation.md.
"""

import argparse
import logging
import sys

from moai_llm.errors import UsageError
from moai_llm.evaluation import SUITES, resolve_tasks
from moai_llm.flags import Parser


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser("eval.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", help="final_model, a checkpoint-N, or a LoRA adapter directory")
    p.add_argument(
        "--checkpoints",
        metavar="RUN_DIR",
        help="evaluate every checkpoint-N and the final_model of a training run, and plot each metric against "
        "tokens seen (instead of --model_path)",
    )
    p.add_argument("--tasks", help="comma-separated lm-eval task/group names; NAME:N sets N shots for one task")
    p.add_argument("--suite", help="; ".join(f"{name}: {suite.description}" for name, suite in SUITES.items()))
    p.add_argument(
        "--include_path", action="append", default=[], help="folder of extra lm-eval task YAMLs (repeatable)"
    )
    p.add_argument("--num_fewshot", type=int, help="shots for every task (default: each task's or suite's own)")
    p.add_argument("--limit", type=float, help="documents per task (< 1: a fraction)")
    p.add_argument("--batch_size", type=int, default=8, help="rows per forward pass (benchmarks and perplexity)")
    p.add_argument(
        "--seed",
        type=int,
        help="one seed for lm-eval's python, numpy, torch and few-shot draws and for samples (default: lm-eval's "
        "0, 1234, 1234, 1234; samples 0)",
    )
    p.add_argument(
        "--apply_chat_template", action="store_true", help="lm-eval: wrap each benchmark prompt in the chat template"
    )
    p.add_argument(
        "--fewshot_as_multiturn", action="store_true", help="lm-eval: few-shot examples as chat turns (with the above)"
    )
    p.add_argument("--gen_kwargs", help="lm-eval: generation settings of generate_until tasks, e.g. temperature=0")
    p.add_argument(
        "--eval_file",
        action="append",
        default=[],
        help="text for perplexity (repeatable): .txt = one document, .jsonl/.json/.parquet/.csv rows",
    )
    p.add_argument("--text_column", default="text", help="text column of --eval_file rows")
    p.add_argument("--max_length", type=int, help="tokens per perplexity row (default: model context, at most 2048)")
    p.add_argument(
        "--stride",
        type=int,
        help="perplexity: sliding windows that move by this many tokens, each scoring only its new tokens "
        "(default: disjoint windows, one token of carried context)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 autocast where training uses it (GPUs, CPUs with AMX/AVX512-BF16), else fp32",
    )
    p.add_argument("--prompts", help="file with one prompt per line for samples (default: 4 built-in prompts)")
    p.add_argument("--no_samples", action="store_true", help="skip generation samples")
    p.add_argument("--max_new_tokens", type=int, default=128, help="tokens per sample answer")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature for samples (0: greedy)")
    p.add_argument("--top_k", type=int, default=0, help="samples: top-k sampling (0: off)")
    p.add_argument("--top_p", type=float, default=1.0, help="samples: nucleus sampling (1: off)")
    p.add_argument("--repetition_penalty", type=float, default=1.0, help="samples: repetition penalty (1: off)")
    p.add_argument(
        "--decoding",
        choices=("dynamic", "static", "compiled"),
        default="dynamic",
        help="samples' KV cache: dynamic, static, or static + torch.compile (as chat.py --decoding)",
    )
    p.add_argument(
        "--chat_template",
        choices=("auto", "on", "off"),
        default="auto",
        help="samples through the chat template; auto: off for a pretraining run, on for SFT (from the run's "
        "arguments), else on when the tokenizer has one",
    )
    p.add_argument("--device", help="cuda | mps | cpu (default: the best found)")
    p.add_argument("--tokenizer_path", help="default: the model's own")
    p.add_argument("--base_model", help="base of a LoRA adapter (default: from adapter_config.json)")
    p.add_argument("--output_dir", help="default: MODEL_PATH/eval (required with --compare)")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="DIR",
        help="evaluation output dirs (or model dirs with eval/) to put side by side in one report",
    )
    return p.parse_args(argv)


def options_from(args):
    from moai_llm.chat.generation import SamplingParams
    from moai_llm.evaluation.benchmarks import LmEvalOptions
    from moai_llm.evaluation.runner import EvalOptions

    if args.checkpoints and args.model_path:
        raise UsageError("--checkpoints evaluates every model of a run; it takes no --model_path")
    if not args.model_path and not args.checkpoints:
        raise UsageError("--model_path is required (or --checkpoints RUN_DIR, or --compare DIR1 DIR2 ...)")
    minimum = {"batch_size": 1, "max_new_tokens": 1, "max_length": 2, "num_fewshot": 0, "stride": 1, "top_k": 0}
    for flag, least in minimum.items():
        if getattr(args, flag) is not None and getattr(args, flag) < least:
            raise UsageError(f"--{flag} must be at least {least}, got {getattr(args, flag)}")
    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit must be positive, got {args.limit}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.repetition_penalty <= 0 or args.temperature < 0:
        raise UsageError("--repetition_penalty must be positive and --temperature at least 0")
    if args.fewshot_as_multiturn and not args.apply_chat_template:
        raise UsageError("--fewshot_as_multiturn needs --apply_chat_template")
    suite = args.suite or (None if args.tasks or args.eval_file else "quick")
    sampling = ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens")
    same_name = ("text_column", "chat_template", "decoding", "batch_size", "max_length", "stride", "precision")
    same_name += ("device", "output_dir", "tokenizer_path", "base_model")
    return EvalOptions(
        model_path=args.model_path or "",
        tasks=resolve_tasks(args.tasks, suite, args.num_fewshot, args.limit),
        include_path=tuple(args.include_path),
        eval_files=args.eval_file,
        prompts_file=args.prompts,
        samples=not args.no_samples,
        sampling=SamplingParams(**{k: getattr(args, k) for k in sampling}, seed=args.seed or 0),
        lm_eval_options=LmEvalOptions(
            args.apply_chat_template, args.fewshot_as_multiturn, args.gen_kwargs, seed=args.seed
        ),
        **{k: getattr(args, k) for k in same_name},
    )


def print_summary(results: dict, output_dir: str) -> None:
    from moai_llm.evaluation.perplexity import perplexity_line

    for name in results.get("summary_tasks", []):
        metrics = ", ".join(
            f"{k} {v:.4f}" for k, v in results["tasks"][name].items() if isinstance(v, float) and "_stderr" not in k
        )
        print(f"{name}: {metrics}")
    for name, reason in results.get("failed_tasks", {}).items():
        print(f"{name}: FAILED ({reason})")
    for name, figures in results["perplexity"].items():
        print(perplexity_line(name, figures))
    if results["samples"]:
        tokens = sum(s["tokens"] for s in results["samples"])
        seconds = sum(s["seconds"] for s in results["samples"])
        print(f"samples: {len(results['samples'])} answers, {tokens / max(seconds, 1e-9):.1f} tokens/s")
    print(f"results: {output_dir}/results.json, report: {output_dir}/report.md")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        from moai_llm.evaluation import runner  # torch and transformers: only once the flags are read

        if args.compare:
            if args.model_path:
                raise UsageError("--compare reads finished evaluations; it takes no --model_path")
            if not args.output_dir:
                raise UsageError("--compare needs --output_dir (where the comparison report goes)")
            print(f"report: {runner.compare(args.compare, args.output_dir)}")
            return 0
        options = options_from(args)
        if args.checkpoints:
            print(f"report: {runner.evaluate_checkpoints(options, args.checkpoints)}")
            return 0
        results = runner.evaluate_model(options)
    except UsageError as error:
        print(f"eval.py: error: {error}", file=sys.stderr)
        return 2
    print_summary(results, options.output_dir or f"{options.model_path}/eval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
