#!/usr/bin/env bash
# The main job: a daemon on the tiny model (or --model ...), a txt2img, img2img and inpaint
# round trip through the real protocol; images land in out/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/atelier demo "$@"
