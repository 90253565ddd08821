"""Small immutable geometry types and the arithmetic of regions and model sizes.

Pure Python, no Krita: everything here is unit-tested outside the host.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Extent:
    """A width and height in pixels."""
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width < 0 or self.height < 0:
            raise ValueError(f"extent {self.width}x{self.height} is negative")

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def longest(self) -> int:
        return max(self.width, self.height)

    @property
    def is_empty(self) -> bool:
        return self.width == 0 or self.height == 0

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Bounds:
    """A rectangle in document pixels: top-left corner and extent."""
    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width < 0 or self.height < 0:
            raise ValueError(f"bounds {self.width}x{self.height} are negative")

    @staticmethod
    def of(extent: Extent) -> "Bounds":
        return Bounds(0, 0, extent.width, extent.height)

    @property
    def extent(self) -> Extent:
        return Extent(self.width, self.height)

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    @property
    def is_empty(self) -> bool:
        return self.width == 0 or self.height == 0

    def expanded(self, pad: int) -> "Bounds":
        return Bounds(self.x - pad, self.y - pad, self.width + 2 * pad, self.height + 2 * pad)

    def clamped(self, canvas: Extent) -> "Bounds":
        """The part of these bounds inside the canvas (empty bounds when they miss it)."""
        x0, y0 = max(self.x, 0), max(self.y, 0)
        x1, y1 = min(self.right, canvas.width), min(self.bottom, canvas.height)
        if x1 <= x0 or y1 <= y0:
            return Bounds(x0, y0, 0, 0)
        return Bounds(x0, y0, x1 - x0, y1 - y0)

    def relative_to(self, outer: "Bounds") -> "Bounds":
        """These bounds in the coordinates of ``outer``'s top-left corner."""
        return Bounds(self.x - outer.x, self.y - outer.y, self.width, self.height)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}+{self.x}+{self.y}"


@dataclass(frozen=True)
class ResolutionRange:
    """The image sizes a model family works well at.

    The longest side of what is sent lies in ``[min_side, max_side]`` where the
    canvas allows it, and both sides are multiples of ``multiple``.
    """
    min_side: int = 512
    max_side: int = 1024
    multiple: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.min_side <= self.max_side:
            raise ValueError(f"resolution range {self.min_side}..{self.max_side} is empty")
        if self.multiple <= 0 or self.max_side < self.multiple:
            raise ValueError(f"multiple {self.multiple} does not fit max side {self.max_side}")

    def capped(self, max_side: int) -> "ResolutionRange":
        """This range limited by a daemon's own ``max_side``."""
        top = max(self.multiple, min(self.max_side, max_side))
        return ResolutionRange(min(self.min_side, top), top, self.multiple)


# Where each model family gives its best pictures (longest side, pixels).
FAMILY_RANGES: dict[str, ResolutionRange] = {
    "sd15": ResolutionRange(512, 768),
    "sd15_inpaint": ResolutionRange(512, 768),
    "sd2": ResolutionRange(512, 768),
    "sd2_depth": ResolutionRange(512, 768),
    "sd2_inpaint": ResolutionRange(512, 768),
    "sdxl": ResolutionRange(1024, 1536),
    "sdxl_inpaint": ResolutionRange(1024, 1536),
    "sdxl_refiner": ResolutionRange(1024, 1536),
    # the diffusion transformers: trained at about a megapixel, in 16-pixel tokens
    "flux": ResolutionRange(1024, 1536, 16),
    "flux_fill": ResolutionRange(1024, 1536, 16),
    "flux_control": ResolutionRange(1024, 1536, 16),
    "sd3": ResolutionRange(1024, 1536, 16),
    "chroma": ResolutionRange(1024, 1536, 16),
    "zimage": ResolutionRange(1024, 1536, 16),
}
DEFAULT_RANGE = ResolutionRange(512, 1024)


def range_for_family(family: str | None) -> ResolutionRange:
    return FAMILY_RANGES.get(family or "", DEFAULT_RANGE)


def round_to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple``, never below one multiple."""
    return max(multiple, int(round(value / multiple)) * multiple)


def fit_extent(extent: Extent, resolution: ResolutionRange) -> Extent:
    """The size to generate at for a region of ``extent`` pixels.

    Scales so the longest side lies in the range (down for 4k canvases, up for
    small selections), keeps the aspect ratio, and rounds each side to the
    range's multiple without passing ``max_side``.
    """
    if extent.is_empty:
        raise ValueError("cannot fit an empty extent")
    longest = extent.longest
    if longest > resolution.max_side:
        scale = resolution.max_side / longest
    elif longest < resolution.min_side:
        scale = resolution.min_side / longest
    else:
        scale = 1.0
    m = resolution.multiple
    top = resolution.max_side - resolution.max_side % m
    width = min(round_to_multiple(extent.width * scale, m), top)
    height = min(round_to_multiple(extent.height * scale, m), top)
    return Extent(width, height)


def context_region(selection: Bounds, canvas: Extent, *, padding: int, min_size: int = 0) -> Bounds:
    """The canvas region to send around a selection so a fill matches its neighbourhood.

    The selection is padded by ``padding`` pixels on every side, then widened
    (and shifted to stay inside the canvas) until each side is at least
    ``min_size`` where the canvas is that big, and finally clamped to the canvas.
    """
    if selection.is_empty:
        raise ValueError("the selection is empty")
    region = selection.expanded(max(0, padding)).clamped(canvas)
    width = max(region.width, min(min_size, canvas.width))
    height = max(region.height, min(min_size, canvas.height))
    x = _centred_start(region.x, region.width, width, canvas.width)
    y = _centred_start(region.y, region.height, height, canvas.height)
    return Bounds(x, y, width, height)


def _centred_start(start: int, size: int, new_size: int, limit: int) -> int:
    grown = start - (new_size - size) // 2
    return min(max(grown, 0), limit - new_size)


def default_padding(selection: Bounds, minimum: int = 32) -> int:
    """Context around a selection: half its longest side, at least ``minimum`` pixels."""
    return max(minimum, max(selection.width, selection.height) // 2)


def thumbnail_extent(source: Extent, side: int) -> Extent:
    """``source`` scaled to fit a ``side`` x ``side`` square, keeping its aspect."""
    scale = side / max(source.width, source.height, 1)
    return Extent(max(1, round(source.width * scale)), max(1, round(source.height * scale)))


def fit_within(source: Extent, side: int) -> Extent:
    """``source`` scaled down (never up) so its longest side is at most ``side``."""
    if source.longest <= side:
        return source
    return thumbnail_extent(source, side)
