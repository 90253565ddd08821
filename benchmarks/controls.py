"""What each extra control costs a denoising step (issue 14).

Two figures:

- **Tiny model, wall time** (this machine, CPU): s/step of a txt2img job with 0..4
  ControlNet controls and with one T2I-Adapter control, each relative to the plain job.
  A step's time is the time between two step ends, so the per-job work (text encoder,
  VAE decode, preprocessing, the adapter's one pass) drops out: the median (and the
  fastest) over ``--repeat`` jobs of 8 steps, rows round-robin; and the step's FLOPs,
  counted as the GPU benchmark counts them, which no other load on the machine disturbs.
- **Full-size architectures, FLOPs per step** (the GPU benchmark's terms,
  ``benchmarks/generation.py``): UNet and ControlNet forwards of SD1.5 (512x512) and SDXL
  (1024x1024) built from ``backend/models/configs`` on the meta device (shapes only, no
  weights, nothing downloaded), counted with ``torch.utils.flop_counter`` at batch 2
  (classifier-free guidance). A T2I-Adapter's features are added to the UNet's: no matmul
  per step, its one pass per job is counted apart.

    python -m benchmarks.controls [--repeat 5] [--json out/controls.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from backend.models.store import ModelStore
from backend.pipelines.generator import DiffusionGenerator
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import ControlLayer

from .hardware import txt2img_step_costs
from .random_models import ADAPTER_CONFIGS, config_folder

KINDS = ("canny", "normal", "lineart", "softedge")
SIDE = 64
# family -> (latent side, text tokens, text width, SDXL's added conditions)
FULL_SIZE = {"sd15": (64, 77, 768, False), "sdxl": (128, 77, 2048, True)}


# ------------------------------------------------------------------ tiny model, wall time

def _picture() -> ImageFrame:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, SIDE, SIDE, new_id(), rgba.tobytes())


def tiny_step_costs(home: Path, repeat: int, steps: int = 8) -> dict[str, dict]:
    """Per row: the median and the fastest time between two step ends (so per-job work
    drops out) over ``repeat`` jobs of ``steps`` steps, rows round-robin, and the FLOPs of
    one step (``count_flops``); each relative to the plain job."""
    store = ModelStore("cpu", torch.float32, home, search_dirs=[], hf_cache=home / "no-hf-cache")
    store.load("tiny")
    generator = DiffusionGenerator(store)
    picture = _picture()
    uploads = {picture.id: picture}
    rows = {f"{n} controlnet": {"controls": [ControlLayer(kind=k, image=picture.id)
                                             for k in KINDS[:n]]}
            for n in range(len(KINDS) + 1)}
    rows["1 t2i-adapter"] = {"controls": [ControlLayer(kind="depth", image=picture.id,
                                                       model="tiny-adapter")]}
    return txt2img_step_costs(generator, uploads, rows, "0 controlnet", repeat, steps, SIDE)


# ------------------------------------------------------------------ full size, FLOPs

def _count(run) -> float:
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def full_size_flops(family: str) -> dict[str, float]:
    """TFLOP of one denoising step (batch 2) of the UNet alone and of one ControlNet beside
    it, and of the T2I-Adapter's one pass per job, for ``family`` at its native size."""
    side, tokens, width, xl = FULL_SIZE[family]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_folder(family) / "unet"))
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        adapter = T2IAdapter(in_channels=3, **ADAPTER_CONFIGS[family])
        latents = torch.zeros(2, 4, side, side)
        text = torch.zeros(2, tokens, width)
        cond = torch.zeros(2, 3, side * 8, side * 8)
        t = torch.tensor([500, 500])
        extra = {}
        if xl:
            extra = {"added_cond_kwargs": {"text_embeds": torch.zeros(2, 1280),
                                           "time_ids": torch.zeros(2, 6)}}
    unet_flops = _count(lambda: unet(latents, t, encoder_hidden_states=text, **extra))
    control_flops = _count(lambda: controlnet(latents, t, encoder_hidden_states=text,
                                              controlnet_cond=cond, **extra))
    adapter_flops = _count(lambda: adapter(cond[:1]))
    return {"unet_tflop_per_step": unet_flops / 1e12,
            "controlnet_tflop_per_step": control_flops / 1e12,
            "controlnet_relative": control_flops / unet_flops,
            "adapter_tflop_per_job": adapter_flops / 1e12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--home", type=Path, default=None,
                        help="Atelier home for the tiny models (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        home = args.home or Path(scratch)
        tiny = tiny_step_costs(home, args.repeat)
    print(f"tiny model, {SIDE}x{SIDE} txt2img on {torch.get_num_threads()} CPU threads "
          f"(median of {args.repeat}):")
    for row, figures in tiny.items():
        print(f"  {row:16s} {figures['s_per_step'] * 1000:7.1f} ms/step (best "
              f"{figures['best_s_per_step'] * 1000:.1f})  x{figures['relative']:.2f}   "
              f"{figures['flop_per_step'] / 1e9:6.2f} GFLOP/step  x{figures['flop_relative']:.2f}")
    full = {family: full_size_flops(family) for family in FULL_SIZE}
    print("full-size architectures, batch 2 (guidance), one step:")
    for family, figures in full.items():
        print(f"  {family}: UNet {figures['unet_tflop_per_step']:.2f} TFLOP, each ControlNet "
              f"+{figures['controlnet_tflop_per_step']:.2f} TFLOP "
              f"(+{figures['controlnet_relative'] * 100:.0f}%), T2I-Adapter "
              f"{figures['adapter_tflop_per_job'] * 1000:.1f} GFLOP once per job")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"tiny": tiny, "full_size": full}, indent=2))


if __name__ == "__main__":
    main()
