"""What reference images (IP-Adapter) cost a denoising step (issue 14).

Two figures, as benchmarks/controls.py gives them for controls:

- **Tiny model, wall time and FLOPs** (this machine, CPU): s/step of a 64x64 txt2img job
  on the tiny SD1.5 model with 0, 1, 2 and 4 references (the tiny IP-Adapter and image
  encoder, tiny_references.py), each relative to the plain job; a step's time is the time
  between two step ends (the image encoding, once per job, drops out), median and fastest
  over ``--repeat`` jobs of 8 steps, rows round-robin; and the FLOPs of one step
  (``count_flops``).
- **Full-size architectures, FLOPs per step** (the GPU benchmark's terms): the SD1.5
  (512x512) and SDXL (1024x1024) UNets built from ``backend/models/configs`` on the meta
  device, batch 2 (classifier-free guidance), counted plain and with one reference of a
  plain IP-Adapter (4 image tokens) and of a "plus" one (16 tokens) in every
  cross-attention layer, through the daemon's own ``reference_attention``; and the CLIP
  image encoder's pass (ViT-H/14 at 224 px, ViT-bigG/14 for SDXL's ip-adapter_sdxl), once
  per reference and job.

    python -m benchmarks.references [--repeat 5] [--json out/references.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.ip_adapter import IPAdapterMixin
from diffusers.models.embeddings import ImageProjection
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from backend.models.ip_adapters import AdapterFile, LoadedAdapter, cross_attention_processors
from backend.models.sources import ensure_tiny
from backend.models.store import ModelStore
from backend.models.tiny_references import build_tiny_image_encoder, build_tiny_ip_adapter
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.references import ReferenceSetup, reference_attention
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import ReferenceImage

from .controls import FULL_SIZE, _count
from .hardware import txt2img_step_costs
from .random_models import config_folder

SIDE = 64
COUNTS = (0, 1, 2, 4)
# CLIP vision towers: (hidden, layers, projection); 16 heads, patch 14, 224 px
ENCODERS = {"ViT-H/14": (1280, 32, 1024), "ViT-bigG/14": (1664, 48, 1280)}


# ------------------------------------------------------------------ tiny model

def _picture(seed: int) -> ImageFrame:
    rgba = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, SIDE, SIDE, new_id(), rgba.tobytes())


def tiny_step_costs(home: Path, repeat: int, steps: int = 8) -> dict[str, dict]:
    models = home / "reference-models"
    build_tiny_ip_adapter(models / "ipadapter" / "tiny-ip-adapter_sd15.safetensors",
                          ensure_tiny("tiny", home / "models"))
    build_tiny_image_encoder(models / "clip_vision" / "tiny-clip-vision.safetensors", single_file=True)
    store = ModelStore("cpu", torch.float32, home, search_dirs=[models], hf_cache=home / "no-hf-cache")
    store.load("tiny")
    generator = DiffusionGenerator(store)
    pictures = [_picture(seed) for seed in range(max(COUNTS))]
    uploads = {p.id: p for p in pictures}
    rows = {f"{n} reference{'s' if n != 1 else ''}":
            {"references": [ReferenceImage(image=p.id) for p in pictures[:n]]} for n in COUNTS}
    return txt2img_step_costs(generator, uploads, rows, "0 references", repeat, steps, SIDE)


# ------------------------------------------------------------------ full size, FLOPs

def _meta_adapter(unet: nn.Module, tokens: int, embed_width: int) -> LoadedAdapter:
    """An adapter of the real shapes on the meta device (a plain projection of
    ``tokens`` tokens: the projection's own cost is per job and tiny)."""
    keys, values = {}, {}
    for name in cross_attention_processors(unet):
        to_k = unet.get_submodule(name[:-len(".processor")]).to_k
        keys[name] = nn.Linear(to_k.in_features, to_k.out_features, bias=False)
        values[name] = nn.Linear(to_k.in_features, to_k.out_features, bias=False)
    cross = unet.config.cross_attention_dim
    projection = ImageProjection(cross_attention_dim=cross, image_embed_dim=embed_width,
                                 num_image_text_embeds=tokens)
    file = AdapterFile("meta", Path("meta"), cross, len(keys), False, embed_width)
    return LoadedAdapter(file, projection, keys, values, tokens, encoder=None)  # type: ignore[arg-type]


def full_size_flops(family: str) -> dict[str, float]:
    side, tokens, width, xl = FULL_SIZE[family]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_folder(family) / "unet"))
        latents, text, t = torch.zeros(2, 4, side, side), torch.zeros(2, tokens, width), torch.tensor([500, 500])
        added = {"text_embeds": torch.zeros(2, 1280), "time_ids": torch.zeros(2, 6)} if xl else {}
        adapters = {n: _meta_adapter(unet, n, 1024) for n in (4, 16)}
        embeds = [torch.zeros(2, 1, 1024)]
    plain = _count(lambda: unet(latents, t, encoder_hidden_states=text,
                                added_cond_kwargs=added or None))
    holder = types.SimpleNamespace(unet=unet)
    pipe = types.SimpleNamespace(set_ip_adapter_scale=lambda s: IPAdapterMixin.set_ip_adapter_scale(holder, s))
    out = {"unet_tflop_per_step": plain / 1e12}
    for count, adapter in adapters.items():
        setup = ReferenceSetup(unet, (adapter,), (1.0,), tuple(embeds))
        with reference_attention(setup, pipe):  # type: ignore[arg-type]
            steered = _count(lambda: unet(latents, t, encoder_hidden_states=text,
                                          added_cond_kwargs={**added, "image_embeds": embeds}))
        out[f"{count}_tokens_relative"] = steered / plain
        out[f"{count}_tokens_gflop_per_step"] = (steered - plain) / 1e9
    return out


def encoder_flops() -> dict[str, float]:
    out = {}
    for name, (hidden, layers, projection) in ENCODERS.items():
        with torch.device("meta"):
            encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=hidden, intermediate_size=4 * hidden if hidden == 1280 else 8192,
                num_hidden_layers=layers, num_attention_heads=16, patch_size=14, image_size=224,
                projection_dim=projection))
            pixels = torch.zeros(1, 3, 224, 224)
        out[name] = _count(lambda: encoder(pixels)) / 1e12
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        tiny = tiny_step_costs(Path(scratch), args.repeat)
    print(f"tiny model, {SIDE}x{SIDE} txt2img on {torch.get_num_threads()} CPU threads "
          f"(median of {args.repeat}):")
    for row, f in tiny.items():
        print(f"  {row:13s} {f['s_per_step'] * 1000:7.1f} ms/step (best {f['best_s_per_step'] * 1000:.1f})"
              f"  x{f['relative']:.2f}   {f['flop_per_step'] / 1e9:6.3f} GFLOP/step  x{f['flop_relative']:.3f}")
    full = {family: full_size_flops(family) for family in FULL_SIZE}
    print("full-size architectures, batch 2 (guidance), one step, one reference:")
    for family, f in full.items():
        print(f"  {family}: UNet {f['unet_tflop_per_step']:.2f} TFLOP; plain adapter (4 tokens) "
              f"+{f['4_tokens_gflop_per_step']:.1f} GFLOP (x{f['4_tokens_relative']:.4f}), plus "
              f"(16 tokens) +{f['16_tokens_gflop_per_step']:.1f} GFLOP (x{f['16_tokens_relative']:.4f})")
    encoders = encoder_flops()
    print("image encoder, once per reference and job: " +
          ", ".join(f"{name} {tflop * 1000:.0f} GFLOP" for name, tflop in encoders.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"tiny": tiny, "full_size": full, "encoders_tflop": encoders},
                                        indent=2))


if __name__ == "__main__":
    main()
