"""What the painter asked for, and the daemon request that does it.

``plan_job`` decides the geometry (which canvas region, at which model size,
with which inputs) from the mode, the settings and the selection;
``build_request`` turns a plan plus upload ids into a ``GenerateRequest``.
Both are pure functions of their arguments, so they are tested without Krita.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields, replace
from typing import Callable, Iterable, Optional

from .assets import (TEXTURE_HELP, TEXTURE_MAPS, TEXTURE_SOURCES, UPSCALE_HELP, upscale_extent,
                     upscale_layout, upscale_scale)
from .families import base_family, family_label
from .guides import Guides, check_guides, request_controls, request_references, request_regions
from .protocol.families import serves_control
from .geometry import Bounds, Extent, ResolutionRange, context_region, default_padding, fit_extent
from .loras import LoraRow, check_loras, request_loras
from .protocol.messages import (CACHE_INTERVAL_MAX, TEXTURE_MAPS as MAP_NAMES, TILINGS,
                                UPSCALE_FACTOR_MAX, ControlLayer, ControlSettings, DepthInput,
                                GenerateRequest, ModelInfo, TextureSettings, UpscaleSettings)


class Mode(str, enum.Enum):
    GENERATE = "generate"
    FILL = "fill"
    REFINE = "refine"
    DEPTH = "depth"
    SEAMLESS = "seamless"
    UPSCALE = "upscale"
    TEXTURE = "texture_set"
    CONTROL_IMAGE = "control_image"    # a control row's "Generate from image": kind preprocess

    @property
    def label(self) -> str:
        return {"generate": "Generate", "fill": "Fill", "refine": "Refine", "depth": "Depth",
                "seamless": "Seamless", "upscale": "Upscale",
                "texture_set": "Texture set", "control_image": "Control image"}[self.value]

    @property
    def guided(self) -> bool:
        """Whether the docker's control layers, references and regions go with its jobs."""
        return self in (Mode.GENERATE, Mode.FILL, Mode.REFINE, Mode.DEPTH, Mode.SEAMLESS)


class JobRefused(Exception):
    """A job cannot start; the message says why and what to do."""


def _request_limit(name: str, bound: str) -> int:
    """A GenerateRequest field's bound, as the protocol defines it."""
    return next(int(f.metadata[bound]) for f in fields(GenerateRequest) if f.name == name)


SEED_MAX = _request_limit("seed", "max")      # seeds are 0 .. 2**32 - 1


def parse_seed(text: str) -> Optional[int]:
    """The Seed field's text as a seed: None (a new random seed each run) when empty;
    ValueError when it is not a whole number from 0 to SEED_MAX."""
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > SEED_MAX:
        raise ValueError(f"a seed is a whole number from 0 to {SEED_MAX}, or empty for a "
                         f"random one; got {text!r}")
    return int(text)


# Step caching (GenerateRequest.cache_interval): 1 = the whole UNet at every step.
CACHE_INTERVAL_HELP = ("Speed against quality. Off runs the whole model at every step (full "
                       "quality). N runs it only every N-th step and reuses its deep features "
                       "in between: faster (about 1.5x at 2, 1.9x at 3), and the images "
                       "differ a little from uncached ones.")

# Depth conditioning (ControlSettings.model): which depth ControlNet or T2I-Adapter steers
# a depth job. The daemon lists them in its models reply under these families.
DEPTH_MODEL_DEFAULT = "Daemon default"
DEPTH_MODEL_KINDS = {"t2i_adapter": "T2I-Adapter: fast", "controlnet": "ControlNet"}
DEPTH_MODEL_HELP = ("Which model makes Depth jobs follow the depth map. A T2I-Adapter runs "
                    "once per job: it adds next to no time. A ControlNet runs at every step: "
                    "a job takes about half as long again. Daemon default: the one the "
                    "daemon uses for the model (atelier serve --depth-control).")
DEPTH_MODEL_UNLISTED = "not listed by the daemon"
DEPTH_MODEL_OTHER_FAMILY = "made for {family} models"
DEPTH_MODEL_NOT_FOR_SD2_DEPTH = "SD2-depth models take none"
DEPTH_MODEL_SD2_DEPTH = ("An SD2-depth model takes the depth map itself: it uses no depth "
                         "model, so only Daemon default is offered.")

SD2_DEPTH_FAMILY = "sd2_depth"
# The daemon does not say which family a ControlNet or T2I-Adapter is made for; their names
# usually do (control_v11f1p_sd15_depth, controlnet-depth-sdxl-1.0, t2iadapter_depth_sd15v2,
# controlnet-sd21-depth). A name that says nothing is offered for every family.
_NAME_FAMILIES = (
    ("sdxl", re.compile(r"(?<![a-z])(sd)?xl(?![a-z])")),
    ("sd2", re.compile(r"(?<![a-z0-9])sd-?2([-_.]?[01])?(?![0-9])")),
    ("sd15", re.compile(r"(?<![a-z0-9])(sd-?1[-_.]?5|v1[-_.]?5)(?![0-9])|control_v1[01]")))


def base_model_names(models: Iterable[ModelInfo]) -> list[str]:
    """The models a job can run on: the daemon's checkpoints, not its ControlNets and
    T2I-Adapters, which only condition another model (the Depth model field offers them),
    nor its LoRAs and embeddings."""
    return [info.name for info in models
            if info.kind == "checkpoint" and info.family not in DEPTH_MODEL_KINDS]


def conditioner_family(name: str) -> Optional[str]:
    """The base family ("sd15", "sd2", "sdxl") a depth conditioner's name says it is made
    for; None when the name does not say."""
    lowered = name.lower()
    return next((family for family, pattern in _NAME_FAMILIES if pattern.search(lowered)), None)


def model_family(models: Iterable[ModelInfo], name: Optional[str]) -> Optional[str]:
    """The family the daemon lists for the model ``name``; None when it lists none."""
    return next((info.family for info in models if name and info.name == name), None)


def depth_model_choices(models: Iterable[ModelInfo], chosen: Optional[str] = None,
                        family: Optional[str] = None) -> list[tuple[str, Optional[str]]]:
    """The Depth model field's entries as (label, name): the daemon's default (name None),
    then every ControlNet and T2I-Adapter in ``models`` in the daemon's order, labelled with
    its kind, that can condition a model of ``family`` (the job's model; None: unknown,
    all are offered; SD2-depth: none). A ``chosen`` name that is not offered (the daemon
    stopped listing it, it is made for another family, or a recalled job used it) stays as
    an entry of its own, marked with the reason when the daemon's list is known, so the
    field still shows what a job would send."""
    models = list(models)
    base = base_family(family)
    choices: list[tuple[str, Optional[str]]] = [(DEPTH_MODEL_DEFAULT, None)]
    offered: set[str] = set()
    for info in models:
        kind = DEPTH_MODEL_KINDS.get(info.family)
        if not serves_control(info.family, info.control_kind, "depth") or info.name in offered:
            continue
        offered.add(info.name)
        if _fits_family(info.name, family, base):
            choices.append((f"{info.name} ({kind})", info.name))
    if chosen and all(name != chosen for _, name in choices):
        choices.append((_not_offered_label(chosen, offered, models, family), chosen))
    return choices


def _fits_family(conditioner: str, family: Optional[str], base: Optional[str]) -> bool:
    if family == SD2_DEPTH_FAMILY:
        return False
    made_for = conditioner_family(conditioner)
    return base is None or made_for is None or made_for == base


def _not_offered_label(chosen: str, offered: set[str], models: list[ModelInfo],
                       family: Optional[str]) -> str:
    if not models:
        return chosen        # the daemon's list is not known yet
    if chosen not in offered:
        return f"{chosen} ({DEPTH_MODEL_UNLISTED})"
    if family == SD2_DEPTH_FAMILY:
        return f"{chosen} ({DEPTH_MODEL_NOT_FOR_SD2_DEPTH})"
    label = family_label(conditioner_family(chosen))
    return f"{chosen} ({DEPTH_MODEL_OTHER_FAMILY.format(family=label)})"


# The Depth layer field: estimating depth needs a depth-estimation model on the daemon's
# machine, which the daemon does not announce; it says so when a job asks for it.
ESTIMATE_DEPTH = "(estimate from canvas)"


def default_depth_source(layers: Iterable[str], estimate_problem: Optional[str]) -> str:
    """What the Depth layer field starts on: a layer named for depth (it works whatever
    the daemon has), else estimating from the canvas unless the daemon said it cannot,
    else the first layer; ESTIMATE_DEPTH when there is nothing else."""
    layers = list(layers)
    named = next((name for name in layers if "depth" in name.lower()), None)
    if named is not None:
        return named
    if estimate_problem is None or not layers:
        return ESTIMATE_DEPTH
    return layers[0]


@dataclass(frozen=True)
class JobSettings:
    """The docker's fields: everything the painter chooses for a job."""
    prompt: str = ""
    negative_prompt: str = ""
    model: Optional[str] = None          # None = the daemon's current model
    strength: float = 0.6                # refine and seamless; fill always repaints fully
    seed: Optional[int] = None           # None = a new random seed each run
    batch_size: int = 1
    steps: int = 20
    guidance: float = 7.0
    tiling: str = "none"                 # seamless axes: none, x, y, both
    mask_grow: int = 8
    mask_feather: int = 8
    depth_layer: Optional[str] = None    # None = estimate depth on the daemon
    depth_scale: float = 1.0
    depth_model: Optional[str] = None    # ControlNet or T2I-Adapter; None = the daemon's default
    seam_width: int = 64
    previews: bool = True
    cache_interval: int = 1              # step caching; 1 = off (full quality)
    loras: tuple[LoraRow, ...] = ()      # (name, weight) of the LoRA rows with a LoRA chosen
    sampler_preset: Optional[str] = None  # welcome.sampler_presets; None = Steps and Guidance
    upscale_factor: float = 2.0          # Upscale: the result is the region times this ...
    upscale_side: int = 0                # ... or has this longest side (0 = use the factor)
    upscaler: Optional[str] = None       # a daemon upscaler (models kind "upscaler"); None = Lanczos
    refine_strength: float = 0.0         # Upscale: > 0 repaints the enlarged image in tiles
    texture_maps: tuple[str, ...] = TEXTURE_MAPS
    texture_source: str = "auto"         # auto, marigold, image
    guides: Guides = Guides()            # control layers, reference images, regions

    def __post_init__(self) -> None:
        if self.seed is not None and not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"a seed is a whole number from 0 to {SEED_MAX}, got {self.seed!r}")
        if self.tiling not in TILINGS:
            raise ValueError(f"seamless axes must be one of {', '.join(TILINGS)}, "
                             f"got {self.tiling!r}")
        if not 1 <= self.cache_interval <= CACHE_INTERVAL_MAX:
            raise ValueError(f"step cache must be 1 (off) to {CACHE_INTERVAL_MAX}, "
                             f"got {self.cache_interval!r}")
        check_loras(self.loras)
        if not 1.0 <= self.upscale_factor <= UPSCALE_FACTOR_MAX:
            raise ValueError(f"an upscale factor is 1 to {UPSCALE_FACTOR_MAX:g}, "
                             f"got {self.upscale_factor!r}")
        if self.upscale_side < 0:
            raise ValueError(f"an upscale's longest side is 0 (use the factor) or more, "
                             f"got {self.upscale_side!r}")
        if not 0.0 <= self.refine_strength <= 1.0:
            raise ValueError(f"refine strength is 0 to 1, got {self.refine_strength!r}")
        if self.texture_source not in TEXTURE_SOURCES:
            raise ValueError(f"texture maps come from one of {', '.join(TEXTURE_SOURCES)}, "
                             f"got {self.texture_source!r}")
        unknown = [name for name in self.texture_maps if name not in MAP_NAMES]
        if unknown or not self.texture_maps:
            raise ValueError(f"texture maps are some of {', '.join(MAP_NAMES)}, "
                             f"got {list(self.texture_maps)!r}")

    def with_seed(self, seed: Optional[int]) -> "JobSettings":
        return replace(self, seed=seed)


@dataclass(frozen=True)
class JobPlan:
    """Where a job reads from and writes to, and what it sends."""
    mode: Mode
    region: Bounds            # document pixels read and covered by the result
    model_extent: Extent      # the size the daemon generates at
    kind: str                 # protocol JobKind
    send_image: bool          # the canvas region goes up as init image
    send_mask: bool           # the selection (grown, feathered) goes up as mask
    send_depth: bool          # a depth layer goes up
    clip_to_selection: bool   # result alpha = selection mask, so nothing outside changes
    tiling: str
    # Upscale: the document scaled (as Image > Scale) and the new layer's place in it.
    scaled_canvas: Optional[Extent] = None
    result_region: Optional[Bounds] = None

    @property
    def placed(self) -> Bounds:
        """Where the results land: the region, or for an upscale its place in the scaled
        document."""
        return self.result_region or self.region

    @property
    def scaled(self) -> bool:
        return self.region.extent != self.model_extent


# Fill sends at least this much canvas around the selection (pixels at model scale).
MIN_CONTEXT = 32


def selection_reach(settings: JobSettings) -> int:
    """How far beyond the selection's bounds a grown and feathered mask can reach."""
    return settings.mask_grow + settings.mask_feather


def plan_job(mode: Mode, settings: JobSettings, canvas: Extent, selection: Optional[Bounds],
             resolution: ResolutionRange) -> JobPlan:
    """The geometry of a job; JobRefused with the reason when it cannot run."""
    if canvas.is_empty:
        raise JobRefused("the document has no pixels")
    if mode.guided:
        try:
            check_guides(settings.guides, depth=mode is Mode.DEPTH)
        except ValueError as exc:
            raise JobRefused(str(exc)) from None
    if selection is not None:
        selection = selection.clamped(canvas)
        if selection.is_empty:
            selection = None
    whole = Bounds.of(canvas)
    tiling = settings.tiling
    if mode is Mode.FILL:
        if selection is None:
            raise JobRefused("Fill needs a selection: select the area to repaint first")
        reach = selection.expanded(selection_reach(settings)).clamped(canvas)
        region = context_region(reach, canvas, padding=default_padding(reach, MIN_CONTEXT),
                                min_size=resolution.min_side)
        return _plan(mode, region, resolution, "inpaint", image=True, mask=True, clip=True,
                     tiling="none")
    if mode is Mode.SEAMLESS:
        # A tileable texture is the whole canvas (what Krita's wrap-around mode repeats).
        axes = tiling if tiling != "none" else "both"
        return _plan(mode, whole, resolution, "make_seamless", image=True, tiling=axes)
    region = selection or whole
    if mode is Mode.UPSCALE:
        # The region goes up at its own size: the daemon enlarges it (tiles bound its memory).
        output = upscale_extent(region.extent, settings.upscale_factor, settings.upscale_side)
        if output.longest <= region.extent.longest:
            raise JobRefused(f"the region is already {region.extent}: upscaling it to {output} "
                             "makes nothing bigger; choose a larger size or a factor")
        layout = upscale_layout(canvas, region, output, upscale_scale(
            region.extent, settings.upscale_factor, settings.upscale_side))
        return JobPlan(mode, region, region.extent, "upscale", True, False, False, False,
                       tiling, layout.canvas, layout.placed)
    if mode is Mode.TEXTURE:
        return JobPlan(mode, region, region.extent, "texture_set", True, False, False, False,
                       tiling)
    if mode is Mode.CONTROL_IMAGE:
        if len(settings.guides.controls) != 1:
            raise JobRefused("a control image is made for one control layer at a time")
        return _plan(mode, region, resolution, "preprocess", image=True, tiling=tiling)
    if mode is Mode.GENERATE:
        return _plan(mode, region, resolution, "txt2img", tiling=tiling)
    if mode is Mode.REFINE:
        if selection is not None:  # the result is clipped to the grown, feathered selection
            region = selection.expanded(selection_reach(settings)).clamped(canvas)
        return _plan(mode, region, resolution, "img2img", image=True,
                     clip=selection is not None, tiling=tiling)
    if mode is Mode.DEPTH:
        if settings.depth_layer is None:  # depth estimated from the canvas: repaint it at strength
            return _plan(mode, region, resolution, "img2img", image=True, tiling=tiling)
        return _plan(mode, region, resolution, "txt2img", depth=True, tiling=tiling)
    raise JobRefused(f"unknown mode {mode!r}")


def _plan(mode: Mode, region: Bounds, resolution: ResolutionRange, kind: str, *,
          image: bool = False, mask: bool = False, depth: bool = False, clip: bool = False,
          tiling: str = "none") -> JobPlan:
    return JobPlan(mode, region, fit_extent(region.extent, resolution), kind, image, mask,
                   depth, clip, tiling)


@dataclass(frozen=True)
class UploadIds:
    image: Optional[str] = None
    mask: Optional[str] = None
    depth: Optional[str] = None
    # one per row of the settings' guides that goes up (a job of a guided mode)
    controls: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()


def upload_ids(plan: "JobPlan", settings: JobSettings, new_id: "Callable[[], str]") -> UploadIds:
    """Fresh upload ids (``new_id()`` each) for everything ``plan`` sends."""
    guides = settings.guides if plan.mode.guided else Guides()
    return UploadIds(image=new_id() if plan.send_image else None,
                     mask=new_id() if plan.send_mask else None,
                     depth=new_id() if plan.send_depth else None,
                     controls=tuple(new_id() for _ in guides.controls),
                     references=tuple(new_id() for _ in guides.references),
                     regions=tuple(new_id() for _ in guides.regions))


def build_request(plan: JobPlan, settings: JobSettings, uploads: UploadIds) -> GenerateRequest:
    """The daemon request for a plan whose inputs went up under ``uploads``."""
    for needed, given, what in ((plan.send_image, uploads.image, "init image"),
                                (plan.send_mask, uploads.mask, "mask"),
                                (plan.send_depth, uploads.depth, "depth map")):
        if needed and not given:
            raise ValueError(f"a {plan.mode.value} job needs its {what} uploaded first")
    size = plan.model_extent
    depth = control = None
    if plan.mode is Mode.DEPTH:
        if plan.send_depth:
            depth = DepthInput(upload=uploads.depth, convention="normalized")
        else:
            depth = DepthInput(estimate=True)
        control = ControlSettings(model=settings.depth_model or None, scale=settings.depth_scale)
    strength = settings.strength
    if plan.mode is Mode.FILL:
        strength = 1.0
    if plan.mode in (Mode.UPSCALE, Mode.TEXTURE):
        return _asset_request(plan, settings, uploads)
    if plan.mode is Mode.CONTROL_IMAGE:
        return _control_image_request(plan, settings, uploads)
    guides = settings.guides if plan.mode.guided else Guides()
    return GenerateRequest(
        kind=plan.kind,  # type: ignore[arg-type]
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        model=settings.model or None,
        width=size.width,
        height=size.height,
        steps=settings.steps,
        guidance=settings.guidance,
        seed=settings.seed,
        batch_size=settings.batch_size,
        strength=strength,
        init_image=uploads.image if plan.send_image else None,
        mask=uploads.mask if plan.send_mask else None,
        # The plugin grows and feathers the mask itself (it needs the same mask as the
        # result layer's alpha), and the region it sends is already the context.
        mask_grow=0,
        mask_feather=0,
        context_padding=min(4096, size.longest),
        tiling=plan.tiling,  # type: ignore[arg-type]
        seam_width=max(8, min(1024, round(settings.seam_width * size.longest
                                          / max(1, plan.region.extent.longest)))),
        depth=depth,
        control=control,
        preview_every=1 if settings.previews else 0,
        output_format="raw",
        cache_interval=settings.cache_interval,
        loras=request_loras(settings.loras),
        sampler_preset=settings.sampler_preset or None,  # type: ignore[arg-type]
        controls=request_controls(guides.controls, uploads.controls),
        references=request_references(guides.references, uploads.references),
        regions=request_regions(guides.regions, uploads.regions),
    )


def _control_image_request(plan: JobPlan, settings: JobSettings,
                           uploads: UploadIds) -> GenerateRequest:
    """Kind preprocess (PROTOCOL.md 4.4): the control image of the one control row's kind
    made from the canvas region (the init image), at the model size."""
    (row,) = settings.guides.controls
    size = plan.model_extent
    return GenerateRequest(kind="preprocess", width=size.width, height=size.height,
                           init_image=uploads.image, tiling=plan.tiling,  # type: ignore[arg-type]
                           controls=[ControlLayer(kind=row.kind,  # type: ignore[arg-type]
                                                  preprocess=True)])


# Results past this many pixels come as PNG: an 8192^2 RGBA8 frame passes the message limit.
RAW_RESULT_PIXELS = 4096 * 4096


def _asset_request(plan: JobPlan, settings: JobSettings, uploads: UploadIds) -> GenerateRequest:
    """Kinds upscale and texture_set (PROTOCOL.md 4.5): the region at its own size as init
    image, one result (set), no step previews (the progress bar counts tiles x steps)."""
    upscale = texture = None
    refining = plan.mode is Mode.UPSCALE and settings.refine_strength > 0
    size = plan.placed.extent          # an upscale's output
    if plan.mode is Mode.UPSCALE:
        upscale = UpscaleSettings(upscaler=settings.upscaler or None,
                                  refine_strength=settings.refine_strength)
        output_format = "png" if size.pixels > RAW_RESULT_PIXELS else "raw"
    else:
        texture = TextureSettings(maps=list(settings.texture_maps),  # type: ignore[arg-type]
                                  source=settings.texture_source)  # type: ignore[arg-type]
        size = Extent(512, 512)      # unused: maps come at the init image's size
        output_format = "raw"
    return GenerateRequest(
        kind=plan.kind,  # type: ignore[arg-type]
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        model=(settings.model or None) if refining else None,
        width=size.width,
        height=size.height,
        steps=settings.steps,
        guidance=settings.guidance,
        seed=settings.seed,
        init_image=uploads.image,
        tiling=plan.tiling,  # type: ignore[arg-type]
        output_format=output_format,  # type: ignore[arg-type]
        cache_interval=settings.cache_interval if refining else 1,
        loras=request_loras(settings.loras) if refining else [],
        sampler_preset=(settings.sampler_preset or None) if refining else None,  # type: ignore[arg-type]
        upscale=upscale,
        texture=texture,
    )


def layer_name(prompt: str, seed: int, limit: int = 40) -> str:
    """A result layer's name: the prompt (shortened) and the seed that made it."""
    text = " ".join(prompt.split()) or "untitled"
    if len(text) > limit:
        text = text[:limit - 1].rstrip() + "\u2026"
    return f"{text} [seed {seed}]"


# ------------------------------------------------------------------ the docker's mode drop-down
class Workflow(str, enum.Enum):
    """What the docker's mode drop-down offers. The one Generate button runs the chosen
    workflow; Generate with a selection fills it (inpaint), as krita-ai-diffusion does."""
    GENERATE = "generate"
    REFINE = "refine"
    DEPTH = "depth"
    SEAMLESS = "seamless"
    UPSCALE = "upscale"
    TEXTURE = "texture_set"

    @property
    def label(self) -> str:
        return {"generate": "Generate (txt2img; fills a selection)",
                "upscale": "Upscale", "texture_set": "Make texture set",
                "refine": "Refine (img2img)",
                "depth": "Depth-guided",
                "seamless": "Seamless texture"}[self.value]

    @property
    def short_label(self) -> str:
        """The drop-down's entry, next to the Generate button."""
        return {"generate": "Generate / Fill", "refine": "Refine", "depth": "Depth",
                "seamless": "Seamless", "upscale": "Upscale",
                "texture_set": "Texture set"}[self.value]

    @property
    def help(self) -> str:
        return {"generate": "A new image from the prompt over the whole canvas; with a "
                            "selection, the selection is filled (inpainted) to match "
                            "what is around it.",
                "refine": "Repaints the canvas (or the selection) at Strength: low keeps "
                          "the picture, high changes more.",
                "depth": "A new image that follows a depth map: a layer's brightness "
                         "(near = bright) or depth estimated from the canvas.",
                "seamless": "Makes the whole canvas tile without seams (Krita's "
                            "wrap-around mode shows it repeated).",
                "upscale": UPSCALE_HELP, "texture_set": TEXTURE_HELP}[self.value]


def job_mode(workflow: Workflow, has_selection: bool) -> Mode:
    """The job the Generate button starts for the drop-down's ``workflow``."""
    if workflow is Workflow.GENERATE:
        return Mode.FILL if has_selection else Mode.GENERATE
    return {Workflow.REFINE: Mode.REFINE, Workflow.DEPTH: Mode.DEPTH,
            Workflow.SEAMLESS: Mode.SEAMLESS, Workflow.UPSCALE: Mode.UPSCALE,
            Workflow.TEXTURE: Mode.TEXTURE}[workflow]


def workflow_of(mode: Mode) -> Workflow:
    """The drop-down entry that runs ``mode`` (History's Recall puts it back)."""
    return {Mode.GENERATE: Workflow.GENERATE, Mode.FILL: Workflow.GENERATE,
            Mode.REFINE: Workflow.REFINE, Mode.DEPTH: Workflow.DEPTH,
            Mode.SEAMLESS: Workflow.SEAMLESS, Mode.UPSCALE: Workflow.UPSCALE,
            Mode.TEXTURE: Workflow.TEXTURE}[mode]


def action_label(workflow: Workflow, has_selection: bool) -> str:
    """The Generate button's text: what a click does now."""
    mode = job_mode(workflow, has_selection)
    if mode is Mode.FILL:
        return "Fill selection"
    if mode is Mode.REFINE:
        return "Refine selection" if has_selection else "Refine"
    if mode is Mode.UPSCALE:
        return "Upscale selection" if has_selection else "Upscale"
    if mode is Mode.TEXTURE:
        return "Texture set of selection" if has_selection else "Make texture set"
    return {Mode.GENERATE: "Generate", Mode.DEPTH: "Generate from depth",
            Mode.SEAMLESS: "Make seamless"}[mode]


def shown_fields(workflow: Workflow, estimate_depth: bool) -> frozenset[str]:
    """Which of the mode's own fields the docker shows: "strength" (refine, seamless,
    depth estimated from the canvas, which repaints it), "depth" (layer and model),
    "upscale" (size, upscaler, refine) and "texture" (where the maps come from)."""
    shown: set[str] = set()
    if workflow in (Workflow.REFINE, Workflow.SEAMLESS) or \
            (workflow is Workflow.DEPTH and estimate_depth):
        shown.add("strength")
    if workflow is Workflow.DEPTH:
        shown.add("depth")
    if workflow is Workflow.UPSCALE:
        shown.add("upscale")
    if workflow is Workflow.TEXTURE:
        shown.add("texture")
    return frozenset(shown)


QUEUE_LIMIT = 8     # jobs waiting in the plugin behind the running one


def queue_text(waiting: int) -> str:
    """What the docker says about the jobs waiting behind the running one."""
    if waiting <= 0:
        return ""
    return f"{waiting} queued" if waiting < QUEUE_LIMIT else f"{waiting} queued (full)"
