"""Game-asset jobs in Krita terms (PROTOCOL.md 4.5): how big an upscale comes out, where
its layer lands in the scaled document, what the daemon's size limits refuse, and what a
texture set's group and map layers are called. Pure functions; no Krita here.

Upscale makes the document bigger the way Image > Scale does: the image is scaled by
the upscale's factor (width and height apart when a target size changes the aspect a
little, since sizes go in multiples of 8), the user's layers with it, so they stay in
register with the new layer, which holds the upscaled pixels of the region (the whole
canvas, or the selection's bounds) at its scaled place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from .geometry import Bounds, Extent, round_to_multiple
from .protocol.messages import ModelInfo

SIZE_MULTIPLE = 8          # the daemon's output sizes are multiples of 8
# The Upscale size field: a factor, or the longest side of the result (0 = use the factor).
UPSCALE_FACTORS = (2.0, 4.0)
UPSCALE_SIDES = (2048, 4096, 8192)
LANCZOS = "Lanczos (no model)"
TEXTURE_MAPS = ("normal", "height", "roughness")      # the daemon's default set, in order
TEXTURE_SOURCES = ("auto", "marigold", "image")
TEXTURE_GROUP = "[Texture set]"
UPSCALE_HELP = ("Makes the canvas (or the selection's region) bigger into a new layer on "
                "top; the image is scaled with it (as Image > Scale does), so the other "
                "layers stay in register. Refine above 0 repaints the enlarged image in "
                "tiles at that strength with the prompt; Seamless axes (More settings) wrap.")
TEXTURE_HELP = ("Makes PBR maps (normal, height, roughness) of the canvas (or the "
                "selection's region) as a colour texture: a new group of layers, one a map, "
                "only the first shown. Seamless axes (More settings) keep them tiling.")
TEXTURE_SOURCE_HELP = ("auto: Marigold's models where the daemon has them, else maps made "
                       "from the colour itself; marigold: Marigold only (the daemon says how "
                       "to pull it when missing); image: from the colour only (fast).")


def upscale_scale(region: Extent, factor: float, side: int = 0) -> float:
    """How much an upscale enlarges: ``factor``, or what makes the longest side ``side``."""
    return side / region.longest if side else factor


def upscale_extent(region: Extent, factor: float, side: int = 0) -> Extent:
    """The size an upscale of ``region`` comes out at: ``factor`` times it, or its longest
    side made ``side`` (aspect kept) when ``side`` is given; multiples of 8."""
    scale = upscale_scale(region, factor, side)
    return Extent(round_to_multiple(region.width * scale, SIZE_MULTIPLE),
                  round_to_multiple(region.height * scale, SIZE_MULTIPLE))


@dataclass(frozen=True)
class UpscaleLayout:
    """The document after an upscale (``canvas``, scaled as Image > Scale does) and where
    the new layer lands in it (``placed``, the output's size)."""
    canvas: Extent
    placed: Bounds


def upscale_layout(canvas: Extent, region: Bounds, output: Extent, scale: float) -> UpscaleLayout:
    """The scaled document and the new layer's place. The whole canvas becomes exactly the
    output (its sides rounded to multiples of 8); with a selection, the image is scaled
    by ``scale`` and the output lands over the same part of the picture."""
    if region == Bounds.of(canvas):
        return UpscaleLayout(output, Bounds.of(output))
    scaled = Extent(max(output.width, round(canvas.width * scale)),
                    max(output.height, round(canvas.height * scale)))
    x = min(round(region.x * scale), scaled.width - output.width)
    y = min(round(region.y * scale), scaled.height - output.height)
    return UpscaleLayout(scaled, Bounds(x, y, output.width, output.height))


def upscale_problem(layout: UpscaleLayout, max_side: Optional[int],
                    max_pixels: Optional[int]) -> Optional[str]:
    """Why the daemon's upscale limits (welcome ``max_upscale_side`` / ``_pixels``) refuse
    this upscale, naming the size and the limit; None when they allow it (or are unknown).
    The scaled document is held to the same limits: Krita would have to hold it."""
    for what, size in (("the result", layout.placed.extent), ("the scaled image", layout.canvas)):
        if max_side and size.longest > max_side:
            return (f"{what} would be {size}, over the daemon's upscale limit of {max_side} "
                    "pixels a side: choose a smaller size or factor, or select a smaller region")
        if max_pixels and size.pixels > max_pixels:
            return (f"{what} would be {size} ({size.pixels} pixels), over the daemon's upscale "
                    f"limit of {max_pixels} pixels: choose a smaller size or factor")
    return None


def upscale_size_label(factor: float, side: int) -> str:
    """The Upscale size field's entry for a factor or a longest side."""
    return f"longest side {side}" if side else f"{factor:g}x"


def upscale_sizes() -> list[tuple[str, float, int]]:
    """The Upscale size field's entries as (label, factor, side)."""
    return [(upscale_size_label(f, 0), f, 0) for f in UPSCALE_FACTORS] + \
        [(upscale_size_label(2.0, side), 2.0, side) for side in UPSCALE_SIDES]


def upscaler_choices(models: Iterable[ModelInfo],
                     chosen: Optional[str] = None) -> list[tuple[str, Optional[str]]]:
    """The Upscaler field's entries as (label, name): Lanczos (None), then the daemon's
    upscalers (``models`` of kind "upscaler"); a ``chosen`` one it does not list stays,
    marked, so the field shows what a job would send (the docker refuses that job)."""
    choices: list[tuple[str, Optional[str]]] = [(LANCZOS, None)]
    choices += [(info.name, info.name) for info in models if info.kind == "upscaler"]
    if chosen and all(name != chosen for _, name in choices):
        choices.append((f"{chosen} (not listed by the daemon)", chosen))
    return choices


def upscale_layer_name(output: Extent, upscaler: Optional[str], refine: float) -> str:
    """The new layer's name: the size and what made it."""
    made = upscaler or "Lanczos"
    if refine > 0:
        made += f", refined {round(refine * 100)}%"
    return f"[Upscaled {output.width}x{output.height}] {made}"


def texture_group_name(prompt: str, source_name: str, limit: int = 40) -> str:
    """The texture set's group: named after the prompt, else what it was made from."""
    text = " ".join(prompt.split()) or source_name or "canvas"
    if len(text) > limit:
        text = text[:limit - 1].rstrip() + "\u2026"
    return f"{TEXTURE_GROUP} {text}"


def map_layer_names(labels: list[Optional[str]]) -> list[str]:
    """A layer name for each result image: its label (the map), else its number."""
    return [label or f"map {index + 1}" for index, label in enumerate(labels)]
