#!/usr/bin/env bash
# The test suite. Host tests (real Blender, real Krita) need them installed: see README.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
