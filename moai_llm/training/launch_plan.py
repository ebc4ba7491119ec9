"""The run pretrain.sh launches, planned from the memory model (`memory.py`) and the batch table.

pretrain.sh runs this file by path, so planning imports neither torch nor the package:

    python moai_llm/training/launch_plan.py MODEL_CONFIG GPU_MEMORY WORLD SEQ_LEN [--effective_batch N] [--batch_size N]
        [--parallel ddp|fsdp_grad_op|fsdp|deepspeed] [--deepspeed_stage 2|3] [--gradient_checkpointing 0|1] [--force]

prints `micro_batch=`, `parallel=`, `gradient_checkpointing=` and `estimate_gb=` lines for pretrain.sh, then
`# ` lines: the estimate by item and why each choice was made. A plan that cannot fit (unless --force) or a bad
model config is one line on stderr and exit 2. docs/scaling.md describes the choice (`choose`).
"""

import argparse
import importlib.util
import sys
from dataclasses import dataclass, replace

if __package__:
    from .memory import Estimate, Setup, Shape, estimate
else:  # run by path from pretrain.sh: the sibling module, without importing the package (torch)
    from memory import Estimate, Setup, Shape, estimate

BUDGET = 0.9  # of the card: the rest is left to fragmentation and what the estimate does not see
MAX_MICRO_BATCH = 64
PARALLEL_ENGINE = {"ddp": "ddp", "fsdp_grad_op": "zero2", "fsdp": "zero3"}
ENGINE_PARALLEL = {engine: parallel for parallel, engine in PARALLEL_ENGINE.items()}
ENGINE_NAMES = {"ddp": "DDP", "zero2": "ZeRO-2 / FSDP grad-op", "zero3": "full shard (FSDP / ZeRO-3)"}


@dataclass(frozen=True)
class Choice:
    engine: str
    micro_batch: int
    gradient_checkpointing: bool
    estimate: Estimate


def _micro_batches(effective_batch: int | None, world: int) -> list[int]:
    """Per-device micro-batches, largest first, that divide the effective batch over `world` ranks."""
    if not effective_batch:
        return list(range(MAX_MICRO_BATCH, 0, -1))
    per_rank, rest = divmod(effective_batch, world)
    if rest:
        return []
    return [b for b in range(min(per_rank, MAX_MICRO_BATCH), 0, -1) if per_rank % b == 0]


def choose(
    shape: Shape,
    card_bytes: float,
    base: Setup,
    effective_batch: int | None,
    engine: str | None = None,
    micro_batch: int | None = None,
    checkpointing: bool | None = None,
) -> tuple[Choice | None, list[str]]:
    """(the cheapest choice that fits `BUDGET` of the card, or None; one line per option rejected on the way).
    `base` carries world size, sequence length, precision and attention; the rest is chosen unless given."""
    engines = [engine] if engine else (["ddp", "zero2", "zero3"] if base.world > 1 else ["ddp"])
    sizes = [micro_batch] if micro_batch else _micro_batches(effective_batch, base.world)
    limit = BUDGET * card_bytes
    notes = []
    for ckpt in [checkpointing] if checkpointing is not None else [False, True]:
        for name in engines:
            setup = replace(base, engine=name, gradient_checkpointing=ckpt)
            for b in sizes:
                found = estimate(shape, replace(setup, micro_batch=b))
                if found.total <= limit:
                    return Choice(name, b, ckpt, found), notes
            smallest = sizes[-1] if sizes else 1
            need = estimate(shape, replace(setup, micro_batch=smallest)).total
            notes.append(
                f"{ENGINE_NAMES[name]} {'with' if ckpt else 'without'} gradient checkpointing: micro-batch "
                f"{smallest} needs {need / 1e9:.1f} GB > {limit / 1e9:.1f} GB"
            )
    return None, notes


def default_plan(model_config: str, gpu_memory: int, world: int, seq_len: int, effective_batch: int) -> Choice | None:
    """What pretrain.sh plans when the user sets nothing (sdpa attention: flash-attn not assumed)."""
    base = Setup(world=world, seq_len=seq_len, attention="sdpa")
    return choose(Shape.from_file(model_config), gpu_memory * 1e9, base, effective_batch)[0]


def describe(choice: Choice | None) -> str:
    """A plan in a table cell: `PARALLEL xBATCH_SIZE`, `+ckpt` with gradient checkpointing; `—` when none fits."""
    if choice is None:
        return "—"
    return f"{ENGINE_PARALLEL[choice.engine]} x{choice.micro_batch}" + (
        " +ckpt" if choice.gradient_checkpointing else ""
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launch_plan.py")
    parser.add_argument("model_config")
    parser.add_argument("gpu_memory", type=int)
    parser.add_argument("world", type=int)
    parser.add_argument("seq_len", type=int)
    parser.add_argument("--effective_batch", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--parallel", choices=[*PARALLEL_ENGINE, "deepspeed"])
    parser.add_argument("--deepspeed_stage", type=int, default=2)
    parser.add_argument("--gradient_checkpointing", type=int, choices=[0, 1])
    parser.add_argument("--force", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    try:
        shape = Shape.from_file(args.model_config)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"MODEL_CONFIG={args.model_config}: not a model config ({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    if not args.batch_size and args.effective_batch and args.effective_batch % args.world:
        print(f"effective batch {args.effective_batch} does not divide by the {args.world} processes", file=sys.stderr)
        return 2
    engine = None
    if args.parallel == "deepspeed":
        engine = "zero3" if args.deepspeed_stage == 3 else "zero2"
    elif args.parallel:
        engine = PARALLEL_ENGINE[args.parallel]
    flash = importlib.util.find_spec("flash_attn") is not None  # train.py's choice on CUDA: flash-attn, else sdpa
    base = Setup(world=args.world, seq_len=args.seq_len, attention="flash" if flash else "sdpa")
    card = args.gpu_memory * 1e9  # nominal GB: at or below what the card reports (80 GB H100: 85.5e9 bytes)
    ckpt = None if args.gradient_checkpointing is None else bool(args.gradient_checkpointing)
    effective = None if args.batch_size else args.effective_batch
    choice, notes = choose(shape, card, base, effective, engine, args.batch_size, ckpt)
    user = {
        "PARALLEL": args.parallel,
        "BATCH_SIZE": args.batch_size,
        "GRADIENT_CHECKPOINTING": args.gradient_checkpointing,
    }
    given = [f"{key}={value}" for key, value in user.items() if value is not None]
    if choice is None:
        if not args.force:
            where = f"{args.world} x {args.gpu_memory} GB" + (f" with {' '.join(given)}" if given else "")
            print(
                f"does not fit {where}: {notes[-1]} ({BUDGET:.0%} of the card; "
                f"{'FORCE_PLAN=1 launches it anyway' if given else 'more GPUs or a shorter SEQ_LEN'})",
                file=sys.stderr,
            )
            return 2
        setup = replace(
            base, engine=engine or "zero3", micro_batch=args.batch_size or 1, gradient_checkpointing=bool(ckpt)
        )
        choice = Choice(setup.engine, setup.micro_batch, setup.gradient_checkpointing, estimate(shape, setup))
        notes.append("FORCE_PLAN=1: launched although the estimate exceeds the budget")
    parallel = args.parallel if args.parallel else ENGINE_PARALLEL[choice.engine]
    print(
        f"micro_batch={choice.micro_batch}",
        f"parallel={parallel}",
        f"gradient_checkpointing={int(choice.gradient_checkpointing)}",
        f"estimate_gb={choice.estimate.total / 1e9:.1f}",
        sep="\n",
    )
    print(
        f"# estimate per GPU ({shape.params() / 1e9:.2f}B parameters, {ENGINE_NAMES[choice.engine]} over "
        f"{args.world}, micro-batch {choice.micro_batch} x {args.seq_len} tokens, bf16 autocast, "
        f"{base.attention} attention{', gradient checkpointing' if choice.gradient_checkpointing else ''}):"
    )
    for line in choice.estimate.lines():
        print(f"#   {line}")
    print(f"# budget: {BUDGET:.0%} of {args.gpu_memory} GB = {BUDGET * card / 1e9:.1f} GB")
    for note in notes:
        print(f"# rejected: {note}")
    why = "given" if given else "the cheapest that fits, largest micro-batch dividing the effective batch"
    print(
        f"# chosen: PARALLEL={parallel} BATCH_SIZE={choice.micro_batch} "
        f"GRADIENT_CHECKPOINTING={int(choice.gradient_checkpointing)} ({why})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
