"""Tiled refine: img2img over an image larger than the model, in overlapping tiles of the
model's size, blended so that no tile border shows (MultiDiffusion, as Ultimate SD Upscale
and tiled-diffusion extensions do it).

The whole image lives as one latent (1/64 of its pixels, 4 channels); only the networks
work in tiles:

1. encode: the VAE encodes each pixel tile; the tiles' latents blend into the whole latent
   with ``tiles.py``'s partition-of-unity weights.
2. denoise: noise for the whole latent comes from the job's seed, added at the strength's
   first timestep. At every sampler step the UNet predicts each tile (with the job's
   prompt, LoRAs and guidance), the predictions blend into one whole-latent prediction,
   and the sampler takes one step on the whole latent. Neighbouring tiles agree at every
   step, so nothing has to be hidden afterwards.
3. decode: the VAE decodes each latent tile; the pixel tiles blend into the output.

Memory is bounded by the tile: the networks never see more than one tile (with classifier-
free guidance, two), and besides them the image needs its latent, the prediction being
summed, and float RGB sums for one band of tiles while decoding (the finished rows go
straight to uint8).

Seamless: tiles on a wrapped axis wrap around the border (tiles.py), and where a single
tile spans a wrapped axis, the networks' convolutions wrap on it (tiling.py). The noise is
one field over the whole latent, so rolling the input by one tile stride rolls the output
by the same (with a sampler that draws no noise during sampling: ancestral ones draw
theirs over the whole latent, unrolled, so the output differs yet still wraps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from ..generation import JobCancelled, Pixels
from .latents import decode_pixels, encode_rgb
from .pixels import to_pixels
from .previews import LatentPalette, PreviewLayout, preview_due
from .schedulers import make_scheduler
from .tiles import Tile, TileGrid, blend_tiles
from .tiling import TileAxes, wrapped_convolutions


@dataclass(frozen=True)
class RefineSettings:
    """What the refine runs: the job's text and sampling settings, one seed."""
    prompt: str
    negative_prompt: str
    steps: int
    strength: float
    guidance: float
    scheduler: str
    seed: int
    tile: int                   # pixels, a multiple of 8
    overlap: int                # pixels, a multiple of 8, less than ``tile``
    axes: TileAxes
    preview_every: int = 0      # sampler steps between previews of the whole image
    scheduler_config: tuple[tuple[str, Any], ...] = ()   # over the model's (presets)

    def denoise_steps(self) -> int:
        return min(int(self.steps * self.strength), self.steps)


@dataclass(frozen=True)
class TileControl:
    """A ControlNet reading its control image tile by tile, at ``scale`` for the share
    ``start``..``end`` of the steps. ``image``: ``(H, W, 3)`` uint8 at the output size
    (8 bits, not float: at 8192 px a float copy would be 768 MiB)."""
    controlnet: Any
    image: np.ndarray
    scale: float
    start: float
    end: float
    to_tensor: Callable[[np.ndarray], torch.Tensor]   # a float32 tile -> (1, 3, h, w)

    def active(self, index: int, steps: int) -> bool:
        """Whether step ``index`` of ``steps`` is in its window (as diffusers keeps it)."""
        return not (index / steps < self.start or (index + 1) / steps > self.end)


# (tile-steps done, tile-steps in all, preview of the whole image at a step's end)
RefineProgress = Callable[[int, int, Optional[Pixels]], None]


def refine_grid(width: int, height: int, settings: RefineSettings, factor: int = 8) -> TileGrid:
    return TileGrid.over(width, height, settings.tile, settings.overlap, settings.axes.x,
                         settings.axes.y, multiple=factor)


def refine_tile_steps(width: int, height: int, settings: RefineSettings) -> int:
    """How many UNet tile evaluations the refine makes: its progress total."""
    return len(refine_grid(width, height, settings)) * settings.denoise_steps()


def tiled_refine(pipe: Any, family: str, rgb: np.ndarray, settings: RefineSettings,
                 model_scheduler_config: Mapping[str, Any], progress: RefineProgress,
                 cancelled: Callable[[], bool], progress_offset: int = 0,
                 progress_total: Optional[int] = None,
                 noise: Optional[torch.Tensor] = None,
                 controls: tuple[TileControl, ...] = ()) -> np.ndarray:
    """``rgb`` (uint8 ``(H, W, 3)``, sides multiples of 8) refined with ``pipe``'s UNet,
    VAE and text encoder(s). Raises JobCancelled within one tile of ``cancelled()``.
    ``noise``: the whole latent's starting noise, by default drawn from the seed.
    ``controls``: ControlNets conditioning every tile on its part of their images."""
    height, width = rgb.shape[:2]
    factor = pipe.vae_scale_factor
    grid = refine_grid(width, height, settings, factor)
    latent_grid = grid.scaled(factor)
    # A single tile spanning a wrapped axis wraps onto itself: its convolutions wrap there.
    self_wrap = TileAxes(x=settings.axes.x and len(grid.x.starts) == 1,
                         y=settings.axes.y and len(grid.y.starts) == 1)
    unet, vae = pipe.unet, pipe.vae
    device, dtype = pipe.device, unet.dtype
    total = progress_total if progress_total is not None else \
        len(grid) * settings.denoise_steps()
    nets = [control.controlnet for control in controls]
    with torch.no_grad(), wrapped_convolutions([unet, vae, *nets], self_wrap):
        latents = _encode_tiles(vae, rgb, grid, latent_grid, device, cancelled)
        conditioning = _Conditioning.of(pipe, settings, device)
        scheduler = make_scheduler(settings.scheduler, {**model_scheduler_config,
                                                        **dict(settings.scheduler_config)})
        scheduler.set_timesteps(settings.steps, device=device)
        start = settings.steps - settings.denoise_steps()
        timesteps = scheduler.timesteps[start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start * scheduler.order)
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        latents = scheduler.add_noise(latents, noise.to(device), timesteps[:1])
        tiles = list(latent_grid.tiles())
        pixel_tiles = list(grid.tiles()) if controls else []
        weights = [torch.from_numpy(t.weight).to(device, torch.float32) for t in tiles]
        layout = PreviewLayout((width // factor, height // factor))
        palette = LatentPalette.for_family(family)
        done = progress_offset
        for index, t in enumerate(timesteps):
            model_input = scheduler.scale_model_input(latents, t).to(dtype)
            prediction = torch.zeros_like(latents, dtype=torch.float32)
            active = [c for c in controls if c.active(index, len(timesteps))]
            for number, (tile, weight) in enumerate(zip(tiles, weights)):
                if cancelled():
                    raise JobCancelled()
                images = [c.to_tensor(pixel_tiles[number].take(c.image).astype(np.float32) / 255.0)
                          .to(device, dtype) for c in active]
                tile_prediction = conditioning.predict(unet, _take(model_input, tile), t,
                                                       list(zip(active, images)))
                _add(prediction, tile, tile_prediction.to(torch.float32) * weight)
                done += 1
                if tile is not tiles[-1]:
                    progress(done, total, None)
            latents = scheduler.step(prediction, t, latents, generator=generator,
                                     return_dict=False)[0]
            preview = None
            if preview_due(index + 1, settings.preview_every, len(timesteps)):
                preview = to_pixels(layout.render(latents, palette))
            progress(done, total, preview)
        return _decode_tiles(vae, latents.to(dtype), grid, latent_grid, cancelled)


@dataclass
class _Conditioning:
    """The prompt's embeddings (and SDXL's pooled embeddings and size ids), once per job."""
    embeds: torch.Tensor              # (2 or 1, tokens, width): [negative, positive] with CFG
    guidance: float
    added: Optional[dict[str, torch.Tensor]] = None

    @staticmethod
    def of(pipe: Any, settings: RefineSettings, device: torch.device) -> "_Conditioning":
        cfg = settings.guidance > 1.0
        encoded = pipe.encode_prompt(prompt=settings.prompt, device=device,
                                     num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                                     negative_prompt=settings.negative_prompt or None)
        if len(encoded) == 2:        # SD 1.x / 2.x: (positive, negative)
            positive, negative = encoded
            embeds = torch.cat([negative, positive]) if cfg else positive
            return _Conditioning(embeds, settings.guidance)
        positive, negative, pooled, negative_pooled = encoded    # SDXL
        side = settings.tile
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], device=device,
                                dtype=positive.dtype)
        if cfg:
            return _Conditioning(torch.cat([negative, positive]), settings.guidance,
                                 {"text_embeds": torch.cat([negative_pooled, pooled]),
                                  "time_ids": time_ids.repeat(2, 1)})
        return _Conditioning(positive, settings.guidance,
                             {"text_embeds": pooled, "time_ids": time_ids})

    def predict(self, unet: Any, latents: torch.Tensor, t: torch.Tensor,
                controls: list[tuple[TileControl, torch.Tensor]] = ()) -> torch.Tensor:
        cfg = self.embeds.shape[0] == 2
        batch = torch.cat([latents, latents]) if cfg else latents
        added = dict(added_cond_kwargs=self.added) if self.added is not None else {}
        residuals: dict[str, Any] = {}
        for control, image in controls:
            down, mid = control.controlnet(
                batch, t, encoder_hidden_states=self.embeds,
                controlnet_cond=torch.cat([image] * batch.shape[0]),
                conditioning_scale=control.scale, return_dict=False, **added)
            if residuals:     # several ControlNets add up, as MultiControlNetModel does
                down = [a + b for a, b in zip(residuals["down_block_additional_residuals"], down)]
                mid = residuals["mid_block_additional_residual"] + mid
            residuals = dict(down_block_additional_residuals=down,
                             mid_block_additional_residual=mid)
        out = unet(batch, t, encoder_hidden_states=self.embeds, return_dict=False, **added,
                   **residuals)[0]
        if not cfg:
            return out
        negative, positive = out.chunk(2)
        return negative + self.guidance * (positive - negative)


def _take(latents: torch.Tensor, tile: Tile) -> torch.Tensor:
    """A tile of ``(B, C, h, w)`` latents (wrapped indices where the tile crosses a border)."""
    if tile.contiguous:
        return latents[..., tile.rows[0]:tile.rows[-1] + 1, tile.cols[0]:tile.cols[-1] + 1]
    rows = torch.from_numpy(tile.rows).to(latents.device)
    cols = torch.from_numpy(tile.cols).to(latents.device)
    return latents.index_select(-2, rows).index_select(-1, cols)


def _add(total: torch.Tensor, tile: Tile, values: torch.Tensor) -> None:
    if tile.contiguous:
        total[..., tile.rows[0]:tile.rows[-1] + 1, tile.cols[0]:tile.cols[-1] + 1] += values
        return
    rows = torch.from_numpy(tile.rows).to(total.device)
    cols = torch.from_numpy(tile.cols).to(total.device)
    total[..., rows[:, None], cols[None, :]] += values


def _encode_tiles(vae: Any, rgb: np.ndarray, grid: TileGrid, latent_grid: TileGrid,
                  device: torch.device, cancelled: Callable[[], bool]) -> torch.Tensor:
    """The whole image's latent, encoded tile by tile (distribution mean, no random draw)."""
    channels = vae.config.latent_channels
    total = torch.zeros((1, channels, latent_grid.y.size, latent_grid.x.size), dtype=torch.float32,
                        device=device)
    for pixel_tile, latent_tile in zip(grid.tiles(), latent_grid.tiles()):
        if cancelled():
            raise JobCancelled()
        encoded = encode_rgb(vae, np.ascontiguousarray(pixel_tile.take(rgb)), device)
        weight = torch.from_numpy(latent_tile.weight).to(device)
        _add(total, latent_tile, encoded.to(torch.float32) * weight)
    return total


def _decode_tiles(vae: Any, latents: torch.Tensor, grid: TileGrid, latent_grid: TileGrid,
                  cancelled: Callable[[], bool]) -> np.ndarray:
    """The image of ``latents``, decoded tile by tile and blended in pixels (float sums
    for one band of tiles at a time: tiles.blend_tiles)."""
    latent_tiles = list(latent_grid.tiles())

    def render(index: int, _pixel_tile: Tile) -> np.ndarray:
        if cancelled():
            raise JobCancelled()
        decoded = decode_pixels(vae, _take(latents, latent_tiles[index]))
        unit = (decoded[0].to(torch.float32) / 2 + 0.5).clamp(0, 1) * 255.0
        return unit.permute(1, 2, 0).cpu().numpy()

    return blend_tiles(grid, 3, render)
