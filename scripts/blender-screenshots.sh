#!/usr/bin/env bash
# Screenshots of the Atelier sidebar for blender_addon/README.md ("The panel").
#
#   scripts/blender-screenshots.sh [OUT_DIR]      (default: blender_addon/docs)
#
# Builds the add-on zip, runs Debian's Blender 3.4 with a window under Xvfb
# (tests/host/blender/panel_window.py --mode shots), then crops each picture to the sidebar
# and shrinks it to a small palette PNG with the project venv's Pillow. Needs blender,
# xvfb-run and .venv (or PYTHON=...). The bpy wheels (4.2+) cannot open a window, so the
# pictures are Blender 3.4's.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-blender_addon/docs}"
PYTHON="${PYTHON:-.venv/bin/python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m blender_addon.build --out "$WORK/zip" >/dev/null
ZIP="$(ls "$WORK"/zip/atelier_blender-*.zip)"
mkdir -p "$WORK/shots" "$OUT"
env -u PYTHONPATH BLENDER_USER_SCRIPTS="$WORK/scripts" BLENDER_USER_CONFIG="$WORK/config" \
    BLENDER_USER_RESOURCES="$WORK/resources" \
    xvfb-run -a -s "-screen 0 1280x1700x24" blender --factory-startup --enable-event-simulate \
    --window-geometry 0 0 1280 1650 --python tests/host/blender/panel_window.py -- \
    --zip "$ZIP" --mode shots --out "$WORK/shots" > "$WORK/blender.log" 2>&1 \
    || { cat "$WORK/blender.log"; exit 1; }
grep -q "PANEL WINDOW shots PASSED" "$WORK/blender.log" || { cat "$WORK/blender.log"; exit 1; }
"$PYTHON" - "$WORK/shots" "$OUT" <<'PY'
import json, sys
from pathlib import Path
from PIL import Image

shots, out = Path(sys.argv[1]), Path(sys.argv[2])
for meta in sorted(shots.glob("*.json")):
    box = json.loads(meta.read_text())
    picture = Image.open(meta.with_suffix(".png")).convert("RGB")
    crop = picture.crop((box["left"], box["top"], box["left"] + box["width"],
                         box["top"] + box["height"]))
    # Down to the panels: drop the empty rows at the bottom of the sidebar.
    background = crop.getpixel((2, crop.height - 2))
    rows = [y for y in range(crop.height)
            if any(crop.getpixel((x, y)) != background for x in range(0, crop.width - 24, 3))]
    if rows:
        crop = crop.crop((0, 0, crop.width, min(crop.height, rows[-1] + 8)))
    small = crop.quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    target = out / meta.with_suffix(".png").name
    small.save(target, optimize=True)
    print(target, crop.size, target.stat().st_size, "bytes")
PY
