"""What produced a set of numbers: library versions, the code's git commit, the model files' fingerprint.

Recorded in results.json and the report so that two evaluations can be told apart (and --compare can warn)
when a number moved because a library or the code changed rather than the model."""

import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path

PACKAGES = ("moai-llm", "torch", "transformers", "datasets", "accelerate", "peft")
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(folder: Path) -> str | None:
    """HEAD of the checkout holding the code (with "+dirty" when tracked files have changes), or None."""
    command = ["git", "-C", str(folder), "describe", "--always", "--dirty=+dirty", "--abbrev=40", "--exclude=*"]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def weights_fingerprint(model_path: str) -> str | None:
    """sha256 over the first weight file's size and its first and last MiB: tells two checkpoints apart in
    milliseconds, where hashing gigabytes would take minutes."""
    path = next((Path(model_path) / name for name in WEIGHT_FILES if (Path(model_path) / name).is_file()), None)
    if path is None:
        return None
    digest, size, mib = hashlib.sha256(), path.stat().st_size, 1 << 20
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(mib))
        handle.seek(max(size - mib, 0))
        digest.update(handle.read(mib))
    return f"{path.name}:{digest.hexdigest()[:16]}"


def provenance(model_path: str, with_lm_eval: bool = False) -> dict:
    versions = {name: package_version(name) for name in PACKAGES}
    versions["python"] = platform.python_version()
    if with_lm_eval:
        versions["lm_eval"] = package_version("lm_eval")
    return {
        "versions": versions,
        "code_commit": git_commit(Path(__file__).resolve().parent),
        "weights": weights_fingerprint(model_path),
    }
