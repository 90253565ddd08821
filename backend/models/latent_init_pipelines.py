"""Chroma's and Z-Image's img2img and inpaint pipelines, taking init latents.

Atelier encodes a job's init image itself (pipelines/latents.py: mean latents, the VAE's
convolutions wrapped on a tiled axis) and hands the pipelines latents, as it does for Flux
and SD3. Flux's pipelines build their image processor knowing the 16 latent channels and
pass latents through; Chroma's and Z-Image's build theirs for pixels only and would resize
a latent as an image. These subclasses build it as Flux's do; nothing else changes.
"""

from __future__ import annotations

from diffusers import ChromaImg2ImgPipeline, ZImageImg2ImgPipeline
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
    """Also serves Chroma's inpaint jobs as masked img2img (pipelines/dit.py): diffusers
    0.42.1's ChromaInpaintPipeline reads ``guidance_embeds`` from the transformer's config,
    which Chroma's has not (AttributeError at every call)."""


class ZImageImg2ImgLatents(_PassesLatents, ZImageImg2ImgPipeline):
    """Also serves Z-Image's inpaint jobs as masked img2img (pipelines/dit.py): Z-Image's
    inpaint pipeline VAE-encodes the init image itself, which init latents cannot pass."""
