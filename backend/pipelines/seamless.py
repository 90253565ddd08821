"""Seamless textures: the seam metric, and "make seamless" (offset, repaint the seams, offset back)."""

from __future__ import annotations

from typing import Literal

import numpy as np

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
