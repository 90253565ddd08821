"""Inpaint masks and geometry: grow, feather, the context region, and the paste back.

Masks arrive as GRAY8 (255 = repaint) and become float32 arrays in [0, 1]. The final
composite only touches pixels whose feathered mask is above zero; every other pixel of
the input comes back byte-identical.

* ``grow`` N: a square dilation, every pixel within N pixels (Chebyshev distance) of a
  masked pixel takes the largest mask value around it.
* ``feather`` N: two box blurs whose radii sum to ceil(N / 2), so the edge ramps from 0 to
  full over about N pixels centred on the grown edge, and the mask reaches at most
  ceil(N / 2) pixels beyond it. Blurring replicates the border, so a mask that touches
  the image edge stays at full strength there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Box:
    """A rectangle in pixel coordinates, ``x``/``y`` its top-left corner."""
    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    def slices(self) -> tuple[slice, slice]:
        """Index an ``(H, W, ...)`` array with this box."""
        return slice(self.y, self.bottom), slice(self.x, self.right)


def grow_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate by ``pixels`` in every direction (square neighbourhood); same dtype as given."""
    if pixels <= 0:
        return mask
    return _max_filter(_max_filter(mask, pixels, axis=0), pixels, axis=1)


def feather_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Soften the edge over about ``pixels`` pixels; float32 in [0, 1] out."""
    unit = mask.astype(np.float32) / 255.0 if mask.dtype == np.uint8 else mask.astype(np.float32)
    spread = math.ceil(pixels / 2)
    for radius in (spread // 2, spread - spread // 2):
        unit = _box_blur(_box_blur(unit, radius, axis=0), radius, axis=1)
    return np.clip(unit, 0.0, 1.0)


def prepare_mask(mask: np.ndarray, grow: int, feather: int) -> np.ndarray:
    """A GRAY8 mask grown then feathered, as float32 in [0, 1].

    Only the part of the image the grown and feathered mask can reach is processed (the
    rest stays 0), which keeps a small selection on a large canvas cheap."""
    out = np.zeros(mask.shape, np.float32)
    bounds = mask_bounds(mask)
    if bounds is None:
        return out
    # One spare pixel so that the edge the blur replicates is a zero, as in the full image.
    reach = grow + math.ceil(feather / 2) + 1
    height, width = mask.shape
    region = Box(max(0, bounds.x - reach), max(0, bounds.y - reach), 0, 0)
    region = Box(region.x, region.y, min(width, bounds.right + reach) - region.x,
                 min(height, bounds.bottom + reach) - region.y)
    out[region.slices()] = feather_mask(grow_mask(mask[region.slices()], grow), feather)
    return out


def mask_bounds(mask: np.ndarray) -> Optional[Box]:
    """The smallest box holding every pixel above zero; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return Box(int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def context_box(bounds: Box, padding: int, width: int, height: int, multiple: int = 8) -> Box:
    """``bounds`` plus ``padding`` on each side, widened to multiples of ``multiple`` where
    the image allows (keeping the mask centred, shifted inward at the edges), inside the image."""
    x, w = _context_span(bounds.x, bounds.right, padding, width, multiple)
    y, h = _context_span(bounds.y, bounds.bottom, padding, height, multiple)
    return Box(x, y, w, h)


def _context_span(lo: int, hi: int, padding: int, size: int, multiple: int) -> tuple[int, int]:
    lo, hi = max(0, lo - padding), min(size, hi + padding)
    length = min(size, -(-(hi - lo) // multiple) * multiple)
    start = lo - (length - (hi - lo)) // 2
    start = min(max(0, start), size - length)
    return start, length


def composite(base: np.ndarray, generated: np.ndarray, mask: np.ndarray, box: Box) -> np.ndarray:
    """``base`` (H, W, 4) with ``generated`` (box-sized RGB or RGBA) blended in through
    ``mask`` (box-sized float). Generated pixels are opaque; where the mask is 0 the base
    bytes are kept exactly."""
    out = base.copy()
    region = base[box.slices()]
    if generated.shape[2] == 3:
        generated = np.concatenate([generated, np.full(generated.shape[:2] + (1,), 255, np.uint8)], 2)
    weight = mask[..., None]
    blended = region + (generated.astype(np.float32) - region) * weight
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    out[box.slices()] = np.where(weight > 0, blended, region)
    return out


def _max_filter(values: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Running maximum over ``[i - radius, i + radius]`` along ``axis``, zero outside.

    Windows of doubling width (1, 2, 4, ...) make it O(n log radius) instead of O(n radius).
    """
    moved = np.moveaxis(values, axis, 0)
    n, window = moved.shape[0], 2 * radius + 1
    pad = np.zeros((radius,) + moved.shape[1:], moved.dtype)
    run = np.concatenate([pad, moved, pad])   # run[i] = max over a window of `span` from i
    span = 1
    while span * 2 <= window:
        run = np.maximum(run[:-span], run[span:])
        span *= 2
    result = np.maximum(run[:n], run[window - span:window - span + n])
    return np.moveaxis(result, 0, axis)


def _box_blur(values: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Mean over ``[i - radius, i + radius]`` along ``axis``, the border replicated.

    Differences of a running sum; the running sum starts with a 0, so that window i is
    ``sums[i + window] - sums[i]``. Sums are float64: a window of zeros gives exactly 0."""
    if radius <= 0:
        return values
    n, window = values.shape[axis], 2 * radius + 1
    widths = [(0, 0)] * values.ndim
    widths[axis] = (radius + 1, radius)
    padded = np.pad(values.astype(np.float64), widths, mode="edge")
    padded[_along(axis, values.ndim, slice(0, 1))] = 0.0
    sums = np.cumsum(padded, axis=axis)
    windows = sums[_along(axis, values.ndim, slice(window, window + n))] \
        - sums[_along(axis, values.ndim, slice(0, n))]
    return (windows / window).astype(np.float32)


def _along(axis: int, ndim: int, part: slice) -> tuple[slice, ...]:
    """An index taking ``part`` along ``axis`` and everything along the others."""
    index = [slice(None)] * ndim
    index[axis] = part
    return tuple(index)
