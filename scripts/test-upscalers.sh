#!/usr/bin/env bash
# The upscaler-model tests (tests/test_upscale.py with spandrel importable), which the main
# suite skips: spandrel needs torchvision, and the only torchvision wheels for x86_64 Linux
# on PyPI are CUDA builds that do not load beside the CPU torch of .venv. This builds a
# separate .venv-upscalers (torch 2.14.1 + torchvision 0.29.1, a CUDA build that runs on
# the CPU too; about 6 GB) once, and runs the tests in it. Not part of scripts/test.sh:
# the download and disk are too heavy for every CI run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-upscalers
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import spandrel, diffusers" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
    "$VENV/bin/pip" install -q ".[test,upscalers]"
fi
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_upscale.py "$@"
