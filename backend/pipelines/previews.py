"""Cheap per-step previews: a linear map from the latent channels straight to RGB.

No VAE runs. The preview keeps latent resolution (the output size divided by the VAE's
scale factor, 1/8 for SD and SDXL); clients scale it up themselves, which keeps preview
frames 64 times smaller than the image. Only the first image of a batch is previewed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .masks import Box
from .pixels import resize

# Least-squares fits of the decoded RGB on the four latent channels, published for the SD
# and SDXL VAEs (rows: latent channels; columns: R, G, B; plus an offset per colour).
_SD15 = ((0.3512, 0.2297, 0.3227),
         (0.3250, 0.4974, 0.2350),
         (-0.2829, 0.1762, 0.2721),
         (-0.2120, -0.2616, -0.7177))
_SD15_BIAS = (0.0, 0.0, 0.0)
_SDXL = ((0.3651, 0.4232, 0.4341),
         (-0.2533, -0.0042, 0.1068),
         (0.1076, 0.1111, -0.0362),
         (-0.3165, -0.2492, -0.2188))
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)


@dataclass(frozen=True)
class LatentPalette:
    """How one model family's latent channels map to RGB in [-1, 1]."""
    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float]

    @staticmethod
    def for_family(family: str) -> "LatentPalette":
        if family.startswith("sdxl"):
            return LatentPalette(_SDXL, _SDXL_BIAS)
        return LatentPalette(_SD15, _SD15_BIAS)

    def to_rgb(self, latents: torch.Tensor) -> np.ndarray:
        """``(C, h, w)`` latents of one image -> ``(h, w, 3)`` uint8.

        A latent layout with another channel count than the table (no such family is
        loaded today) shows its first three channels, each stretched to 0..255."""
        latent = latents.detach().to(torch.float32).cpu()
        if latent.shape[0] == len(self.factors):
            factors = torch.tensor(self.factors, dtype=torch.float32)
            rgb = torch.einsum("chw,ck->hwk", latent, factors) + torch.tensor(self.bias)
            unit = (rgb / 2 + 0.5).clamp(0, 1)
        else:
            rgb = latent[:3].permute(1, 2, 0)
            low, high = rgb.amin(dim=(0, 1)), rgb.amax(dim=(0, 1))
            unit = (rgb - low) / (high - low).clamp_min(1e-6)
        return (unit * 255).round().to(torch.uint8).numpy()


def preview_due(step: int, every: int, total: int) -> bool:
    """Whether step ``step`` (1-based) of ``total`` gets a preview: every ``every`` steps,
    never at the last step (the result follows right away), never when ``every`` is 0."""
    return every > 0 and step % every == 0 and step < total


@dataclass(frozen=True)
class PreviewLayout:
    """Where a job's latents land in its preview.

    ``size`` is the preview's (width, height): the output size over the VAE scale factor.
    For an inpaint job the latents cover only the context region: they are resampled into
    ``region`` over ``background``, the init image at preview size, so every preview shows
    the whole picture."""
    size: tuple[int, int]
    background: Optional[np.ndarray] = None   # (h, w, 3) uint8
    region: Optional[Box] = None

    def render(self, latents: torch.Tensor, palette: LatentPalette) -> np.ndarray:
        """``(h, w, 3)`` uint8 preview of batch item 0 of ``(B, C, h, w)`` latents."""
        rgb = palette.to_rgb(latents[0])
        if self.background is None or self.region is None:
            return resize(rgb, *self.size)
        canvas = self.background.copy()
        canvas[self.region.slices()] = resize(rgb, self.region.width, self.region.height)
        return canvas


def scaled_box(box: Box, factor: float, width: int, height: int) -> Box:
    """``box`` scaled by ``factor``, at least one pixel, inside a ``width`` x ``height`` image."""
    x = min(width - 1, int(box.x * factor))
    y = min(height - 1, int(box.y * factor))
    right = min(width, max(x + 1, round(box.right * factor)))
    bottom = min(height, max(y + 1, round(box.bottom * factor)))
    return Box(x, y, right - x, bottom - y)
