"""Blender's render passes as control images (PROTOCOL.md 4.4). No Blender needed.

Blender's Normal pass holds world-space normals; the protocol's normal control is in camera
space (+X right, +Y up, +Z towards the camera, which is Blender's own camera space: cameras
look down their -Z) encoded as (n + 1) / 2, so a surface facing the camera is
RGB (128, 128, 255). The view matrix's rotation takes one to the other. A Freestyle line
pass holds the lines in its alpha; line controls want light lines on a dark ground.

Inputs are Blender's flat float RGBA pixels, bottom row first (``Image.pixels``); outputs are
RGBA8 frame payloads (or, for exact normals, FLOAT32X3), top row first.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Pixels where the Normal pass holds no normal (nothing was hit): black, which no normal
# encodes (it would be (-1, -1, -1)), so models read it as "no surface", as the
# background of the normal maps they were trained on.
NORMAL_BACKGROUND = (0, 0, 0)
NORMAL_MIN_LENGTH = 0.5     # shorter normals are background (or a pixel mostly background)
HALF_NUDGE = 1e-3           # of a byte: rounds exact halves (components of 0) up despite noise


def _rows(pixels: Sequence[float], width: int, height: int) -> np.ndarray:
    """Flat RGBA bottom-first floats as (height, width, 4), top row first."""
    flat = np.asarray(pixels, dtype=np.float32).reshape(-1)
    if flat.size != width * height * 4:
        raise ValueError(f"Blender pixels: {width}x{height} needs {width * height * 4} "
                         f"values, got {flat.size}")
    return flat.reshape(height, width, 4)[::-1]


def view_rotation(view: Sequence[Sequence[float]]) -> np.ndarray:
    """The rotation of a 4x4 (or 3x3) world-to-camera matrix, any scale taken out: the
    3x3 that turns world directions into camera-space ones."""
    matrix = np.asarray(view, dtype=np.float64)[:3, :3]
    lengths = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.all(lengths > 1e-12):
        raise ValueError("the view matrix is degenerate (a camera scaled to zero?)")
    return matrix / lengths


def camera_space_normals(world: np.ndarray, view: Sequence[Sequence[float]]) -> np.ndarray:
    """World-space normals (..., 3) turned into camera space by the view matrix's rotation
    and made unit length again (a pixel's normal is an average over its samples); normals
    shorter than NORMAL_MIN_LENGTH come back as zeros (no surface there). float32."""
    normals = np.asarray(world, dtype=np.float32) @ view_rotation(view).T.astype(np.float32)
    length = np.sqrt(np.einsum("...i,...i->...", normals, normals))
    normals /= np.maximum(length, NORMAL_MIN_LENGTH)[..., None]
    normals[length < NORMAL_MIN_LENGTH] = 0.0
    return normals


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """Camera-space unit normals (H, W, 3) as RGBA8 (H, W, 4): each component n as
    round((n + 1) / 2 * 255); zero vectors (no surface) as NORMAL_BACKGROUND; opaque."""
    normals = np.asarray(normals, dtype=np.float32)
    # A component of 0 lands exactly halfway between two bytes (127.5): the small nudge
    # makes it 128 also when float noise leaves it a hair below 0.
    rgb = np.floor((normals + 1.0) * 127.5 + (0.5 + HALF_NUDGE))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    rgb[~np.any(normals != 0.0, axis=-1)] = NORMAL_BACKGROUND
    alpha = np.full(normals.shape[:-1] + (1,), 255, np.uint8)
    return np.concatenate([rgb, alpha], axis=-1)


def normal_pass_vectors(pixels: Sequence[float], width: int, height: int,
                        view: Sequence[Sequence[float]]) -> np.ndarray:
    """Blender's Normal pass (world space, flat RGBA bottom-first, as read from an EXR) as
    unit camera-space normals (H, W, 3) float32, top row first, seen through the camera of
    ``view``; zeros where no surface is."""
    return camera_space_normals(_rows(pixels, width, height)[..., :3], view)


def normal_pass_to_rgba8(pixels: Sequence[float], width: int, height: int,
                         view: Sequence[Sequence[float]]) -> bytes:
    """The RGBA8 payload of a normal control from Blender's Normal pass (as
    :func:`normal_pass_vectors`)."""
    return encode_normals(normal_pass_vectors(pixels, width, height, view)).tobytes()


def float32x3_payload(normals: np.ndarray) -> bytes:
    """Camera-space normals (H, W, 3) as a FLOAT32X3 payload (PROTOCOL.md 2): the vectors
    themselves, three little-endian floats a pixel, top row first."""
    return np.ascontiguousarray(normals, dtype="<f4").tobytes()


def line_pass_to_rgba8(pixels: Sequence[float], width: int, height: int) -> bytes:
    """A Freestyle line pass (lines in its alpha over transparency, flat RGBA bottom-first)
    as the RGBA8 payload of a line-art control: light lines on black, opaque."""
    alpha = np.clip(_rows(pixels, width, height)[..., 3], 0.0, 1.0)
    grey = np.floor(alpha * 255.0 + 0.5).astype(np.uint8)
    return np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1).tobytes()
