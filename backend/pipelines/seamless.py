"""Seamless textures: the seam metric, and "make seamless" (offset, repaint the seams, offset back)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from protocol.errors import ErrorCode, ProtocolError

from .masks import prepare_mask

SeamAxis = Literal["x", "y"]


def seam_score(rgba: bytes, width: int, height: int, axis: SeamAxis) -> float:
    """How visible the wrap edge is, relative to the image's own texture.

    Mean absolute RGB difference across the wrap edge (last column -> first column for
    ``"x"``, last row -> first row for ``"y"``) divided by the mean absolute difference
    between adjacent interior columns (rows). About 1 for an image that tiles; well
    above 1 for a hard seam. A flat image scores 1 (no seam) unless its edges differ.
    """
    if len(rgba) != width * height * 4:
        raise ValueError(f"rgba for {width}x{height} needs {width * height * 4} bytes, got {len(rgba)}")
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', not {axis!r}")
    image = np.frombuffer(rgba, np.uint8).reshape(height, width, 4)[..., :3].astype(np.float64)
    if axis == "y":
        image = image.transpose(1, 0, 2)
    if image.shape[1] < 2:
        raise ValueError(f"seam_score along {axis} needs at least 2 pixels on that axis")
    interior = np.abs(np.diff(image, axis=1)).mean()
    wrap = np.abs(image[:, 0] - image[:, -1]).mean()
    if interior == 0.0:
        return 1.0 if wrap == 0.0 else float("inf")
    return float(wrap / interior)


# ------------------------------------------------------------------ make seamless

def seamless_tiling(tiling: str) -> str:
    """The tiling a make_seamless job uses: the one asked for, both axes when none was."""
    return "both" if tiling == "none" else tiling


def half_offset(width: int, height: int, x: bool, y: bool) -> tuple[int, int]:
    """How far make_seamless rolls the texture: half of each axis it fixes."""
    return (width // 2 if x else 0, height // 2 if y else 0)


def roll_image(image: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """Roll an ``(H, W, ...)`` array by ``(dx, dy)`` pixels, wrapping around."""
    dx, dy = offset
    return np.roll(image, (dy, dx), axis=(0, 1))


def seam_band(width: int, height: int, offset: tuple[int, int], seam_width: int) -> np.ndarray:
    """GRAY8 mask (255 = repaint): a band ``seam_width`` wide centred on each former edge.

    After rolling by ``offset``, the old left/right edges meet between columns dx - 1 and
    dx, the old top/bottom edges between rows dy - 1 and dy: a cross when both axes roll.
    """
    mask = np.zeros((height, width), np.uint8)
    dx, dy = offset
    half = seam_width // 2
    if dx:
        mask[:, max(0, dx - half):min(width, dx - half + seam_width)] = 255
    if dy:
        mask[max(0, dy - half):min(height, dy - half + seam_width), :] = 255
    return mask


def seamless_inputs(init: np.ndarray, tiling: str, seam_width: int, grow: int,
                    feather: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """make_seamless as an inpaint: the rolled init, the band mask (grown and feathered
    like any mask, float32) and the offset to roll the result back by."""
    height, width = init.shape[:2]
    x, y = tiling in ("x", "both"), tiling in ("y", "both")
    for on, name, size in ((x, "width", width), (y, "height", height)):
        if on and seam_width >= size:
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"seam_width {seam_width} must be smaller than the texture's "
                                f"{name} {size}", "job.seam_width")
    offset = half_offset(width, height, x, y)
    mask = prepare_mask(seam_band(width, height, offset, seam_width), grow, feather)
    return roll_image(init, offset), mask, offset
