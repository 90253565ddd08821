"""Seam metric: how visible the wrap edges of generated textures are, tiled vs untiled.

    python -m benchmarks.seams [--model tiny|ID|PATH] [--size 512] [--seeds 8] [--json F]

For each seed, one txt2img job with ``tiling="none"`` and one with ``tiling="both"``
(same prompt, seed and settings) through Atelier's generator; ``seam_score`` on x and y
(mean absolute difference across the wrap edge / mean difference between adjacent interior
columns or rows: about 1 when an image tiles, well above 1 for a visible seam). Prints the
mean per setting and writes JSON. On the tiny model the images are noise, whose interior
differences are already large, so the ratio says little there: the report names the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from backend.models.sources import atelier_home, operator_paths
from backend.models.store import ModelStore
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.seamless import seam_score
from protocol.messages import GenerateRequest

PROMPT = "weathered cobblestone pavement, top-down, seamless texture, high detail"


def measure(model: str, size: int, steps: int, seeds: int, device: str,
            home: Path) -> dict:
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    store = ModelStore(device, dtype, home, [], allowed_paths=operator_paths([model]))
    store.load(model)
    generator = DiffusionGenerator(store)
    scores: dict[str, dict[str, list[float]]] = {t: {"x": [], "y": []} for t in ("none", "both")}
    for seed in range(seeds):
        for tiling in ("none", "both"):
            job = GenerateRequest(prompt=PROMPT, width=size, height=size, steps=steps,
                                  seed=seed, tiling=tiling)
            [image] = generator.generate(job, {}, lambda *_: None, lambda: False).images
            px = image.pixels
            for axis in ("x", "y"):
                scores[tiling][axis].append(seam_score(px.rgba, px.width, px.height, axis))
    return {"model": model, "device": device, "size": size, "steps": steps, "seeds": seeds,
            "mean": {t: {a: statistics.fmean(v) for a, v in axes.items()}
                     for t, axes in scores.items()},
            "scores": scores}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = measure(args.model, args.size, args.steps, args.seeds, args.device,
                     args.home or atelier_home())
    print(f"seam score (1 = no visible seam), model {report['model']} on {report['device']}, "
          f"{args.size}x{args.size}, {args.steps} steps, {args.seeds} seeds")
    print(f"{'tiling':>8}  {'x':>6}  {'y':>6}")
    for tiling, axes in report["mean"].items():
        print(f"{tiling:>8}  {axes['x']:6.3f}  {axes['y']:6.3f}")
    if report["model"].startswith("tiny"):
        print("note: the tiny model draws noise; these figures say little about real textures")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), "utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
