#!/usr/bin/env bash
# Create .venv with Atelier and its dependencies (idempotent; re-runs when pyproject.toml changes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.atelier-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # torch first and pinned: this machine's CPU build; an unpinned torch pulls a CUDA build.
    .venv/bin/python -m pip install -q torch==2.13.0
    # cluster: the tests start a local Ray cluster (tests/test_cluster*.py)
    .venv/bin/python -m pip install -q -e '.[test,cluster]'
    echo "$want" > "$stamp"
fi
