"""Game-asset requests (kinds "upscale" and "texture_set") -> checked, resolved plans; pure
functions of the data, as ``plan.py`` is for generations.

Upscale: the output is ``width`` x ``height``, or the init image's size times
``upscale.scale`` rounded to multiples of 8, within the upscale limits
(``ServerLimits.max_upscale_side`` / ``max_upscale_pixels``, 8192 a side by default).
A refine runs ``steps`` x ``refine_strength`` sampler steps on tiles of ``upscale.tile``
pixels (0: the model's native side) overlapping by ``upscale.overlap`` (0: a quarter).

Texture set: the maps come at the init image's size, in the order asked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from protocol.errors import ErrorCode, ProtocolError
from protocol.families import DEFAULT_SAMPLING
from protocol.frames import ImageFrame
from protocol.messages import GenerateRequest, TextureSettings, UpscaleSettings
from protocol.schema import validate

from ..limits import ServerLimits
from .controls import PlannedControl, job_controls
from .lora_tags import settle_loras
from .pixels import frame_to_rgba, job_upload, resize
from .plan import SEED_RANGE, SIZE_MULTIPLE, ModelTraits, _check_numbers
from .presets import apply_preset, with_defaults
from .refine import RefineSettings
from .tiling import TileAxes, tile_axes

ASSET_KINDS = ("upscale", "texture_set")
MIN_TILE = 64


@dataclass(frozen=True)
class UpscalePlan:
    request: GenerateRequest            # as run: sizes and seed settled
    width: int
    height: int
    axes: TileAxes
    upscaler: Optional[str]
    refine: Optional[RefineSettings]    # None: upscale only
    init: np.ndarray = field(compare=False, repr=False)   # (H, W, 4) uint8
    # the refine's controls, their images at the output size
    controls: tuple[PlannedControl, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class TexturePlan:
    request: GenerateRequest
    maps: tuple[str, ...]
    axes: TileAxes
    init: np.ndarray = field(compare=False, repr=False)


def plan_upscale(job: GenerateRequest, uploads: Mapping[str, ImageFrame], limits: ServerLimits,
                 traits: ModelTraits, fresh_seed: int) -> UpscalePlan:
    """Check an "upscale" job and resolve it; ProtocolError naming the field and limit."""
    validate(job, "job")
    preset = apply_preset(settle_loras(job))
    job = with_defaults(preset.request, traits.steps, traits.guidance)
    settings = job.upscale or UpscaleSettings()
    _refuse_extras(job, controls_allowed=True)
    init = _init(job, uploads)
    width, height = job.width, job.height
    if settings.scale is not None:
        width = _scaled(init.shape[1], settings.scale)
        height = _scaled(init.shape[0], settings.scale)
    seed = job.seed if job.seed is not None else fresh_seed % SEED_RANGE
    settled = dataclasses.replace(job, width=width, height=height, seed=seed)
    _check_numbers(settled, limits)
    axes = tile_axes(job.tiling)
    refine, controls = None, ()
    if settings.refine_strength > 0:
        refine = _refine_settings(settled, settings, traits, axes, seed, preset.scheduler_config)
        if job.depth is not None or job.controls:
            controls = job_controls(settled, uploads, resize(init[..., :3], width, height))
    elif job.depth is not None or job.controls:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            "controls steer the refine, and upscale.refine_strength is 0",
                            "job.controls" if job.controls else "job.depth")
    return UpscalePlan(settled, width, height, axes, settings.upscaler, refine, init, controls)


def _scaled(side: int, scale: float) -> int:
    return max(SIZE_MULTIPLE, round(side * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def _refine_settings(job: GenerateRequest, settings: UpscaleSettings, traits: ModelTraits,
                     axes: TileAxes, seed: int,
                     scheduler_config: tuple[tuple[str, Any], ...]) -> RefineSettings:
    tile = settings.tile or traits.native_side
    if tile % SIZE_MULTIPLE or tile < MIN_TILE:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"upscale.tile must be a multiple of 8 of at least {MIN_TILE} "
                            f"pixels (or 0 for the model's native side), got {tile}",
                            "job.upscale.tile")
    overlap = settings.overlap or tile // 4 // SIZE_MULTIPLE * SIZE_MULTIPLE
    if overlap % SIZE_MULTIPLE or overlap > tile // 2:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"upscale.overlap must be a multiple of 8 of at most half the tile "
                            f"({tile // 2}), got {overlap}", "job.upscale.overlap")
    steps = min(int(job.steps * settings.refine_strength), job.steps)
    if steps < 1:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"refine_strength {settings.refine_strength} of {job.steps} steps runs "
                            f"no step; it must be at least {1 / job.steps:.4g}",
                            "job.upscale.refine_strength")
    return RefineSettings(prompt=job.prompt, negative_prompt=job.negative_prompt,
                          steps=job.steps, strength=settings.refine_strength,
                          guidance=job.guidance, scheduler=job.scheduler, seed=seed,
                          tile=tile, overlap=overlap, axes=axes,
                          preview_every=job.preview_every,
                          scheduler_config=scheduler_config)


def plan_texture_set(job: GenerateRequest, uploads: Mapping[str, ImageFrame],
                     fresh_seed: int) -> TexturePlan:
    validate(job, "job")
    settings = job.texture or TextureSettings()
    _refuse_extras(job)
    if job.loras:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "texture_set takes no LoRAs", "job.loras")
    if not settings.maps:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "texture.maps names no map", "job.texture.maps")
    if len(set(settings.maps)) != len(settings.maps):
        raise ProtocolError(ErrorCode.INVALID_FIELD, "texture.maps names a map twice",
                            "job.texture.maps")
    init = _init(job, uploads)
    seed = job.seed if job.seed is not None else fresh_seed % SEED_RANGE
    # No sampler runs; the settled request still carries numbers, as every result's does.
    settled = dataclasses.replace(with_defaults(job, *DEFAULT_SAMPLING), width=init.shape[1],
                                  height=init.shape[0], seed=seed, texture=settings)
    return TexturePlan(settled, tuple(settings.maps), tile_axes(job.tiling), init)


def _refuse_extras(job: GenerateRequest, controls_allowed: bool = False) -> None:
    """What the asset kinds do not take (yet): say so rather than ignore it."""
    if job.batch_size != 1:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{job.kind} makes one image set; "
                            f"batch_size must be 1", "job.batch_size")
    if job.mask is not None:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{job.kind} takes no mask", "job.mask")
    if not controls_allowed and (job.depth is not None or job.controls):
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"{job.kind} takes no depth or control images",
                            "job.controls" if job.controls else "job.depth")
    if job.regions:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{job.kind} takes no regions", "job.regions")
    if job.references:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{job.kind} takes no reference images",
                            "job.references")
    if job.kind != "upscale" and job.upscale is not None:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{job.kind} takes no upscale settings",
                            "job.upscale")
    if job.kind != "texture_set" and job.texture is not None:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{job.kind} takes no texture settings",
                            "job.texture")


def _init(job: GenerateRequest, uploads: Mapping[str, ImageFrame]) -> np.ndarray:
    if job.init_image is None:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{job.kind} needs init_image",
                            "job.init_image")
    frame = job_upload(uploads, job.init_image, "init_image", "job.init_image")
    return frame_to_rgba(frame, "job.init_image")
