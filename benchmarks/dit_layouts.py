"""Load time and peak memory of the tiny Flux and SD3 models in each layout users keep
them in (issue 18): the diffusers folder, ComfyUI's split files (transformer in diffusers'
names or, for Flux, Black Forest Labs' original ones, with text encoders and VAE beside
it), and for Flux a Q8_0 GGUF transformer, a whole checkpoint and fp8 files. Each load
runs in a fresh process: its figures are the seconds ``ModelStore.load`` takes and how far
it raises the process's peak resident memory (VmHWM), then one 64x64 4-step txt2img job's
seconds and peak.

    python -m benchmarks.dit_layouts [--json out/dit_layouts.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
# (tiny model, layout, name the store loads relative to the models folder)
LAYOUTS = [("tiny-flux", "diffusers folder", "tiny-flux"),
           ("tiny-flux", "split, diffusers names", "unet/flux.safetensors"),
           ("tiny-flux", "split, original names", "diffusion_models/flux-bfl.safetensors"),
           ("tiny-flux", "split, GGUF Q8_0", "unet/flux-Q8_0.gguf"),
           ("tiny-flux", "whole checkpoint", "checkpoints/flux-all-in-one.safetensors"),
           ("tiny-flux", "split, fp8 (transformer, T5)", "unet/flux-fp8.safetensors"),
           ("tiny-sd3", "diffusers folder", "tiny-sd3"),
           ("tiny-sd3", "split, diffusers names", "diffusion_models/sd3.safetensors"),
           ("tiny-chroma", "diffusers folder", "tiny-chroma"),
           ("tiny-chroma", "split, original names", "diffusion_models/chroma.safetensors"),
           ("tiny-chroma", "split, GGUF Q8_0", "unet/chroma-Q8_0.gguf"),
           ("tiny-zimage", "diffusers folder", "tiny-zimage"),
           ("tiny-zimage", "split, original names", "diffusion_models/zimage.safetensors"),
           ("tiny-zimage", "split, GGUF Q8_0", "unet/zimage-Q8_0.gguf")]
FOLDERS = {"tiny-sd3": "sd3", "tiny-chroma": "chroma", "tiny-zimage": "zimage"}  # else flux(-fp8)

_CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
from backend.models.store import ModelStore
from backend.pipelines.generator import DiffusionGenerator
from protocol.messages import GenerateRequest

def peak_kb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

home, models, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
store = ModelStore("cpu", torch.float32, home, search_dirs=[models], hf_cache=home / "none")
before = peak_kb()
started = time.perf_counter()
store.load(name)
load_s = time.perf_counter() - started
after_load = peak_kb()
job = GenerateRequest(prompt="a stone wall", width=64, height=64, steps=4, guidance=3.5, seed=1)
started = time.perf_counter()
DiffusionGenerator(store).generate(job, {}, lambda *_: None, lambda: False)
print(json.dumps({"load_s": load_s, "load_peak_mb": (after_load - before) / 1024,
                  "job_s": time.perf_counter() - started,
                  "job_peak_mb": (peak_kb() - before) / 1024}))
"""


def build_files(home: Path, models: Path) -> None:
    """The tiny models' split files and GGUF in ``models/flux``, ``models/sd3``,
    ``models/chroma`` and ``models/zimage``: one ComfyUI models folder per family, since
    their tiny text encoders share file names."""
    from backend.models import families
    from backend.models.sources import ensure_tiny
    import torch
    from safetensors.torch import load_file, save_file

    from backend.models.tiny_dit_files import (export_checkpoint, export_gguf, export_parts,
                                              export_transformer)

    flux = ensure_tiny("tiny-flux", home / "models")
    sd3 = ensure_tiny("tiny-sd3", home / "models")
    export_transformer(flux, families.FLUX, models / "flux" / "unet" / "flux.safetensors")
    export_transformer(flux, families.FLUX, models / "flux" / "diffusion_models" / "flux-bfl.safetensors",
                       "original")
    export_gguf(flux, families.FLUX, models / "flux" / "unet" / "flux-Q8_0.gguf")
    export_checkpoint(flux, families.FLUX, models / "flux" / "checkpoints" / "flux-all-in-one.safetensors")
    export_parts(flux, families.FLUX, models / "flux")
    # fp8 files with their own T5 in a models folder of their own
    fp8 = models / "flux-fp8"
    export_transformer(flux, families.FLUX, fp8 / "unet" / "flux-fp8.safetensors")
    export_parts(flux, families.FLUX, fp8)
    for file in (fp8 / "unet" / "flux-fp8.safetensors", fp8 / "text_encoders" / "t5xxl.safetensors"):
        save_file({k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v
                   for k, v in load_file(str(file)).items()}, str(file))
    export_transformer(sd3, families.SD3, models / "sd3" / "diffusion_models" / "sd3.safetensors")
    export_parts(sd3, families.SD3, models / "sd3")
    for tiny, family, folder in (("tiny-chroma", families.CHROMA, "chroma"),
                                 ("tiny-zimage", families.ZIMAGE, "zimage")):
        source = ensure_tiny(tiny, home / "models")
        export_transformer(source, family, models / folder / "diffusion_models" /
                           f"{folder}.safetensors", "original")
        export_gguf(source, family, models / folder / "unet" / f"{folder}-Q8_0.gguf")
        export_parts(source, family, models / folder)


def measure(home: Path, models: Path) -> list[dict]:
    rows = []
    for tiny, layout, name in LAYOUTS:
        folder = models / FOLDERS.get(tiny, "flux-fp8" if "fp8" in layout else "flux")
        out = subprocess.run([sys.executable, "-c", _CHILD, str(home), str(folder), name],
                             cwd=REPO, capture_output=True, text=True, check=True)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"model": tiny, "layout": layout, **figures})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="atelier-dit-layouts-") as scratch:
        home, models = Path(scratch) / "home", Path(scratch) / "models"
        build_files(home, models)
        rows = measure(home, models)
    for row in rows:
        print(f"  {row['model']:11s} {row['layout']:30s} load {row['load_s']:.2f} s "
              f"(+{row['load_peak_mb']:.0f} MB peak)  job {row['job_s']:.2f} s "
              f"(+{row['job_peak_mb']:.0f} MB peak)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
