#!/usr/bin/env bash
# Separate venvs with the bpy wheels (Blender as a Python module) for the Blender host tests:
# .venv-bpy holds Blender 4.2 LTS, .venv-bpy5 Blender 5.0 (its compositor moved to node groups).
# Both wheels need CPython 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."

make_venv() {   # make_venv DIR REQUIREMENT
    local dir=$1 requirement=$2
    if [ ! -x "$dir/bin/python" ] || ! "$dir/bin/python" -c "import bpy" 2>/dev/null; then
        python3.11 -m venv "$dir" 2>/dev/null || python3 -m venv "$dir"
        "$dir/bin/python" -m pip install -q "$requirement" pytest
    fi
}

make_venv .venv-bpy "bpy==4.2.*"
make_venv .venv-bpy5 "bpy==5.0.*"
