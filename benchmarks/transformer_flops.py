"""What a denoising step of each full-size diffusion-transformer family costs (issue 18),
in the GPU benchmark's terms (``benchmarks/generation.py``): TFLOP per step at 1024x1024.

The transformers of FLUX.1-dev, FLUX.1-schnell, SD3 medium, SD3.5 medium and SD3.5 large
are built from their published configs (the ones shipped in backend/models/configs for
single-file loading), Chroma1-HD's and Z-Image-Turbo's from diffusers' defaults for their
classes (which are those models' published configs), on the meta device (shapes only, no
weights, nothing downloaded) and one forward is counted with ``torch.utils.flop_counter``,
attention on the math kernel so it decomposes into counted matmuls. Batch 1 for Flux and
Z-Image-Turbo (guidance distilled into the model: one pass per step), batch 2 for SD3 and
Chroma (classifier-free guidance). Text tokens: Flux and Chroma 512 (T5), SD3 77 + 256
(CLIP, T5), Z-Image 128 (its pipeline drops the padding of the Qwen3 prompt: a prompt of a
few lines with the chat template). Parameter counts come with them: bf16 weights need 2
bytes each, which is what a card must hold without quantizing.

    python -m benchmarks.transformer_flops [--side 1024] [--families flux1-dev ...]
        [--json out/transformer_flops.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import (ChromaTransformer2DModel, FluxTransformer2DModel, SD3Transformer2DModel,
                       ZImageTransformer2DModel)
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from backend.models.single_file import CONFIGS

# name -> (config folder shipped for single files, classifier-free guidance batch, text tokens):
# the published configs are the ones the daemon loads ComfyUI's transformer files with.
_VARIANTS = {"flux1-dev": ("flux_dev", 1, 512), "flux1-schnell": ("flux_schnell", 1, 256),
             "sd3-medium": ("sd3_medium", 2, 333), "sd3.5-medium": ("sd35_medium", 2, 333),
             "sd3.5-large": ("sd35_large", 2, 333)}


def _family(folder: str, batch: int, tokens: int) -> tuple[type, dict[str, Any], int, int]:
    config = json.loads((CONFIGS / folder / "transformer" / "config.json").read_text("utf-8"))
    cls = FluxTransformer2DModel if config["_class_name"] == "FluxTransformer2DModel" else \
        SD3Transformer2DModel
    return cls, {k: v for k, v in config.items() if not k.startswith("_")}, batch, tokens


# name -> (transformer class, config, classifier-free guidance batch, text tokens)
FAMILIES: dict[str, tuple[type, dict[str, Any], int, int]] = {
    **{name: _family(*variant) for name, variant in _VARIANTS.items()},
    "chroma1-hd": (ChromaTransformer2DModel, {}, 2, 512),
    "z-image-turbo": (ZImageTransformer2DModel, {}, 1, 128)}


def _step_inputs(name: str, model: torch.nn.Module, side: int) -> dict[str, torch.Tensor]:
    _, _, batch, tokens = FAMILIES[name]
    config = model.config
    latent = side // 8
    t = torch.full((batch,), 0.5)
    if isinstance(model, ZImageTransformer2DModel):     # one (C, frames, h, w) latent per image
        return dict(x=[torch.zeros(config["in_channels"], 1, latent, latent)] * batch, t=t,
                    cap_feats=[torch.zeros(tokens, config["cap_feat_dim"])] * batch)
    text = torch.zeros(batch, tokens, config["joint_attention_dim"])
    if isinstance(model, ChromaTransformer2DModel):     # Flux's inputs less CLIP and guidance
        image_tokens = (latent // 2) ** 2
        return dict(hidden_states=torch.zeros(batch, image_tokens, config["in_channels"]),
                    encoder_hidden_states=text, timestep=t, img_ids=torch.zeros(image_tokens, 3),
                    txt_ids=torch.zeros(tokens, 3))
    pooled = torch.zeros(batch, config["pooled_projection_dim"])
    if isinstance(model, FluxTransformer2DModel):
        image_tokens = (latent // 2) ** 2
        extra = {"guidance": torch.full((batch,), 3.5)} if config["guidance_embeds"] else {}
        return dict(hidden_states=torch.zeros(batch, image_tokens, config["in_channels"]),
                    encoder_hidden_states=text, pooled_projections=pooled, timestep=t,
                    img_ids=torch.zeros(image_tokens, 3), txt_ids=torch.zeros(tokens, 3), **extra)
    return dict(hidden_states=torch.zeros(batch, config["in_channels"], latent, latent),
                encoder_hidden_states=text, pooled_projections=pooled, timestep=t * 1000)


def step_cost(name: str, side: int = 1024) -> dict[str, float]:
    """TFLOP of one denoising step of ``name`` at ``side`` x ``side``, and its parameters."""
    cls, config, batch, _ = FAMILIES[name]
    with torch.device("meta"):
        model = cls(**config)
        inputs = _step_inputs(name, model, side)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return {"tflop_per_step": counter.get_total_flops() / 1e12, "batch": batch,
            "params_billion": params / 1e9, "bf16_weights_gb": params * 2 / 1e9}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    costs = {name: step_cost(name, args.side) for name in args.families}
    print(f"full-size transformers, one denoising step at {args.side}x{args.side}:")
    for name, c in costs.items():
        print(f"  {name:14s} {c['tflop_per_step']:7.1f} TFLOP (batch {c['batch']})  "
              f"{c['params_billion']:5.2f} B parameters, {c['bf16_weights_gb']:5.1f} GB in bf16")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"side": args.side, "families": costs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
