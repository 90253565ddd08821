"""Upscale + tiled refine (issue 16): seconds and peak memory of one job, and the share of
the time spent outside the model (tiling, blending, resampling, the sampler's arithmetic).

    python -m benchmarks.upscale                          # 1024 -> 4096 on the tiny model
    python -m benchmarks.upscale --size 512 --target 2048 --tile 512 --json out/upscale.json

The job runs in this process through ``AssetGenerator`` (what the daemon runs for kind
"upscale"): Lanczos to the target, then the refine at ``--strength`` in ``--tile`` pixel
tiles. "In the model" is the time inside the UNet's and the VAE's forward calls (timed by
hooks on those modules); everything else counts as outside. Peak memory: on a GPU the
device's peak allocation during the job; on the CPU the process's peak resident set
above what it held before the job (``ru_maxrss``, so only growth past the earlier peak
shows, which is why the model is loaded and a small job run first).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB


class _ModuleTimer:
    """Seconds spent inside the forward calls of some modules (outermost calls only)."""

    def __init__(self, modules: list[Any], sync: Any):
        self.seconds = 0.0
        self._depth = 0
        self._started = 0.0
        self._sync = sync
        self._handles = []
        for module in modules:
            self._handles.append(module.register_forward_pre_hook(self._enter))
            self._handles.append(module.register_forward_hook(self._leave))

    def _enter(self, *_: Any) -> None:
        if self._depth == 0:
            self._sync()
            self._started = time.perf_counter()
        self._depth += 1

    def _leave(self, *_: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._sync()
            self.seconds += time.perf_counter() - self._started

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def run(size: int, target: int, tile: int, strength: float, steps: int, device: str,
        home: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from backend.models.device import pick_device, pick_dtype
    from backend.models.store import ModelStore
    from backend.pipelines.assets import AssetGenerator
    from backend.pipelines.generator import DiffusionGenerator
    from backend.limits import ServerLimits
    from protocol.client import make_upload
    from protocol.frames import PixelFormat
    from protocol.messages import GenerateRequest, UpscaleSettings

    chosen = pick_device(device)
    store = ModelStore(chosen, pick_dtype(chosen, "auto"), home, search_dirs=[],
                       hf_cache=home / "no-hf-cache")
    store.load("tiny")
    generator = AssetGenerator(DiffusionGenerator(store), store, ServerLimits())
    pipe = store.current.pipe
    cuda = chosen.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def job(side: int, out: int):
        y, x = np.mgrid[0:side, 0:side].astype(np.float32)
        base = 128 + 100 * np.sin(x / 17.0) * np.cos(y / 23.0)
        rgba = np.clip(np.stack([base, 255 - base, base / 2, np.full_like(base, 255)], 2), 0, 255)
        up = make_upload(PixelFormat.RGBA8, side, side, rgba.astype(np.uint8).tobytes())
        request = GenerateRequest(kind="upscale", init_image=up.id, prompt="mossy stone wall",
                                  steps=steps, seed=1, scheduler="euler", width=out, height=out,
                                  upscale=UpscaleSettings(refine_strength=strength, tile=tile))
        return request, {up.id: up}

    # Warm-up: a small job, so first-call costs and the model's own memory are not counted.
    small, small_uploads = job(128, 256)
    generator.generate(small, small_uploads, lambda *_: None, lambda: False)
    request, uploads = job(size, target)
    timer = _ModuleTimer([pipe.unet, pipe.vae.encoder, pipe.vae.decoder, pipe.vae.quant_conv,
                          pipe.vae.post_quant_conv], sync)
    ticks: list[tuple[int, int]] = []
    rss_before = _rss_peak_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    output = generator.generate(request, uploads, lambda d, t, _p: ticks.append((d, t)),
                                lambda: False)
    sync()
    seconds = time.perf_counter() - started
    timer.close()
    report: dict[str, Any] = {
        "size": size, "target": target, "tile": tile, "strength": strength, "steps": steps,
        "device": chosen, "torch_threads": torch.get_num_threads(),
        "tile_steps": ticks[-1][1] if ticks else 0,
        "seconds": round(seconds, 2), "model_seconds": round(timer.seconds, 2),
        "outside_model_share": round(1 - timer.seconds / seconds, 3),
        "output": [output.images[0].pixels.width, output.images[0].pixels.height],
        "peak_rss_growth_mib": round((_rss_peak_bytes() - rss_before) / 2 ** 20, 1),
        "peak_rss_mib": round(_rss_peak_bytes() / 2 ** 20, 1),
        "output_rgba_mib": round(target * target * 4 / 2 ** 20, 1),
    }
    if cuda:
        report["peak_gpu_mib_above_model"] = round(
            (torch.cuda.max_memory_allocated() - allocated_before) / 2 ** 20, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="input side (pixels)")
    parser.add_argument("--target", type=int, default=4096, help="output side (pixels)")
    parser.add_argument("--tile", type=int, default=512, help="refine tile side (pixels)")
    parser.add_argument("--strength", type=float, default=0.35)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "atelier-bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run(args.size, args.target, args.tile, args.strength, args.steps, args.device,
                 args.home)
    for key, value in report.items():
        print(f"{key:>28}: {value}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
