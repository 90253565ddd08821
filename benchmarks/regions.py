"""What each region costs a denoising step (issue 14, PROTOCOL.md 4.7).

A region adds one conditional UNet pass to every step (batched with the guidance pair).
Two figures, as ``benchmarks/controls.py`` gives them for controls:

- **Tiny model** (this machine, CPU): s/step of a txt2img job with 0, 1, 2 and 4 regions
  (plus the job's prompt where they leave room), the time between two step ends, median
  and fastest over ``--repeat`` jobs of 8 steps, rows round-robin; and the FLOPs of a
  step (``count_flops``), which no other load on the machine disturbs.
- **Full-size architectures, FLOPs per step**: the SD1.5 (512x512) and SDXL (1024x1024)
  UNets built from ``backend/models/configs`` on the meta device (no weights), counted at
  batch 2 (guidance) and 2 + n (n regions).

    python -m benchmarks.regions [--repeat 5] [--side 256] [--json out/regions.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from backend.models.store import ModelStore
from backend.pipelines.generator import DiffusionGenerator
from protocol.client import make_upload
from protocol.frames import ImageFrame, PixelFormat
from protocol.messages import Region

from .controls import FULL_SIZE
from .hardware import txt2img_step_costs
from .random_models import config_folder

COUNTS = (0, 1, 2, 4)
PROMPTS = ("red apples", "a blue ocean", "a stone tower", "green hills")


def _stripes(side: int, count: int) -> list[ImageFrame]:
    """``count`` vertical stripes covering the left three quarters of the canvas (the
    job's prompt keeps the rest, so its pass runs too, as in most real jobs)."""
    masks = []
    width = side * 3 // 4 // max(count, 1)
    for index in range(count):
        mask = np.zeros((side, side), np.uint8)
        mask[:, index * width:(index + 1) * width] = 255
        masks.append(make_upload(PixelFormat.GRAY8, side, side, mask.tobytes()))
    return masks


def tiny_step_costs(home: Path, repeat: int, side: int = 256, steps: int = 8) -> dict[str, dict]:
    """Per region count: median and fastest s/step and FLOPs per step, each relative to
    the job without regions."""
    store = ModelStore("cpu", torch.float32, home, search_dirs=[], hf_cache=home / "no-hf-cache")
    store.load("tiny")
    generator = DiffusionGenerator(store)
    masks = {count: _stripes(side, count) for count in COUNTS}
    uploads = {frame.id: frame for frames in masks.values() for frame in frames}

    rows = {f"{count} regions": {"regions": [Region(mask=frame.id, prompt=prompt)
                                             for frame, prompt in zip(masks[count], PROMPTS)]}
            for count in COUNTS}
    return txt2img_step_costs(generator, uploads, rows, "0 regions", repeat, steps, side)


def full_size_flops(family: str, counts: tuple[int, ...] = COUNTS) -> dict[str, float]:
    """TFLOP of one step of ``family``'s UNet at its native size with n regions: batch 2 + n."""
    side, tokens, width, xl = FULL_SIZE[family]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(config_folder(family) / "unet"))
    out = {}
    for count in counts:
        batch = 2 + count
        with torch.device("meta"):
            latents, text = torch.zeros(batch, 4, side, side), torch.zeros(batch, tokens, width)
            t = torch.full((batch,), 500)
            extra = {"added_cond_kwargs": {"text_embeds": torch.zeros(batch, 1280),
                                           "time_ids": torch.zeros(batch, 6)}} if xl else {}
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), \
                FlopCounterMode(display=False) as counter:
            unet(latents, t, encoder_hidden_states=text, **extra)
        out[f"{count} regions"] = counter.get_total_flops() / 1e12
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--home", type=Path, default=None,
                        help="Atelier home for the tiny model (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tiny = tiny_step_costs(args.home or Path(scratch), args.repeat, args.side)
    print(f"tiny model, {args.side}x{args.side} txt2img on {torch.get_num_threads()} CPU threads:")
    for row, f in tiny.items():
        print(f"  {row:10s} {f['s_per_step'] * 1000:7.1f} ms/step x{f['relative']:.2f} (best "
              f"{f['best_s_per_step'] * 1000:.1f}, x{f['best_relative']:.2f})  "
              f"{f['flop_per_step'] / 1e9:6.2f} GFLOP/step x{f['flop_relative']:.2f}")
    full = {family: full_size_flops(family) for family in FULL_SIZE}
    print("full-size UNets, one guided step:")
    for family, rows in full.items():
        print(f"  {family}: " + ", ".join(f"{row} {tflop:.2f} TFLOP"
                                          for row, tflop in rows.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"tiny": tiny, "full_size": full}, indent=2))


if __name__ == "__main__":
    main()
