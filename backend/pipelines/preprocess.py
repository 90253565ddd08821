"""Preprocessors: a plain picture -> the control image a ControlNet of each kind was trained on.

These need no weights, only numpy and torch (no OpenCV: the few filters Canny needs are a
dozen lines each here, and OpenCV's wheel would be the daemon's largest dependency for them):

- ``canny``: OpenCV's algorithm without its blur, as the ControlNet annotator runs it:
  3x3 Sobel gradients of the luminance (0..255), non-maximum suppression along the
  gradient direction, then hysteresis (pixels over ``low`` kept where they connect to one
  over ``high``). One-pixel white edges on black.
- ``soft_edge``: the Sobel magnitude of the lightly blurred luminance, blurred again and
  stretched to [0, 1]: soft white edges on black, what HED/PiDiNet give. A flat picture
  has no edges and gives black.
- ``scribble``: the soft edges thresholded and thickened: white strokes on black.
- ``lineart``: the soft edges with less blur, gamma-lifted: thin grey-to-white lines on
  black (line-art ControlNets take light lines on dark; a client showing the result as a
  drawing inverts it, and sends a drawing back with ``invert``).
- ``normal_from_height``: a height field (luminance, bright = raised, or a depth map's
  nearness) -> camera-space normals encoded (n + 1) / 2 (PROTOCOL.md 4.4).

Every image is ``(H, W)`` or ``(H, W, 3)`` float32 in [0, 1], rows top first. ``axes``
makes the filters wrap around on tiled axes (seamless textures), as the networks do.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .tiling import TileAxes

NO_WRAP = TileAxes(False, False)
CANNY_LOW, CANNY_HIGH = 100.0, 200.0      # the ControlNet annotator's defaults, on 0..255
SCRIBBLE_THRESHOLD = 0.25                # of the soft edge's range
NORMAL_RELIEF = 32.0                     # pixels the full height range rises (normal_from_height)
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 or float -> ``(H, W)`` float32 in [0, 1] (Rec. 601, OpenCV's weights)."""
    values = rgb[..., :3].astype(np.float32)
    if rgb.dtype == np.uint8:
        values /= 255.0
    return values @ np.array([0.299, 0.587, 0.114], np.float32)


def _pad(image: np.ndarray, radius: int, axes: TileAxes) -> np.ndarray:
    """Pad ``radius`` pixels: around on wrapped axes, by the edge pixels on the others."""
    image = np.pad(image, ((radius, radius), (0, 0)), mode="wrap" if axes.y else "edge")
    return np.pad(image, ((0, 0), (radius, radius)), mode="wrap" if axes.x else "edge")


def _filter(image: np.ndarray, kernel: np.ndarray, axes: TileAxes) -> np.ndarray:
    """2-D correlation of ``image`` with an odd square ``kernel``, same size out."""
    radius = kernel.shape[0] // 2
    padded = torch.from_numpy(_pad(image, radius, axes))[None, None]
    out = F.conv2d(padded, torch.from_numpy(np.ascontiguousarray(kernel))[None, None])
    return out[0, 0].numpy()


def blur(image: np.ndarray, sigma: float, axes: TileAxes = NO_WRAP) -> np.ndarray:
    """Gaussian blur of an ``(H, W)`` image (separable, 3 sigma each side)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    row = np.zeros((2 * radius + 1, 2 * radius + 1), np.float32)
    row[radius] = taps
    return _filter(_filter(image, row, axes), row.T, axes)


def sobel(image: np.ndarray, axes: TileAxes = NO_WRAP) -> tuple[np.ndarray, np.ndarray]:
    """(d/dx, d/dy) of an ``(H, W)`` image by 3x3 Sobel kernels; y grows down the rows."""
    return _filter(image, _SOBEL_X, axes), _filter(image, _SOBEL_X.T, axes)


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else luminance(image)


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None].astype(np.float32), 3, axis=2)


# ------------------------------------------------------------------ canny

def canny_edges(image: np.ndarray, low: float = CANNY_LOW, high: float = CANNY_HIGH,
                axes: TileAxes = NO_WRAP) -> np.ndarray:
    """Canny edges of a picture as an ``(H, W)`` bool map."""
    grey = _grey(image) * 255.0
    gx, gy = sobel(grey, axes)
    magnitude = np.hypot(gx, gy)
    thin = _non_maximum(magnitude, gx, gy, axes)
    return _hysteresis(thin >= high, thin >= low, axes)


def _non_maximum(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray,
                 axes: TileAxes) -> np.ndarray:
    """``magnitude`` where it is a maximum along the gradient direction, else 0.

    The direction is rounded to 0, 45, 90 or 135 degrees. As in OpenCV, a pixel must beat
    the neighbour behind it and at least equal the one ahead, so a step edge, whose two
    sides have equal gradients, keeps exactly one of them."""
    padded = _pad(magnitude, 1, axes) if axes.any else np.pad(magnitude, 1)
    height, width = magnitude.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]

    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = ((angle + 22.5) // 45).astype(int) % 4   # 0: horizontal gradient, 1: 45, 2: 90, 3: 135
    keep = np.zeros(magnitude.shape, bool)
    for index, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead, behind = shifted(dy, dx), shifted(-dy, -dx)
        keep |= (sector == index) & (magnitude > behind) & (magnitude >= ahead)
    return np.where(keep, magnitude, 0.0)


def _hysteresis(strong: np.ndarray, weak: np.ndarray, axes: TileAxes) -> np.ndarray:
    """The ``weak`` pixels 8-connected (through weak pixels) to a ``strong`` one."""
    grown = torch.from_numpy(strong.astype(np.float32))[None, None]
    allowed = torch.from_numpy(weak.astype(np.float32))[None, None]
    pad_mode = ("circular" if axes.x else "constant", "circular" if axes.y else "constant")
    while True:
        before = int(grown.sum())
        for _ in range(8):    # several dilations between the (slower) convergence checks
            wide = F.pad(grown, (1, 1, 0, 0), mode=pad_mode[0])
            wide = F.pad(wide, (0, 0, 1, 1), mode=pad_mode[1])
            grown = F.max_pool2d(wide, 3, stride=1) * allowed
        if int(grown.sum()) == before:
            return grown[0, 0].numpy() > 0


def canny(image: np.ndarray, axes: TileAxes = NO_WRAP) -> np.ndarray:
    """Canny control image: white one-pixel edges on black, ``(H, W, 3)``."""
    return _rgb(canny_edges(image, axes=axes))


# ------------------------------------------------------------------ soft edges and lines

def _edge_strength(image: np.ndarray, before: float, after: float, axes: TileAxes) -> np.ndarray:
    """Sobel magnitude of the luminance, blurred ``before`` and ``after``, over [0, 1]
    (each image's own strongest edge = 1); all 0 for a flat picture."""
    grey = blur(_grey(image), before, axes) if before > 0 else _grey(image)
    gx, gy = sobel(grey, axes)
    magnitude = np.hypot(gx, gy)
    if after > 0:
        magnitude = blur(magnitude, after, axes)
    peak = float(magnitude.max())
    if peak < 1e-4:        # no edge worth the name: float noise of a flat picture
        return np.zeros(magnitude.shape, np.float32)
    return np.clip(magnitude / peak, 0.0, 1.0).astype(np.float32)


def soft_edge(image: np.ndarray, axes: TileAxes = NO_WRAP) -> np.ndarray:
    """Soft-edge control image (HED/PiDiNet-like): white soft edges on black."""
    return _rgb(_edge_strength(image, 1.0, 1.5, axes))


def scribble(image: np.ndarray, axes: TileAxes = NO_WRAP) -> np.ndarray:
    """Scribble control image: the soft edges over a threshold, thickened to strokes."""
    strokes = _edge_strength(image, 1.0, 1.5, axes) > SCRIBBLE_THRESHOLD
    thick = F.max_pool2d(torch.from_numpy(strokes.astype(np.float32))[None, None], 3, stride=1,
                         padding=1)[0, 0].numpy()
    return _rgb(thick)


def lineart(image: np.ndarray, axes: TileAxes = NO_WRAP) -> np.ndarray:
    """Line-art control image: thin light lines on black."""
    return _rgb(_edge_strength(image, 0.7, 0.0, axes) ** 0.6)


# ------------------------------------------------------------------ normals

def normal_from_height(height: np.ndarray, axes: TileAxes = NO_WRAP,
                       relief: float = NORMAL_RELIEF) -> np.ndarray:
    """Camera-space normals of the surface z = ``relief`` x ``height`` (``height``: ``(H, W)``
    in [0, 1], 1 nearest; z in pixels), encoded (n + 1) / 2: +X right, +Y up, +Z towards
    the camera. A flat height gives (0.5, 0.5, 1) everywhere."""
    smooth = blur(height.astype(np.float32), 1.0, axes)
    gx, gy = sobel(smooth, axes)
    # A 3x3 Sobel sums 8 x the slope per pixel; rows grow down while +Y is up.
    dz_dx, dz_dy = relief * gx / 8.0, -relief * gy / 8.0
    normal = np.stack([-dz_dx, -dz_dy, np.ones_like(dz_dx)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    return ((normal + 1.0) / 2.0).astype(np.float32)


def normal_from_picture(image: np.ndarray, axes: TileAxes = NO_WRAP) -> np.ndarray:
    """Normals of a picture read as a height field: bright = raised."""
    return normal_from_height(_grey(image), axes)


# Preprocessors that need no weights, by control kind (depth and pose need a model).
BUILT_IN = {"canny": canny, "softedge": soft_edge, "scribble": scribble, "lineart": lineart,
            "normal": normal_from_picture}
