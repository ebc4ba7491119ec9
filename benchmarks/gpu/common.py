"""What every part of the GPU suite shares: its command line, its report (JSON + one markdown table, rewritten after
every row so that a part stopped at its time budget still leaves what it measured), the device, peak memory."""

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
NO_CUDA = "skipped: no CUDA"


def part_arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", required=True, help="where the part writes its rows")
    parser.add_argument("--md", required=True, help="where the part writes its markdown table")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--workdir", required=True, help="scratch folder (models, runs)")
    parser.add_argument("--budget_s", type=float, default=600.0, help="the part's time budget (then it is killed)")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    args.deadline = time.monotonic() + args.budget_s
    return args


def time_left(args) -> float:
    """Seconds until the suite stops this part: a step that needs more is skipped and says so."""
    return args.deadline - time.monotonic()


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    return f"CPU ({torch.get_num_threads()} threads)"


class Report:
    """One part's rows: `columns` maps each row key to its table header; `add` rewrites both files."""

    def __init__(self, args, title: str, columns: dict[str, str]):
        self.json_path, self.md_path = Path(args.json), Path(args.md)
        self.title, self.columns = title, columns
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.failures: list[str] = []
        self.smoke = args.cpu_smoke
        self.write()

    def add(self, **row) -> dict:
        self.rows.append(row)
        self.write()
        print(json.dumps(row, default=str), flush=True)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.write()
        print(text, flush=True)

    def fail(self, text: str) -> None:
        """A check that did not hold: the part exits non-zero (`finish`), the row that shows it stays."""
        self.failures.append(text)
        self.note(f"FAILED: {text}")

    def write(self) -> None:
        data = {
            "title": self.title,
            "device": device_name(),
            "torch": torch.__version__,
            "cpu_smoke": self.smoke,
            "rows": self.rows,
            "notes": self.notes,
            "failures": self.failures,
        }
        self.json_path.write_text(json.dumps(data, indent=1, default=str))
        self.md_path.write_text(self.markdown())

    def markdown(self) -> str:
        lines = [f"{self.title}; {device_name()}, torch {torch.__version__}", ""]
        lines.append("| " + " | ".join(self.columns.values()) + " |")
        lines.append("| " + " | ".join("---" for _ in self.columns) + " |")
        for row in self.rows:
            lines.append("| " + " | ".join(cell(row.get(key)) for key in self.columns) + " |")
        lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def finish(self) -> int:
        self.write()
        return 1 if self.failures else 0


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "/").replace("\n", " ")


class Peak:
    """Peak CUDA memory (allocated and reserved, GiB) over a `with` block; None on CPU."""

    def __enter__(self):
        self.allocated = self.reserved = None
        release()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.allocated = torch.cuda.max_memory_allocated() / 2**30
            self.reserved = torch.cuda.max_memory_reserved() / 2**30
        self.seconds = time.perf_counter() - self.start
        return False


def release() -> None:
    """Give back what the last measurement held (tensors, compiled graphs) before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def error_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return text[0][:300] if text else type(error).__name__
