"""A generation request -> a checked, fully resolved plan; a pure function of the data.

``plan_generation`` validates the request against the limits and its uploads, picks the
seeds, settles the output and working sizes and, for inpainting, prepares the mask and
the context region. Nothing here touches a model, so every rule is testable on its own,
and the same request with the same seed always gives the same plan.

Sizes: ``width`` x ``height`` is the output size for every kind. For img2img and inpaint
the init image (and mask) are resampled to it when they differ; clients send the init
image's own size to keep it (that is what the CLI does), and then an inpaint result is
byte-identical to the init image wherever the grown and feathered mask is zero.

Controls (the old depth field and ``controls``) become control images at the output size
(controls.py; depth uploads as a nearness map, depth.py). make_seamless plans as
an inpaint of the texture rolled by half (seamless.py), with the tiling it applies; on a
tiled axis the inpaint context spans the whole image, since that axis wraps around.
Regions' masks become float masks at the output size (regions.py), rolled likewise.

Inline ``<lora:name:w>`` tags move from the prompt into ``loras`` (lora_tags.py), and a
``sampler_preset`` settles scheduler, steps and guidance (presets.py) before anything else
is checked, so the plan's request is the request as run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional

import numpy as np

from protocol.errors import ErrorCode, ProtocolError
from protocol.families import DEFAULT_SAMPLING
from protocol.frames import ImageFrame
from protocol.messages import GenerateRequest
from protocol.schema import validate

from ..limits import ServerLimits
from .controls import PlannedControl, job_controls
from .lora_tags import settle_loras
from .masks import Box, context_box, mask_bounds, prepare_mask
from .pixels import frame_to_gray, frame_to_rgba, job_upload, resize
from .presets import apply_preset, with_defaults
from .references import PlannedReference, job_references
from .regions import PlannedRegion, job_regions
from .schedulers import step_limit
from .seamless import roll_image, seamless_inputs, seamless_tiling
from .tiling import tile_axes

PipelineKind = Literal["txt2img", "img2img", "inpaint"]
SEED_RANGE = 2 ** 32          # seeds are 32-bit, as in the protocol; seed + i wraps around
SIZE_MULTIPLE = 8             # pixel sizes the VAE maps to whole latents


@dataclass(frozen=True)
class ModelTraits:
    """What planning needs to know of the loaded model."""
    native_side: int = 512    # the square side it was trained at (UNet sample size x VAE scale)
    # what a job leaving steps / guidance out runs with (protocol.families.sampling_defaults)
    steps: int = DEFAULT_SAMPLING[0]
    guidance: float = DEFAULT_SAMPLING[1]


@dataclass(frozen=True)
class GenerationPlan:
    """Everything a pipeline run needs, resolved. ``request`` is the request as run."""
    kind: PipelineKind
    request: GenerateRequest
    seeds: tuple[int, ...]                 # one per batch item: seed, seed + 1, ...
    width: int                             # output size
    height: int
    work_width: int                        # size the pipeline runs at
    work_height: int
    denoise_steps: int                     # sampler steps that run (steps x strength for img2img)
    crop: Optional[Box] = None             # inpaint: the context region of the init image
    init: Optional[np.ndarray] = field(default=None, compare=False, repr=False)  # (H, W, 4) uint8
    mask: Optional[np.ndarray] = field(default=None, compare=False, repr=False)  # (H, W) float32
    tiling: str = "none"                   # the tiling applied (make_seamless picks one)
    offset: tuple[int, int] = (0, 0)       # make_seamless: (dx, dy) the init was rolled by
    # the job's controls with their images at the output size (controls.py), the old
    # depth field first; make_seamless: rolled with the init
    controls: tuple[PlannedControl, ...] = ()
    # the job's regions, their masks at the output size (regions.py); make_seamless: rolled
    regions: tuple[PlannedRegion, ...] = ()
    # over the model's scheduler config for this job (a sampler preset's timestep spacing)
    scheduler_config: tuple[tuple[str, Any], ...] = ()
    # the job's reference images that steer (weight above 0), decoded (references.py)
    references: tuple[PlannedReference, ...] = ()

    @property
    def batch_size(self) -> int:
        return len(self.seeds)


def plan_generation(job: GenerateRequest, uploads: Mapping[str, ImageFrame],
                    limits: ServerLimits, traits: ModelTraits, fresh_seed: int) -> GenerationPlan:
    """Check ``job`` and resolve it. ``fresh_seed`` is used when the job has no seed.

    Raises ProtocolError naming the field (``job.width``, ``job.mask`` ...) and the limit."""
    validate(job, "job")
    # Inline <lora:...> tags join job.loras; a sampler preset sets scheduler, steps, guidance.
    preset = apply_preset(settle_loras(job))
    job = with_defaults(preset.request, traits.steps, traits.guidance)
    kind = _pipeline_kind(job)
    _check_numbers(job, limits)
    seed = job.seed if job.seed is not None else fresh_seed % SEED_RANGE
    seeds = tuple((seed + i) % SEED_RANGE for i in range(job.batch_size))
    tiling = seamless_tiling(job.tiling) if job.kind == "make_seamless" else job.tiling
    settled = dataclasses.replace(job, seed=seed, tiling=tiling)
    regions = job_regions(job, uploads, tile_axes(tiling))
    common = dict(request=settled, seeds=seeds, width=job.width, height=job.height,
                  tiling=tiling, scheduler_config=preset.scheduler_config, regions=regions)
    common["references"] = job_references(job, uploads)
    if kind == "txt2img":
        _refuse(job, "init_image", kind)
        _refuse(job, "mask", kind)
        return GenerationPlan(kind=kind, work_width=job.width, work_height=job.height,
                              denoise_steps=job.steps, controls=job_controls(job, uploads),
                              **common)

    denoise_steps = _denoise_steps(job)
    raw_init = _read_init(job, uploads)
    init = resize(raw_init, job.width, job.height)
    controls = job_controls(job, uploads, init[..., :3])
    if kind == "img2img":
        _refuse(job, "mask", kind)
        return GenerationPlan(kind=kind, work_width=job.width, work_height=job.height,
                              denoise_steps=denoise_steps, init=init, controls=controls,
                              **common)

    offset = (0, 0)
    if job.kind == "make_seamless":
        _refuse(job, "mask", job.kind)
        init, mask, offset = seamless_inputs(init, tiling, job.seam_width, job.mask_grow,
                                             job.mask_feather)
        controls = tuple(_rolled(control, offset) for control in controls)
        common["regions"] = tuple(region.rolled(offset) for region in regions)
    else:
        mask = _read_mask(job, uploads, raw_init.shape[1], raw_init.shape[0])
        mask = resize(mask, job.width, job.height)
    bounds = mask_bounds(mask)
    if bounds is None:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            "the mask is empty (no pixel above 0): nothing to repaint", "job.mask")
    crop = context_box(bounds, job.context_padding, job.width, job.height, SIZE_MULTIPLE)
    # A tiled axis wraps around the whole image, so the context spans all of it.
    if tiling in ("x", "both"):
        crop = Box(0, crop.y, job.width, crop.height)
    if tiling in ("y", "both"):
        crop = Box(crop.x, 0, crop.width, job.height)
    work_width, work_height = working_size(crop.width, crop.height, traits.native_side, limits)
    return GenerationPlan(kind=kind, work_width=work_width, work_height=work_height,
                          denoise_steps=denoise_steps, crop=crop, init=init, mask=mask,
                          offset=offset, controls=controls, **common)


def plan_preprocess(job: GenerateRequest, uploads: Mapping[str, ImageFrame],
                    limits: ServerLimits) -> PlannedControl:
    """Check a "preprocess" job and make its one control's image at the job's size (depth
    estimation is left to the generator: ``estimate`` set)."""
    validate(job, "job")
    limits.check_request(job)
    if len(job.controls) != 1:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"a preprocess job takes exactly one control, not {len(job.controls)}",
                            "job.controls")
    for name in ("mask", "depth", "control"):
        _refuse(job, name, "preprocess")
    if job.regions:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "preprocess takes no regions", "job.regions")
    if job.references:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "preprocess takes no reference images",
                            "job.references")
    init = None
    if job.init_image is not None:
        init = resize(_read_init(job, uploads), job.width, job.height)[..., :3]
    return job_controls(job, uploads, init)[0]


def working_size(width: int, height: int, native_side: int,
                 limits: ServerLimits) -> tuple[int, int]:
    """The size to inpaint a ``width`` x ``height`` context region at: scaled up (aspect kept)
    until it covers the model's native area, so small masks get the detail the model can give,
    but never past the limits; multiples of 8."""
    area = width * height
    scale = max(1.0, math.sqrt(native_side * native_side / area))
    scale = min(scale, math.sqrt(limits.max_pixels / area), limits.max_side / max(width, height))
    if scale <= 1.0:
        return width, height
    return (max(width, _floor_multiple(width * scale)), max(height, _floor_multiple(height * scale)))


def _floor_multiple(value: float) -> int:
    return int(value // SIZE_MULTIPLE) * SIZE_MULTIPLE


def _pipeline_kind(job: GenerateRequest) -> PipelineKind:
    """make_seamless is an inpaint of the seams of the offset texture."""
    if job.kind == "make_seamless":
        return "inpaint"
    if job.kind not in ("txt2img", "img2img", "inpaint"):
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"kind '{job.kind}' is not supported by this daemon yet", "job.kind")
    return job.kind  # type: ignore[return-value]


def _check_numbers(job: GenerateRequest, limits: ServerLimits) -> None:
    limits.check_request(job)
    sampler_limit = step_limit(job.scheduler)
    if sampler_limit is not None and job.steps > sampler_limit:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                            f"steps {job.steps} is over the {job.scheduler} scheduler's limit of "
                            f"{sampler_limit}", "job.steps")


def _denoise_steps(job: GenerateRequest) -> int:
    """Steps img2img/inpaint run: diffusers skips the first (1 - strength) of the schedule."""
    steps = min(int(job.steps * job.strength), job.steps)
    if steps < 1:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"strength {job.strength} of {job.steps} steps runs no step; "
                            f"strength must be at least {1 / job.steps:.4g}", "job.strength")
    return steps


def _refuse(job: GenerateRequest, name: str, kind: str) -> None:
    if getattr(job, name) is not None:
        hint = "; use kind 'inpaint'" if name == "mask" and kind != "preprocess" else ""
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{kind} takes no {name}{hint}", f"job.{name}")


def _upload(job: GenerateRequest, uploads: Mapping[str, ImageFrame], name: str,
            upload_id: Optional[str] = None, field: Optional[str] = None) -> ImageFrame:
    """The frame ``job.<name>`` (or ``upload_id``, reported as ``field``) refers to."""
    field = field or f"job.{name}"
    upload_id = upload_id or getattr(job, name)
    if upload_id is None:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{job.kind} needs {name}", field)
    return job_upload(uploads, upload_id, name, field)


def _rolled(control: PlannedControl, offset: tuple[int, int]) -> PlannedControl:
    """``control`` with its image (or the picture it is estimated from) rolled like the init."""
    return dataclasses.replace(
        control, image=None if control.image is None else roll_image(control.image, offset),
        source=None if control.source is None else roll_image(control.source, offset))


def _read_init(job: GenerateRequest, uploads: Mapping[str, ImageFrame]) -> np.ndarray:
    return frame_to_rgba(_upload(job, uploads, "init_image"), "job.init_image")


def _read_mask(job: GenerateRequest, uploads: Mapping[str, ImageFrame],
               width: int, height: int) -> np.ndarray:
    frame = _upload(job, uploads, "mask")
    if (frame.width, frame.height) != (width, height):
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"the mask is {frame.width}x{frame.height} but init_image is "
                            f"{width}x{height}; they must match", "job.mask")
    return prepare_mask(frame_to_gray(frame, "job.mask"), job.mask_grow, job.mask_feather)
