#!/usr/bin/env bash
# A separate venv with the bpy wheel (Blender 4.2 as a Python module) for the Blender host tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-bpy/bin/python ] || ! .venv-bpy/bin/python -c "import bpy" 2>/dev/null; then
    python3.11 -m venv .venv-bpy 2>/dev/null || python3 -m venv .venv-bpy
    .venv-bpy/bin/python -m pip install -q "bpy==4.2.*" pytest
fi
