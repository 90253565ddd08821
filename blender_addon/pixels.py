"""Pixel layouts between protocol frames and Blender images. No Blender needed.

Protocol frames hold rows top row first: RGBA8 (4 bytes a pixel) or FLOAT32
(one little-endian float a pixel). Blender's ``Image.pixels`` is a flat float
RGBA buffer with the bottom row first. For byte images Blender stores the
values as they are in the image's colour space (sRGB for colour images); float
images (renders, EXR) hold scene-linear values, so they need the sRGB transfer
function before they become 8-bit pixels a diffusion model expects.
"""

from __future__ import annotations

import numpy as np


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding of 0..1 sRGB values."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 encoding of scene-linear values (clipped to 0..1)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055).astype(np.float32)


def _check_size(name: str, actual: int, width: int, height: int, per_pixel: int) -> None:
    expected = width * height * per_pixel
    if actual != expected:
        raise ValueError(f"{name}: {width}x{height} needs {expected} values, got {actual}")


def rgba8_to_blender(data: bytes, width: int, height: int, *, linear: bool = False) -> np.ndarray:
    """RGBA8 top-first bytes -> flat float32 RGBA bottom-first, for ``pixels.foreach_set``.

    ``linear``: the target image holds scene-linear floats (a float buffer), so
    decode sRGB; byte images take the 0..1 values unchanged.
    """
    _check_size("RGBA8 frame", len(data), width, height, 4)
    rows = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 4)
    out = rows[::-1].astype(np.float32) / 255.0
    if linear:
        out[..., :3] = srgb_to_linear(out[..., :3])
    return out.reshape(-1)


def blender_to_rgba8(pixels: np.ndarray, width: int, height: int, *, linear: bool = False) -> bytes:
    """Flat float RGBA bottom-first (``pixels.foreach_get``) -> RGBA8 top-first bytes.

    ``linear``: the source holds scene-linear floats and is encoded to sRGB.
    """
    flat = np.asarray(pixels, dtype=np.float32).reshape(-1)
    _check_size("Blender pixels", flat.size, width, height, 4)
    rows = flat.reshape(height, width, 4)[::-1].copy()
    if linear:
        rows[..., :3] = linear_to_srgb(rows[..., :3])
    return (np.clip(rows, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).tobytes()


def blender_channel_to_float32(pixels: np.ndarray, width: int, height: int,
                               channel: int = 0) -> bytes:
    """One channel of flat RGBA bottom-first floats -> FLOAT32 top-first little-endian bytes.

    Used for depth: an EXR Z pass loads as an RGBA float image with the depth
    in every colour channel.
    """
    flat = np.asarray(pixels, dtype=np.float32).reshape(-1)
    _check_size("Blender pixels", flat.size, width, height, 4)
    rows = flat.reshape(height, width, 4)[::-1, :, channel]
    return np.ascontiguousarray(rows, dtype="<f4").tobytes()


def float32_rows(data: bytes, width: int, height: int) -> np.ndarray:
    """A FLOAT32 frame payload as a (height, width) array, top row first."""
    _check_size("FLOAT32 frame", len(data) // 4, width, height, 1)
    return np.frombuffer(data, dtype="<f4").reshape(height, width)
