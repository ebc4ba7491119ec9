"""The batch table that pretrain.sh plans from, kept as data in configs/batch_table.yaml: per MODEL_SIZE the model
config, sequence length and target effective batch; optionally a per-device micro-batch by GPU memory, which
overrides the one the memory model plans (launch_plan.py) and is checked against it like BATCH_SIZE.

pretrain.sh runs this file by path, so planning imports neither torch nor the package:

    python moai_llm/training/batch_table.py TABLE MODEL_SIZE GPU_MEMORY|cpu

prints model_config, seq_len, effective_batch and micro_batch (0: none given, planned), one per line. A bad table
or an unknown size is one line on stderr and exit 2.
"""

import sys
from dataclasses import dataclass

import yaml

if __package__:
    from ..errors import UsageError
else:  # run by path from pretrain.sh, without the package (torch): `main` reports these ValueErrors alike
    UsageError = ValueError

FIELDS = ("model_config", "seq_len", "effective_batch", "micro_batch")
REQUIRED = FIELDS[:3]  # micro_batch is an optional override of the planned one


@dataclass(frozen=True)
class Plan:
    model_config: str
    seq_len: int
    effective_batch: int
    micro_batch: int | None  # None: planned from the memory model


def _count(value, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{where} must be an integer >= {minimum}, not {value!r}")
    return value


def _model_row(path: str, size: str, row) -> dict:
    where = f"{path}: models.{size}"
    if not isinstance(row, dict):
        raise UsageError(f"{where} must be a mapping with {', '.join(FIELDS)}")
    missing = [name for name in REQUIRED if name not in row]
    if missing:
        raise UsageError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = [str(name) for name in row if name not in FIELDS]
    if unknown:
        raise UsageError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    if not isinstance(row["model_config"], str) or not row["model_config"].strip():
        raise UsageError(f"{where}.model_config must be a file path")
    micro = row.get("micro_batch", {})
    if not isinstance(micro, dict) or ("micro_batch" in row and not micro):
        raise UsageError(f"{where}.micro_batch must map GPU memory in GB to sequences per device, e.g. {{80: 4}}")
    rows = {
        _count(gb, f"{where}.micro_batch GPU memory", 0): _count(n, f"{where}.micro_batch.{gb}")
        for gb, n in micro.items()
    }
    return {
        "model_config": row["model_config"],
        "seq_len": _count(row["seq_len"], f"{where}.seq_len"),
        "effective_batch": _count(row["effective_batch"], f"{where}.effective_batch"),
        "micro_batch": dict(sorted(rows.items())),
    }


def load_table(path: str) -> dict:
    """{"cpu_micro_batch": int, "models": {size: row}}, every field checked; a UsageError names file and field."""
    try:
        with open(path, encoding="utf-8") as f:
            table = yaml.safe_load(f)
    except OSError as err:
        raise UsageError(f"{path}: cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}: not valid YAML{line} ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(table, dict) or set(table) != {"cpu_micro_batch", "models"}:
        raise UsageError(f"{path}: needs exactly the top-level keys cpu_micro_batch and models")
    models = table["models"]
    if not isinstance(models, dict) or not models:
        raise UsageError(f"{path}: models must map each MODEL_SIZE to its row")
    return {
        "cpu_micro_batch": _count(table["cpu_micro_batch"], f"{path}: cpu_micro_batch"),
        "models": {str(size): _model_row(path, size, row) for size, row in models.items()},
    }


def plan(table: dict, model_size: str, gpu_memory: int | None) -> Plan:
    """The row for `model_size`; the micro-batch of the largest memory row not above `gpu_memory` (None: CPU), or
    None when the row gives none there (the memory model plans it)."""
    row = table["models"].get(model_size)
    if row is None:
        raise UsageError(f"MODEL_SIZE={model_size} has no batch-table row (known: {' '.join(table['models'])})")
    if gpu_memory is None:
        micro = table["cpu_micro_batch"]
    else:
        fitting = [n for gb, n in row["micro_batch"].items() if gb <= gpu_memory]
        micro = fitting[-1] if fitting else None
    return Plan(row["model_config"], row["seq_len"], row["effective_batch"], micro)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not (argv[2] == "cpu" or argv[2].isdigit()):
        print("usage: batch_table.py TABLE MODEL_SIZE GPU_MEMORY|cpu", file=sys.stderr)
        return 2
    try:
        chosen = plan(load_table(argv[0]), argv[1], None if argv[2] == "cpu" else int(argv[2]))
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    print(chosen.model_config, chosen.seq_len, chosen.effective_batch, chosen.micro_batch or 0, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
