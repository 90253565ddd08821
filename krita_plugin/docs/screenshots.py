"""Take the docker's screenshots for krita_plugin/README.md: the whole Krita 5.1
application under Xvfb on a 1366x768 screen, through the app probe that
tests/test_krita_host.py runs (the docked test writes where the docker is on each
picture), cropped to the docker and its surroundings and quantized to small PNGs.

    .venv/bin/python krita_plugin/docs/screenshots.py        # needs krita, xvfb, Pillow

Writes krita_plugin/docs/docker-docked.png (the docker as Krita docks it by default,
with a batch waiting), docker-tall.png (the docker floated taller, showing History) and
docker-more.png (floated, More settings open at the Sampler preset and a LoRA row) and
docker-upscale.png (docked, in Upscale mode with its fields scrolled into view) and
docker-guides.png (floated, Control layers, Reference images and Regions open, a row in
each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
COLOURS = 96
MARGIN = 8


def crop(picture: str, rect: list[int], out: Path, above: int = 0) -> None:
    """The docker's rectangle (x, y, w, h on the screen) of ``picture``, with ``above``
    pixels of what is over it, quantized."""
    x, y, w, h = rect
    with Image.open(picture) as image:
        box = (max(0, x - MARGIN), max(0, y - above), min(image.width, x + w + MARGIN),
               min(image.height, y + h + MARGIN))
        part = image.convert("RGB").crop(box)
    part.quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"{out.relative_to(REPO)}: {part.width}x{part.height}, {out.stat().st_size} bytes")


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, ATELIER_DOCS_SHOTS=folder)
        test = ("tests/test_krita_host.py::"
                "test_docked_docker_shows_its_generate_button_on_a_1366x768_screen")
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", test], cwd=REPO, env=env)
        shots = Path(folder) / "shots.json"
        if done.returncode or not shots.exists():
            print("the application test failed or skipped: no screenshots", file=sys.stderr)
            return 1
        where = json.loads(shots.read_text())
        crop(*where["batch"], HERE / "docker-docked.png", above=300)
        crop(*where["tall"], HERE / "docker-tall.png")
        crop(*where["more"], HERE / "docker-more.png")
        crop(*where["upscale"], HERE / "docker-upscale.png", above=120)
        crop(*where["guides"], HERE / "docker-guides.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
