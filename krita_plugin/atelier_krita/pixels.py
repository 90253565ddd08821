"""Pixel buffers in pure Python: channel order, masks, alpha.

Krita hands out BGRA 8-bit (``Document.pixelData``, ``Node.pixelData``) and
one byte a pixel for selections; the protocol speaks RGBA8 and GRAY8. No numpy
(Krita's official builds lack it), so every operation works on whole ``bytes``
objects through slicing, ``map`` and ``accumulate``, which run in C, rather
than through Python loops over pixels. Nothing here touches Qt or Krita: the
controller runs the heavy ones on its worker thread.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import accumulate
from operator import sub
from typing import Callable

from .geometry import Extent


# Bytes a swap works on at once: each of its steps holds Python's GIL for about a
# millisecond, where one step over a 4096x4096 canvas (64 MB) held it, and so Qt's
# thread, for a quarter of a second.
SWAP_CHUNK = 1 << 20


def swap_red_blue(data: bytes) -> bytes:
    """BGRA <-> RGBA (the same swap both ways)."""
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes is not a whole number of 4-byte pixels")
    if len(data) <= SWAP_CHUNK:
        return _swap_red_blue(data)
    view = memoryview(data)
    return b"".join(_swap_red_blue(bytes(view[start:start + SWAP_CHUNK]))
                    for start in range(0, len(data), SWAP_CHUNK))


def _swap_red_blue(data: bytes) -> bytes:
    out = bytearray(data)
    out[0::4] = data[2::4]
    out[2::4] = data[0::4]
    return bytes(out)


bgra_to_rgba = swap_red_blue
rgba_to_bgra = swap_red_blue


def rgb_to_rgba(rgb: bytes) -> bytes:
    """RGB8 -> RGBA8, opaque."""
    if len(rgb) % 3:
        raise ValueError(f"{len(rgb)} bytes is not a whole number of 3-byte pixels")
    count = len(rgb) // 3
    out = bytearray(b"\xff" * (4 * count))
    out[0::4], out[1::4], out[2::4] = rgb[0::3], rgb[1::3], rgb[2::3]
    return bytes(out)


def check_size(data: bytes, extent: Extent, channels: int, what: str = "image") -> None:
    expected = extent.pixels * channels
    if len(data) != expected:
        raise ValueError(f"{what} of {extent} with {channels} channel(s) needs {expected} bytes, "
                         f"got {len(data)}")


def luminance(bgra: bytes) -> bytes:
    """One grey byte a pixel from BGRA (Rec. 601 weights); transparent pixels read 0."""
    if len(bgra) % 4:
        raise ValueError(f"{len(bgra)} bytes is not a whole number of 4-byte pixels")
    return bytes(map(_grey, bgra[2::4], bgra[1::4], bgra[0::4], bgra[3::4]))


def _grey(r: int, g: int, b: int, a: int) -> int:
    return ((r * 77 + g * 150 + b * 29 + 128) >> 8) * a // 255


def alpha(rgba: bytes) -> bytes:
    return rgba[3::4]


def with_alpha(rgba: bytes, mask: bytes) -> bytes:
    """``rgba`` with its alpha multiplied by ``mask`` (one byte a pixel)."""
    if len(rgba) != 4 * len(mask):
        raise ValueError(f"mask of {len(mask)} pixels does not match an image of "
                         f"{len(rgba) // 4} pixels")
    out = bytearray(rgba)
    old = rgba[3::4]
    if old.count(255) == len(old):
        out[3::4] = mask
    else:
        out[3::4] = bytes(map(_times, old, mask))
    return bytes(out)


def _times(a: int, b: int) -> int:
    return (a * b + 127) // 255


def transpose(data: bytes, extent: Extent) -> bytes:
    """A one-byte-a-pixel image flipped over its diagonal (its extent becomes h x w)."""
    w = extent.width
    return b"".join(data[x::w] for x in range(w))


def is_empty_mask(mask: bytes) -> bool:
    return mask.count(0) == len(mask)


# Bytes widened to 16-bit lanes of one Python int, so a whole image's per-pixel maximum
# is a handful of big-integer operations (which run in C) instead of a call per pixel.
def _to_lanes(data: bytes) -> int:
    wide = bytearray(2 * len(data))
    wide[0::2] = data
    return int.from_bytes(wide, "little")


def _from_lanes(value: int, count: int) -> bytes:
    return value.to_bytes(2 * count, "little")[0::2]


def _lanes_max(a: int, b: int, low: int, guard: int) -> int:
    # (a + 256 - b) never borrows from the next lane; bit 8 stays set exactly where a >= b.
    a_wins = ((((a | guard) - b) & guard) >> 8) * 255
    return (a & a_wins) | (b & (a_wins ^ low))


def _rows_max(data: bytes, extent: Extent, radius: int) -> bytes:
    """Each pixel becomes the maximum of its row within ``radius`` pixels."""
    w, h = extent.width, extent.height
    pad = bytes(radius)
    stride = w + 2 * radius
    # Padding every row with zeros keeps windows from reaching into the next row.
    buf = b"".join(pad + data[y * w:(y + 1) * w] + pad for y in range(h))
    count = len(buf)
    low = int.from_bytes(b"\xff\x00" * count, "little")
    guard = int.from_bytes(b"\x00\x01" * count, "little")
    lanes = _to_lanes(buf)
    window = 2 * radius + 1
    span = 1
    while span * 2 <= window:  # max over [i, i + 2 span) from [i, i + span), doubling
        lanes = _lanes_max(lanes, lanes >> (16 * span), low, guard)
        span *= 2
    if span < window:
        lanes = _lanes_max(lanes, lanes >> (16 * (window - span)), low, guard)
    out = _from_lanes(lanes, count)
    return b"".join(out[y * stride:y * stride + w] for y in range(h))


RowFilter = Callable[[bytes, Extent, int], bytes]
# Pixels a row filter handles in one go. The plugin runs these filters on a worker thread;
# each C-level step (a big-integer operation, an accumulate) holds Python's GIL, and bands
# this size keep every such step to a few milliseconds, so Qt's thread never waits long.
BAND_PIXELS = 1 << 16


def _in_bands(data: bytes, extent: Extent, radius: int, along_rows: RowFilter) -> bytes:
    """``along_rows`` applied to bands of whole rows (rows are filtered independently)."""
    w, h = extent.width, extent.height
    per_band = max(1, BAND_PIXELS // (w + 2 * radius))
    return b"".join(along_rows(data[top * w:min(h, top + per_band) * w],
                               Extent(w, min(per_band, h - top)), radius)
                    for top in range(0, h, per_band))


def _separable(mask: bytes, extent: Extent, radius: int, along_rows: RowFilter) -> bytes:
    """Apply a row filter along the rows, then (transposed) along the columns."""
    check_size(mask, extent, 1, "mask")
    if radius <= 0 or extent.is_empty:
        return bytes(mask)
    rows = _in_bands(mask, extent, radius, along_rows)
    flipped = Extent(extent.height, extent.width)
    cols = _in_bands(transpose(rows, extent), flipped, radius, along_rows)
    return transpose(cols, flipped)


def grow(mask: bytes, extent: Extent, radius: int) -> bytes:
    """Dilate a one-byte-a-pixel mask by ``radius`` pixels (a square structuring element)."""
    return _separable(mask, extent, radius, _rows_max)


def _rows_box(data: bytes, extent: Extent, radius: int) -> bytes:
    """Each pixel becomes the mean of its row within ``radius`` pixels (edges repeated)."""
    w, h = extent.width, extent.height
    window = 2 * radius + 1
    stride = w + 2 * radius
    rows = []
    for y in range(h):
        row = data[y * w:(y + 1) * w]
        rows.append(row[:1] * radius + row + row[-1:] * radius)
    sums = [0, *accumulate(b"".join(rows))]
    means = bytes(map(_rounded_means(window).__getitem__, map(sub, sums[window:], sums[:-window])))
    # means[i] covers padded pixels i .. i + 2r; row y's outputs start at y * stride.
    return b"".join(means[y * stride:y * stride + w] for y in range(h))


@lru_cache(maxsize=8)
def _rounded_means(window: int) -> bytes:
    """The rounded mean of ``window`` bytes, looked up by their sum."""
    half = window // 2
    return bytes((total + half) // window for total in range(255 * window + 1))


def feather(mask: bytes, extent: Extent, radius: int) -> bytes:
    """Soften a mask's edge with a box blur of ``radius`` pixels (a ramp 2r+1 wide)."""
    return _separable(mask, extent, radius, _rows_box)


def grow_and_feather(mask: bytes, extent: Extent, grow_by: int, feather_by: int) -> bytes:
    return feather(grow(mask, extent, grow_by), extent, feather_by)


def mask_bounds(mask: bytes, extent: Extent) -> tuple[int, int, int, int] | None:
    """(x, y, width, height) of the non-zero pixels, None for an empty mask."""
    check_size(mask, extent, 1, "mask")
    w, h = extent.width, extent.height
    zero_row = bytes(w)
    rows = [y for y in range(h) if mask[y * w:(y + 1) * w] != zero_row]
    if not rows:
        return None
    zero_col = bytes(h)
    flipped = transpose(mask, extent)
    cols = [x for x in range(w) if flipped[x * h:(x + 1) * h] != zero_col]
    return cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
