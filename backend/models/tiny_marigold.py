"""Tiny random-weight Marigold pipelines (normals, depth, intrinsics/appearance) for tests,
written as diffusers folders with safetensors weights into a Hugging Face cache layout
(``models--prs-eth--NAME/snapshots/<rev>/`` and ``refs/main``), so the daemon finds them
exactly as it finds pulled ones. They draw noise: the shapes, the loading and the map
conventions are what they test, not the pictures."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (DDIMScheduler, MarigoldDepthPipeline, MarigoldIntrinsicsPipeline,
                       MarigoldNormalsPipeline, UNet2DConditionModel)
from transformers import CLIPTextModel

from .tiny import (SEED, TEXT_HIDDEN, UNET_CHANNELS, VAE_SCALING, _text_config, _vae,
                   _write_tokenizer)

REVISION = "0" * 40
PROCESSING_RESOLUTION = 64
# The appearance model's targets as prs-eth/marigold-iid-appearance-v1-1 declares them.
APPEARANCE_TARGETS = {
    "target_names": ["albedo", "material"],
    "albedo": {"prediction_space": "srgb"},
    "material": {"sub_target_names": ["roughness", "metallicity", None]},
    "roughness": {"prediction_space": "linear"},
    "metallicity": {"prediction_space": "linear"},
}


def _unet(targets: int) -> UNet2DConditionModel:
    """Marigold's UNet: the image latent and the targets' latents in, the targets' out."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=4 + 4 * targets, out_channels=4 * targets,
        block_out_channels=UNET_CHANNELS, layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=32)


def build_tiny_marigold(repo_id: str, hf_cache: Path) -> Path:
    """Write a tiny pipeline for ``repo_id`` (a Marigold normals, depth or iid-appearance
    repo) into ``hf_cache``; returns its snapshot folder."""
    repo = hf_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    torch.manual_seed(SEED)
    tokenizer = _write_tokenizer(snapshot / "tokenizer")
    text_encoder = CLIPTextModel(_text_config(len(tokenizer), tokenizer.eos_token_id,
                                              tokenizer.bos_token_id))
    common = dict(vae=_vae(VAE_SCALING), text_encoder=text_encoder, tokenizer=tokenizer,
                  scheduler=DDIMScheduler(timestep_spacing="trailing", prediction_type="v_prediction"),
                  default_denoising_steps=1, default_processing_resolution=PROCESSING_RESOLUTION)
    if "normals" in repo_id:
        pipe = MarigoldNormalsPipeline(unet=_unet(1), prediction_type="normals", **common)
    elif "depth" in repo_id:
        pipe = MarigoldDepthPipeline(unet=_unet(1), prediction_type="depth", **common)
    else:
        pipe = MarigoldIntrinsicsPipeline(unet=_unet(2), prediction_type="intrinsics",
                                          target_properties=APPEARANCE_TARGETS, **common)
    pipe.save_pretrained(snapshot, safe_serialization=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot
