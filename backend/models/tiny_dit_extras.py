"""Tiny random Flux ControlNets and Flux/SD3 LoRAs for the built-in tiny transformer
models, written as safetensors in the layouts users' files have:

- a Flux ControlNet in diffusers' names (as InstantX and Shakker-Labs ship theirs), shaped
  from the tiny Flux transformer's config, one double and one single block, optionally a
  union one (``num_mode``); an SD3 one (InstantX's shape) from the tiny SD3's;
- LoRAs of the transformer's attention projections in diffusers/peft names
  (``transformer.<module>.lora_A.weight``: tiny_dit_files.build_tiny_transformer_lora), or for Flux
  in kohya's names for Black Forest Labs' modules (``lora_unet_double_blocks_0_img_attn_qkv``,
  ``lora_unet_single_blocks_0_linear2``: what ComfyUI users' Flux LoRAs hold, and what
  diffusers' Flux converter reads).

Zero-initialised parts (a ControlNet's output blocks, peft's B matrices) get random weights
large enough to change a picture. Deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal, Optional

import torch
from diffusers import (FluxControlNetModel, FluxTransformer2DModel, SD3ControlNetModel,
                       SD3Transformer2DModel)
from safetensors.torch import save_file

from .dit_controlnets import SD3_SHARED_CONFIG, SHARED_CONFIG
from .tiny import SEED
from .families import FLUX, SD3
from .tiny_dit_files import build_tiny_transformer_lora
from .tiny_extras import RANK

DiTLoraLayout = Literal["diffusers", "kohya"]


def _save(dest: Path, tensors: dict[str, torch.Tensor]) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest))
    return dest


def build_tiny_flux_controlnet(dest: Path, flux_folder: Path, seed: int = SEED + 60,
                               num_mode: Optional[int] = None) -> Path:
    """Write a Flux ControlNet for the tiny Flux model in ``flux_folder`` to the file
    ``dest`` (``num_mode``: a union ControlNet of that many modes)."""
    config = FluxTransformer2DModel.load_config(str(Path(flux_folder) / "transformer"))
    torch.manual_seed(seed)
    controlnet = FluxControlNetModel(**{k: config[k] for k in SHARED_CONFIG}, num_layers=1,
                                     num_single_layers=1, num_mode=num_mode)
    return _save(dest, _randomised(controlnet, seed))


def build_tiny_sd3_controlnet(dest: Path, sd3_folder: Path, seed: int = SEED + 65) -> Path:
    """Write an SD3 ControlNet (InstantX's shape: its own position embedding) for the tiny
    SD3 model in ``sd3_folder`` to the file ``dest``."""
    config = SD3Transformer2DModel.load_config(str(Path(sd3_folder) / "transformer"))
    torch.manual_seed(seed)
    controlnet = SD3ControlNetModel(**{k: config[k] for k in SD3_SHARED_CONFIG}, num_layers=1)
    return _save(dest, _randomised(controlnet, seed))


def build_tiny_sd3_two_blocks(dest: Path, sd3_folder: Path, seed: int = SEED + 66) -> Path:
    """The tiny SD3 pipeline in ``sd3_folder`` copied to ``dest`` with a transformer of two
    joint blocks: SD3's last block takes no ControlNet residual, so a one-block transformer
    would ignore a ControlNet."""
    dest = Path(dest)
    if not (dest / "model_index.json").is_file():
        shutil.copytree(sd3_folder, dest, ignore=shutil.ignore_patterns("transformer"))
        config = SD3Transformer2DModel.load_config(str(Path(sd3_folder) / "transformer"))
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel.from_config({**config, "num_layers": 2})
        transformer.save_pretrained(str(dest / "transformer"), safe_serialization=True)
    return dest


def _randomised(controlnet: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The ControlNet's tensors, its zero-initialised input and output projections random."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_blocks", "controlnet_single_blocks",
                                "controlnet_x_embedder", "pos_embed_input")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return controlnet.state_dict()


def build_tiny_dit_lora(dest: Path, model_folder: Path, layout: DiTLoraLayout = "diffusers",
                        seed: int = SEED + 70) -> Path:
    """Write a LoRA of the attention projections of the tiny Flux or SD3 transformer in
    ``model_folder`` to the file ``dest`` (``kohya``: Flux only)."""
    folder = Path(model_folder) / "transformer"
    flux = FluxTransformer2DModel.load_config(str(folder))["_class_name"] == \
        FluxTransformer2DModel.__name__
    cls = FluxTransformer2DModel if flux else SD3Transformer2DModel
    if layout == "diffusers":
        return build_tiny_transformer_lora(Path(model_folder), FLUX if flux else SD3, Path(dest),
                                           seed)
    if not flux:
        raise ValueError("kohya-named LoRAs are built for Flux only")
    return _save(dest, _kohya_flux(cls.from_pretrained(str(folder)), seed))


def _kohya_flux(transformer: FluxTransformer2DModel, seed: int) -> dict[str, torch.Tensor]:
    """Black Forest Labs' modules of the tiny Flux transformer in kohya's LoRA names: the
    double block's fused image qkv and its projections, the single block's output."""
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    single_in = transformer.single_transformer_blocks[0].proj_out.in_features
    modules = {"double_blocks_0_img_attn_qkv": (inner, 3 * inner),
               "double_blocks_0_img_attn_proj": (inner, inner),
               "double_blocks_0_txt_attn_proj": (inner, inner),
               "single_blocks_0_linear2": (single_in, inner)}
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    random = lambda *shape: torch.randn(shape, generator=generator) * 0.5   # noqa: E731
    for module, (width_in, width_out) in modules.items():
        name = f"lora_unet_{module}"
        tensors[f"{name}.lora_down.weight"] = random(RANK, width_in)
        tensors[f"{name}.lora_up.weight"] = random(width_out, RANK)
        tensors[f"{name}.alpha"] = torch.tensor(float(RANK))
    return tensors
