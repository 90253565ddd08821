"""Chroma's and Z-Image's img2img and inpaint pipelines, taking init latents.

Atelier encodes a job's init image itself (pipelines/latents.py: mean latents, the VAE's
convolutions wrapped on a tiled axis) and hands the pipelines latents, as it does for Flux
and SD3. Flux's pipelines build their image processor knowing the 16 latent channels and
pass latents through; Chroma's and Z-Image's build theirs for pixels only and would resize
a latent as an image. These subclasses build it as Flux's do; Z-Image's inpaint pipeline
also takes the masked image's latents as given instead of VAE-encoding them again, and
Chroma's is spared a diffusers bug.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (ChromaImg2ImgPipeline, ChromaInpaintPipeline, ZImageImg2ImgPipeline,
                       ZImageInpaintPipeline)
from diffusers.image_processor import VaeImageProcessor


class _PassesLatents:
    """Keeps the image processor a pipeline's ``__init__`` sets, made to pass latents through
    (a property, so that the pipeline's own signature, which ``from_pipe`` reads, stays)."""

    @property
    def image_processor(self) -> VaeImageProcessor:
        return self._latent_processor

    @image_processor.setter
    def image_processor(self, processor: VaeImageProcessor) -> None:
        channels = self.vae.config.latent_channels
        settings = {k: v for k, v in processor.config.items() if not k.startswith("_")}
        self._latent_processor = VaeImageProcessor(**{**settings, "vae_latent_channels": channels})


class ChromaImg2ImgLatents(_PassesLatents, ChromaImg2ImgPipeline):
    pass


class ChromaInpaintLatents(_PassesLatents, ChromaInpaintPipeline):
    """diffusers 0.42.1's Chroma inpaint pipeline (copied from Flux's) reads
    ``guidance_embeds`` from the transformer's config, which Chroma's lacks: every call
    failed with AttributeError. Chroma has no guidance embedding, so the config is told so
    (once, on the shared transformer: nothing else reads the key) before the call."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "guidance_embeds" not in self.transformer.config:
            self.transformer.register_to_config(guidance_embeds=False)
        return super().__call__(*args, **kwargs)


class ZImageImg2ImgLatents(_PassesLatents, ZImageImg2ImgPipeline):
    pass


class ZImageInpaintLatents(_PassesLatents, ZImageInpaintPipeline):
    """Z-Image's inpainting (the denoised latents blended with the noised init at every
    step) on init latents: the parent VAE-encodes the masked image whatever it is given."""

    def prepare_mask_latents(self, mask: torch.Tensor, masked_image: torch.Tensor,
                             batch_size: int, height: int, width: int, dtype: torch.dtype,
                             device: torch.device,
                             generator: object) -> tuple[torch.Tensor, torch.Tensor]:
        if masked_image.shape[1] != self.vae.config.latent_channels:
            return super().prepare_mask_latents(mask, masked_image, batch_size, height, width,
                                                dtype, device, generator)
        # Latents already (pipelines/latents.py, in the transformer's scale): the mask at
        # their size, both repeated to the batch, as the parent does after its encode.
        latents = masked_image.to(device=device, dtype=dtype)
        mask = torch.nn.functional.interpolate(mask, size=latents.shape[-2:], mode="nearest")
        mask = mask.to(device=device, dtype=dtype)
        return (mask.repeat(batch_size // mask.shape[0], 1, 1, 1),
                latents.repeat(batch_size // latents.shape[0], 1, 1, 1))
