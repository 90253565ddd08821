"""The VAE at the edges of a job: pixels -> latents before sampling, latents -> pixels after.

The pipelines run with ``output_type="latent"`` and receive init images as latents, so
encoding and decoding happen here, once per job, under our control: a cancelled job
skips the decode, and encoding takes the latent distribution's mean (no random draw), so
every batch item gets the same init latents and only the noise depends on the seed.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from diffusers import AutoencoderKL

from .pixels import rgb_to_tensor, tensor_to_rgb


def encode_rgb(vae: AutoencoderKL, rgb: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, C, H/f, W/f)`` latents in the UNet's (or transformer's)
    scale, VAE dtype."""
    with torch.no_grad(), _full_precision(vae) as dtype:
        pixels = rgb_to_tensor(rgb).to(device=device, dtype=dtype)
        latents = vae.encode(pixels).latent_dist.mode()
        latents = _to_unet_scale(vae, latents)
    return latents.to(vae.dtype)


def decode_rgb(vae: AutoencoderKL, latents: torch.Tensor) -> np.ndarray:
    """``(B, C, h, w)`` latents -> ``(B, h*f, w*f, 3)`` uint8."""
    return tensor_to_rgb(decode_pixels(vae, latents))


def decode_pixels(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` latents -> ``(B, 3, h*f, w*f)`` in [-1, 1], unrounded (for blending)."""
    with torch.no_grad(), _full_precision(vae) as dtype:
        return vae.decode(_from_unet_scale(vae, latents.to(dtype)), return_dict=False)[0]


def _stats(vae: AutoencoderKL, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel latent mean and std, for VAEs whose config carries them."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None
    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean).view(shape).to(latents), torch.tensor(std).view(shape).to(latents))


def _shift(vae: AutoencoderKL) -> float:
    """The latent mean Flux's and SD3's VAEs subtract before scaling (None elsewhere)."""
    return getattr(vae.config, "shift_factor", None) or 0.0


def _to_unet_scale(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    stats = _stats(vae, latents)
    if stats is None:
        return (latents - _shift(vae)) * vae.config.scaling_factor
    mean, std = stats
    return (latents - mean) * vae.config.scaling_factor / std


def _from_unet_scale(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    stats = _stats(vae, latents)
    if stats is None:
        return latents / vae.config.scaling_factor + _shift(vae)
    mean, std = stats
    return latents * std / vae.config.scaling_factor + mean


@contextmanager
def _full_precision(vae: AutoencoderKL) -> Iterator[torch.dtype]:
    """SD and SDXL VAEs overflow in fp16 (their config says ``force_upcast``): run them in
    fp32 for the duration and put them back, as diffusers' own pipelines do."""
    original = vae.dtype
    upcast = original == torch.float16 and getattr(vae.config, "force_upcast", False)
    if not upcast:
        yield original
        return
    vae.to(dtype=torch.float32)
    try:
        yield torch.float32
    finally:
        vae.to(dtype=original)
