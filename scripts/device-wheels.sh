#!/usr/bin/env bash
# Download the wheels the GPU benchmark (benchmarks/device_run.sh) needs on the lent device
# machine into .whl/ (gitignored), for that machine's Python; carry .whl to it.
#
#   scripts/device-wheels.sh [DEST]      # DEST defaults to .whl
#
# Only what the device image lacks (per /work/.library/device/KINDS.md: Python 3.12 with
# torch, transformers, accelerate, safetensors, huggingface_hub, numpy, pillow, regex,
# requests and filelock already there): diffusers and websockets, at the versions this
# checkout's .venv runs its tests with. No dependencies are fetched (--no-deps): diffusers
# needs nothing the image lacks. Set DEVICE_PYTHON for another Python (default 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${1:-.whl}
DEVICE_PYTHON=${DEVICE_PYTHON:-3.12}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PACKAGES=(diffusers websockets)

pins=()
for name in "${PACKAGES[@]}"; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" \
              "$name" 2>/dev/null) || { echo "$name is not installed for $PY: run scripts/setup.sh" >&2; exit 1; }
    pins+=("$name==$version")
done

mkdir -p "$DEST"
# One version of each package, or the install on the device stops: drop older downloads.
for name in "${PACKAGES[@]}"; do
    rm -f "$DEST/$name"-*.whl
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" "${pins[@]}"

for name in "${PACKAGES[@]}"; do
    found=("$DEST/$name"-*.whl)
    if [ ${#found[@]} -ne 1 ] || [ ! -f "${found[0]}" ]; then
        echo "expected one $name wheel in $DEST, found: ${found[*]}" >&2
        exit 1
    fi
done
echo "wheels for Python $DEVICE_PYTHON in $DEST ($(du -sh "$DEST" | cut -f1); the device run may carry 64 MiB in all):"
ls -1 "$DEST"/*.whl
