"""A tiny random IP-Adapter and CLIP image encoder for the built-in tiny models, written
in the layouts users' files have, so tests load them through the same code as real ones:

- the encoder: a ``CLIPVisionModelWithProjection`` (width ``ENCODER_HIDDEN``, 32 px
  pictures), as a folder (config.json + model.safetensors: h94/IP-Adapter's
  ``models/image_encoder``) or as one ``.safetensors`` with transformers' tensor names
  (ComfyUI's ``models/clip_vision``);
- the adapter: one ``.safetensors`` in h94/IP-Adapter's keys (``ip_adapter.{2n+1}.to_k_ip``
  / ``to_v_ip`` for the n-th cross-attention layer of the tiny UNet), either the plain kind
  (``image_proj.proj``, ``image_proj.norm``: reads the encoder's projected image embedding)
  or the "plus" kind (a resampler, ``image_proj.latents``, ``proj_in``, ``layers.*``: reads
  the encoder's penultimate hidden states, ``PLUS_TOKENS`` tokens).

Random weights, large enough that a reference changes a picture. Deterministic: the
same arguments give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .tiny import SEED

ENCODER_HIDDEN = 32        # the tiny encoder's width (ip_adapters.ENCODER_HEADS knows it)
ENCODER_HEADS = 2
ENCODER_PROJECTION = 16    # its image embedding's width
ENCODER_SIDE = 32          # the pictures it reads
ADAPTER_TOKENS = 4         # image tokens a plain IP-Adapter adds
PLUS_TOKENS = 16           # ... and a plus one (its resampler's queries)
PLUS_WIDTH = 64            # the resampler's width: one attention head of 64, as the real ones
PLUS_DEPTH = 4             # its blocks (diffusers' converter builds four)


def tiny_encoder(seed: int = SEED + 30) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=ENCODER_HIDDEN, intermediate_size=37,
                              num_hidden_layers=2, num_attention_heads=ENCODER_HEADS,
                              image_size=ENCODER_SIDE, patch_size=8,
                              projection_dim=ENCODER_PROJECTION, hidden_act="gelu",
                              layer_norm_eps=1e-5)
    return CLIPVisionModelWithProjection(config).eval()


def build_tiny_image_encoder(dest: Path, single_file: bool = False) -> Path:
    """Write the tiny encoder to ``dest``: a folder, or with ``single_file`` one
    ``.safetensors`` file (no config)."""
    dest = Path(dest)
    encoder = tiny_encoder()
    if single_file:
        dest.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(dest))
    else:
        encoder.save_pretrained(str(dest), safe_serialization=True)
    return dest


def build_tiny_ip_adapter(dest: Path, model_folder: Path, seed: int = SEED + 31,
                          plus: bool = False) -> Path:
    """Write an IP-Adapter for the UNet of the tiny pipeline in ``model_folder`` (SD1.5- or
    SDXL-shaped) to the file ``dest``: plain, or with ``plus`` the resampler kind."""
    config = UNet2DConditionModel.load_config(str(Path(model_folder) / "unet"))
    unet = UNet2DConditionModel.from_config(config)
    cross = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std

    tensors = _resampler(cross, normal) if plus else {
        "image_proj.proj.weight": normal(ADAPTER_TOKENS * cross, ENCODER_PROJECTION, std=0.5),
        "image_proj.proj.bias": normal(ADAPTER_TOKENS * cross, std=0.5),
        "image_proj.norm.weight": 1.0 + normal(cross, std=0.1),
        "image_proj.norm.bias": normal(cross, std=0.1),
    }
    names = [n for n in unet.attn_processors if not n.endswith("attn1.processor")]
    for index, name in enumerate(names):
        attention = unet.get_submodule(name[:-len(".processor")])
        width = attention.to_k.weight.shape[0]
        for kind in ("k", "v"):
            tensors[f"ip_adapter.{2 * index + 1}.to_{kind}_ip.weight"] = normal(width, cross, std=0.5)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest))
    return dest


def _resampler(cross: int, normal) -> dict[str, torch.Tensor]:
    """A plus adapter's image projection in the original IP-Adapter's names (its
    ``Resampler``), which diffusers' converter maps onto ``IPAdapterPlusImageProjection``."""
    width, hidden = PLUS_WIDTH, 4 * PLUS_WIDTH
    tensors = {"image_proj.latents": normal(1, PLUS_TOKENS, width, std=1.0),
               "image_proj.proj_in.weight": normal(width, ENCODER_HIDDEN, std=0.3),
               "image_proj.proj_in.bias": normal(width, std=0.1),
               "image_proj.proj_out.weight": normal(cross, width, std=0.3),
               "image_proj.proj_out.bias": normal(cross, std=0.1),
               "image_proj.norm_out.weight": 1.0 + normal(cross, std=0.1),
               "image_proj.norm_out.bias": normal(cross, std=0.1)}
    for i in range(PLUS_DEPTH):
        block = f"image_proj.layers.{i}"
        for norm in (f"{block}.0.norm1", f"{block}.0.norm2", f"{block}.1.0"):
            tensors[f"{norm}.weight"] = 1.0 + normal(width, std=0.1)
            tensors[f"{norm}.bias"] = normal(width, std=0.1)
        tensors[f"{block}.0.to_q.weight"] = normal(width, width, std=0.1)
        tensors[f"{block}.0.to_kv.weight"] = normal(2 * width, width, std=0.1)
        tensors[f"{block}.0.to_out.weight"] = normal(width, width, std=0.1)
        tensors[f"{block}.1.1.weight"] = normal(hidden, width, std=0.1)
        tensors[f"{block}.1.3.weight"] = normal(width, hidden, std=0.1)
    return tensors
