#!/usr/bin/env bash
# Download, here, the wheels the GPU machine needs on top of its image (benchmarks/gpu/wheels.txt) into the
# repository's ignored .whl/ folder, for CPython 3.12 on x86-64 Linux; then check that together with the image's
# packages they satisfy each other's requirements, and that they fit the 64 MiB the device call carries.
#
#   benchmarks/gpu/fetch_wheels.sh            (then: run.sh on the GPU machine, with .whl carried)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dest="$repo/.whl"
limit_mib="${WHEELS_LIMIT_MIB:-64}"
PYTHON="${PYTHON:-python3}"

mapfile -t specs < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/wheels.txt" | grep -v '^$')
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest.tmp" "${specs[@]}"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
"$PYTHON" "$here/check_wheels.py" "$dest"
total=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
echo "fetch_wheels.sh: $(ls "$dest"/*.whl | wc -l) wheels, $((total / 1024 / 1024)) MiB ($total bytes) in $dest"
if [ "$total" -gt $((limit_mib * 1024 * 1024)) ]; then
  echo "fetch_wheels.sh: error: the wheels take more than ${limit_mib} MiB" >&2
  exit 1
fi
