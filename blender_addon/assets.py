"""The game-asset kit as plain data: Upscale and Make Material requests, the names of what
they make, and the PBR material's plan. No Blender needed (tests/test_blender_assets.py).

Upscale sends an image datablock's pixels as an ``upscale`` job (PROTOCOL.md 4.5): to a
factor or to a target size, through Lanczos or one of the daemon's upscalers, with an
optional tiled refine. Make Material sends a colour texture as a ``texture_set`` job and
wires the labelled maps it gets back into a Principled BSDF (``pbr_material``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from .protocol import ErrorCode, GenerateRequest, ProtocolError, validate
from .protocol.messages import Limits, ModelInfo, TextureSettings, UpscaleSettings
from .settings import (NAME_LIMIT, SIZE_MULTIPLE, EnumItem, NameNumbers, PanelSettings,
                       build_request, size_problem)

UPSCALE_FACTORS = (2, 4)
UPSCALER_LANCZOS = "LANCZOS"   # the Upscaler menu's identifier for "no model" (upscaler None)
# What Make Material asks for: the colour texture itself is the Base Color.
MATERIAL_MAPS = ("normal", "roughness", "height")
# Colour data is sRGB; everything else is data Blender must not colour-manage.
MAP_COLORSPACE = {"albedo": "sRGB", "normal": "Non-Color", "height": "Non-Color",
                  "roughness": "Non-Color", "metallic": "Non-Color"}
UPSCALER_HELP = ("How the image is made larger. Lanczos: a plain resize, no model. The others "
                 "are super-resolution models in the daemon's ESRGAN / upscale_models folders "
                 "(listed once the add-on connects)")
REFINE_HELP = ("After the upscale, repaint the image in tiles with the prompt at this "
               "strength to add detail (0 = upscale only, no diffusion model runs; 0.2-0.4 "
               "adds detail and keeps the picture)")


@dataclass(frozen=True)
class UpscaleChoice:
    """What the Upscale controls say: a ``factor`` (2, 4) or, when ``factor`` is None, a
    target ``width`` x ``height``; ``upscaler`` None = Lanczos."""
    factor: Optional[int] = 2
    width: int = 2048
    height: int = 2048
    upscaler: Optional[str] = None
    refine_strength: float = 0.0


def scaled_side(side: int, factor: float) -> int:
    """A side times ``factor``, rounded to a multiple of 8, as the daemon rounds it."""
    return max(SIZE_MULTIPLE, round(side * factor / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def upscaled_size(width: int, height: int, choice: UpscaleChoice) -> tuple[int, int]:
    if choice.factor is not None:
        return scaled_side(width, choice.factor), scaled_side(height, choice.factor)
    return choice.width, choice.height


def upscale_problem(source: tuple[int, int], choice: UpscaleChoice,
                    limits: Optional[Limits]) -> Optional[str]:
    """Why the daemon would refuse this upscale, naming the field and the limit; None if it
    would not. ``limits`` None: not connected yet (only the multiples of 8 are known)."""
    width, height = upscaled_size(*source, choice)
    for name, value in (("Width", width), ("Height", height)):
        if value % SIZE_MULTIPLE:
            return f"Target {name} {value} is not a multiple of {SIZE_MULTIPLE}"
    if width < source[0] or height < source[1]:
        return (f"the target {width} x {height} is smaller than the image "
                f"({source[0]} x {source[1]}): Upscale only makes images larger")
    if limits is None or not limits.max_upscale_side:
        return None
    if max(width, height) > limits.max_upscale_side:
        return (f"{width} x {height} is more than the daemon upscales to "
                f"(max_upscale_side {limits.max_upscale_side})")
    if width * height > limits.max_upscale_pixels:
        return (f"{width} x {height} is {width * height} pixels, more than the daemon "
                f"upscales to (max_upscale_pixels {limits.max_upscale_pixels})")
    return None


def request_size_problem(request: GenerateRequest, limits: Optional[Limits]) -> Optional[str]:
    """Why the daemon would refuse the size of ``request`` (a job made before the add-on
    knew the daemon's limits): an upscale's output against the upscale limits, a texture
    set never (its maps come at the texture's size, its width/height are not used), others
    against ``max_side`` / ``max_pixels``."""
    if request.kind == "texture_set":
        return None
    if request.kind != "upscale":
        return size_problem(request.width, request.height, limits)
    target = UpscaleChoice(factor=None, width=request.width, height=request.height)
    return upscale_problem((request.width, request.height), target, limits)


def upscale_request(panel: PanelSettings, choice: UpscaleChoice, init_image: str,
                    source: tuple[int, int], tiling: str, **build) -> GenerateRequest:
    """The ``upscale`` job for an image of ``source`` (width, height) uploaded as
    ``init_image``. ``tiling``: the axes the source tiles on (the seamless axes the
    upscale and refine must keep). The refine takes the panel's prompt, model, steps,
    seed, scheduler and LoRAs; a plain upscale sends none of them."""
    width, height = upscaled_size(*source, choice)
    request = build_request(dataclasses.replace(panel, tiling=tiling, batch_size=1),
                            kind="upscale", init_image=init_image, width=width,
                            height=height, **build)
    refine = choice.refine_strength > 0
    request = dataclasses.replace(
        request,
        upscale=UpscaleSettings(scale=float(choice.factor) if choice.factor else None,
                                upscaler=choice.upscaler,
                                refine_strength=choice.refine_strength),
        model=request.model if refine else None,
        preview_every=request.preview_every if refine else 0,
        loras=request.loras if refine else [],
        cache_interval=1)
    validate(request, "job")
    return request


def texture_request(init_image: str, tiling: str, normal_strength: float,
                    maps: Iterable[str] = MATERIAL_MAPS) -> GenerateRequest:
    """The ``texture_set`` job turning the colour texture ``init_image`` into ``maps``.
    width/height stay the defaults: the maps come at the texture's own size. The seed is
    fixed (the same texture gives the same maps) and fits Blender's 32-bit integers, which
    a seed the daemon draws (up to 2**32 - 1) may not."""
    request = GenerateRequest(kind="texture_set", init_image=init_image, seed=0,
                              tiling=tiling,  # type: ignore[arg-type]
                              output_format="raw",
                              texture=TextureSettings(maps=list(maps),  # type: ignore[arg-type]
                                                      normal_strength=normal_strength))
    validate(request, "job")
    return request


def source_tiling(record: Optional[Mapping[str, object]], panel_tiling: str) -> str:
    """The seamless axes of a source image: what its Atelier record says it was made with,
    else the panel's Seamless setting."""
    if record is not None:
        tiling = record.get("tiling")
        if tiling in ("none", "x", "y", "both"):
            return str(tiling)
    return panel_tiling


def _fit(stem: str, suffix: str) -> str:
    room = NAME_LIMIT - len(suffix.encode("utf-8"))
    while len(stem.encode("utf-8")) > room:
        stem = stem[:-1]
    return stem.rstrip() + suffix


def upscaled_name(source_name: str, choice: UpscaleChoice, size: tuple[int, int]) -> str:
    """'<source> x4', or '<source> 2048x2048' for a target size; within Blender's 63 bytes."""
    suffix = f" x{choice.factor}" if choice.factor is not None else f" {size[0]}x{size[1]}"
    return _fit(source_name, suffix)


def map_name(source_name: str, label: str) -> str:
    """The image of one map of a texture set: '<source> normal'."""
    return _fit(source_name, f" {label}")


def material_name(source_name: str) -> str:
    return _fit(source_name, " PBR")


def chosen_maps(flags: Iterable[str]) -> tuple[str, ...]:
    """The material's maps the artist ticked (``material_maps``), in MATERIAL_MAPS order;
    ValueError naming the setting when none is."""
    chosen = tuple(m for m in MATERIAL_MAPS if m in set(flags))
    if not chosen:
        raise ValueError("Maps: tick at least one of normal, roughness and height")
    return chosen


def maps_by_label(labels: Iterable[Optional[str]], names: Iterable[str],
                  wanted: Iterable[str] = MATERIAL_MAPS) -> dict[str, str]:
    """{map label: image name} of a texture set's results; ProtocolError if a map asked for
    is missing (the daemon labels every image of a texture set)."""
    found = {label: name for label, name in zip(labels, names) if label}
    missing = [m for m in wanted if m not in found]
    if missing:
        raise ProtocolError(ErrorCode.INTERNAL, "the daemon's texture set lacks the "
                            f"{', '.join(missing)} map(s)", "result.images")
    return found


def storage_note(blend_saved: bool) -> str:
    """Where Make Material keeps the maps, for the panel."""
    if blend_saved:
        return "Maps are saved as PNGs in 'atelier' beside the .blend"
    return "The .blend is not saved yet: the maps will be packed into it"


def capability_problem(needed: str, capabilities: Iterable[str],
                       connected: bool) -> Optional[str]:
    """Why a connected daemon cannot run a job needing ``needed`` (welcome.capabilities:
    upscale, refine, texture_set); None if it can, or while not connected (the daemon's
    own answer comes then)."""
    if not connected or needed in capabilities:
        return None
    return (f"this Atelier daemon does not run '{needed}' jobs (it is older than the "
            "game-asset kit): update and restart it")


def daemon_upscalers(models: Iterable[ModelInfo]) -> list[str]:
    """The names of the daemon's upscalers (kind "upscaler"), in its order."""
    return [m.name for m in models if getattr(m, "kind", "") == "upscaler"]


class UpscalerMenu(NameNumbers):
    """The Upscaler dropdown: Lanczos, the daemon's upscalers, the chosen one if missing."""

    def build(self, upscalers: Iterable[str], chosen: str,
              listed_now: bool = True) -> list[EnumItem]:
        items = [(UPSCALER_LANCZOS, "Lanczos (no model)",
                  "A plain Lanczos resize: fast, no model, no added detail", 0)]
        listed = set()
        for name in upscalers:
            if name and name not in listed:
                listed.add(name)
                items.append((name, name, f"The daemon's upscaler model '{name}'",
                              self.number(name)))
        return self._keep(items + self._unlisted(chosen, listed, listed_now, "upscalers"))
