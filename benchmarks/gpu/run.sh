#!/usr/bin/env bash
# The GPU suite in one command, on a bare GPU machine: install the carried wheels (.whl/ beside the checkout, from
# fetch_wheels.sh) with pip --target, no index, then run every part (suite.py). Extra flags go to suite.py.
#
#   benchmarks/gpu/run.sh --out "$OUT"              on the GPU machine (.whl carried)
#   benchmarks/gpu/run.sh --cpu-smoke --out DIR     every part at tiny sizes on the CPU (CI)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
SITE="${SITE:-/tmp/moai-site}"
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != 3.12 ]; then
  echo "run.sh: the wheels are for CPython 3.12 (the GPU image's), this is $version: using the installed packages"
elif compgen -G "$repo/.whl/*.whl" >/dev/null; then
  start=$(date +%s)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$repo"/.whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "run.sh: installed $(ls "$repo"/.whl/*.whl | wc -l) wheels into $SITE in $(($(date +%s) - start)) s"
else
  echo "run.sh: no wheels in $repo/.whl: using the installed packages"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - <<'PY'
import importlib
for name in ("torch", "transformers", "accelerate", "peft", "datasets", "orjson", "fastapi", "liger_kernel", "trl"):
    try:
        module = importlib.import_module(name)
        print(f"run.sh: {name} {getattr(module, '__version__', '?')}")
    except Exception as error:  # a missing package fails only the parts that need it
        print(f"run.sh: {name} not importable: {type(error).__name__}: {error}")
import torch
print(f"run.sh: CUDA {torch.version.cuda}, devices: {[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}")
PY
nvidia-smi -L 2>/dev/null || echo "run.sh: no nvidia-smi"
cd "$repo"
exec "$PYTHON" "$here/suite.py" "$@"
