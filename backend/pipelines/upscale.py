"""Making an image larger: a Lanczos resize, or a super-resolution model run over tiles.

Both honour seamless tiling: on a wrapped axis the image is padded with its own other
side before resampling and the pad is cut away after, so the result wraps exactly as
the input did (an integer factor makes it exactly equivariant: rolling the input by k
pixels rolls the output by k x factor).

A model (``SuperResolution``, loaded by models/upscalers.py) runs over overlapping tiles
of ``tile`` input pixels blended with ``tiles.py``'s weights, so its memory is bounded
by the tile whatever the image's size; on a wrapped axis the image is first padded with
its other side (``model_grid``); the output is the model's own factor, then resampled to
the size asked for.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

import numpy as np
import PIL.Image
import torch

from ..generation import JobCancelled
from .tiles import Tile, TileGrid, blend_tiles
from .tiling import TileAxes

LANCZOS_SUPPORT = 3          # source pixels Lanczos-3 reads on each side, at any scale
UPSCALE_TILE = 256           # input pixels of a super-resolution tile
UPSCALE_OVERLAP = 32


class SuperResolution(Protocol):
    """A loaded super-resolution network: ``(1, 3, h, w)`` in [0, 1] -> ``(1, 3, h*s, w*s)``."""
    scale: int

    def __call__(self, image: torch.Tensor) -> torch.Tensor: ...


def lanczos(image: np.ndarray, width: int, height: int, axes: TileAxes) -> np.ndarray:
    """``image`` (uint8 or float32 ``(H, W, C)``) resampled to ``width`` x ``height``;
    wrapped axes resample as a torus (the other side's pixels feed the border)."""
    src_h, src_w = image.shape[:2]
    if (src_w, src_h) == (width, height):
        return image
    pad_x = _reach(src_w, width) if axes.x else 0
    pad_y = _reach(src_h, height) if axes.y else 0
    padded = np.pad(image, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="wrap")
    # The box is the unpadded image; PIL's filter reads the pad around it for support.
    box = (pad_x, pad_y, pad_x + src_w, pad_y + src_h)
    channels = [PIL.Image.fromarray(np.ascontiguousarray(padded[..., c]))
                .resize((width, height), PIL.Image.LANCZOS, box=box)
                for c in range(image.shape[2])]
    return np.stack([np.asarray(c) for c in channels], axis=2)


def _reach(src: int, dst: int) -> int:
    """Source pixels Lanczos reads beyond the border (more when it shrinks)."""
    return min(src, LANCZOS_SUPPORT * max(1, -(-src // dst)) + 1)


def model_grid(width: int, height: int, axes: TileAxes, tile: int = UPSCALE_TILE,
               overlap: int = UPSCALE_OVERLAP) -> tuple[TileGrid, int, int]:
    """The tiles a model upscale of a ``width`` x ``height`` image runs, and the margins
    (x, y) it first pads the image with on wrapped axes.

    The pad is the image's own other side, ``overlap`` pixels deep (what a tile's edge
    is trusted to need), so every border pixel is seen with its wrapped neighbours, also
    when the whole image fits in one tile."""
    margin_x = overlap if axes.x else 0
    margin_y = overlap if axes.y else 0
    grid = TileGrid.over(width + 2 * margin_x, height + 2 * margin_y, tile, overlap,
                         False, False, multiple=1)
    return grid, margin_x, margin_y


def model_upscale(image: np.ndarray, model: SuperResolution, axes: TileAxes,
                  cancelled: Callable[[], bool], device: torch.device | str = "cpu",
                  tile: int = UPSCALE_TILE, overlap: int = UPSCALE_OVERLAP,
                  on_tile: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """``image`` (uint8 ``(H, W, 3)``) times the model's factor, in blended tiles.

    ``on_tile(done, total)`` after each tile; raises JobCancelled before the next tile once
    ``cancelled()``. Returns uint8 ``(H*s, W*s, 3)``."""
    height, width = image.shape[:2]
    grid, margin_x, margin_y = model_grid(width, height, axes, tile, overlap)
    padded = np.pad(image[..., :3], ((margin_y, margin_y), (margin_x, margin_x), (0, 0)),
                    mode="wrap")
    sources = list(grid.tiles())

    def render(index: int, _target: Tile) -> np.ndarray:
        if cancelled():
            raise JobCancelled()
        pixels = torch.from_numpy(np.ascontiguousarray(sources[index].take(padded)))
        batch = pixels.permute(2, 0, 1)[None].to(device=device, dtype=torch.float32) / 255.0
        with torch.no_grad():
            result = model(batch)
        out = (result[0].clamp(0, 1) * 255.0).permute(1, 2, 0).to("cpu", torch.float32).numpy()
        if on_tile is not None:
            on_tile(index + 1, len(sources))
        return out

    out = blend_tiles(grid.times(model.scale), 3, render)
    top, left = margin_y * model.scale, margin_x * model.scale
    return np.ascontiguousarray(out[top:top + height * model.scale,
                                    left:left + width * model.scale])
