"""Overlapping tiles over a large image, and the weights that blend them back seamlessly.

A ``TileGrid`` places tiles of one size along each axis. On an axis that does not wrap,
the first tile starts at 0 and the last ends at the border, the others spread evenly
between (every pixel covered, each overlap at least ``overlap``). On a wrapped axis
(seamless textures) the tiles are spaced evenly around the circle and a tile that crosses
the border takes its pixels from the other side, so the grid has no edge at all; where
the image's side divides evenly, rolling the image by one stride moves every tile onto
its neighbour's place, which makes tiled work wrap-equivariant.

Blend weights are a partition of unity: per axis, each tile's ramp (flat inside, a
smooth cosine fall over the overlap) divided by the sum of all ramps at that pixel; the
2-D weight of a tile is the product of its two axis weights. Every pixel's weights sum
to 1, so accumulating ``weight * tile`` needs no second buffer of weight sums, and no
tile border shows: each weight is smooth and reaches the border of its tile near zero.

Positions are multiples of ``multiple`` (8 for pixels that map onto latents), so the
same grid divided by the VAE factor is the latent grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np


@dataclass(frozen=True)
class AxisTiles:
    """The tiles along one axis: where each starts (may pass the end when ``wrap``)."""
    size: int                   # the image's side
    tile: int                   # a tile's side (== size for a single tile covering it)
    starts: tuple[int, ...]
    wrap: bool

    def indices(self, index: int) -> np.ndarray:
        """The image pixels tile ``index`` covers, in order (taken modulo the side)."""
        start = self.starts[index]
        return np.arange(start, start + self.tile) % self.size

    def weights(self) -> np.ndarray:
        """``(len(starts), tile)`` float32 weights; at every image pixel those of the tiles
        covering it sum to 1 (a partition of unity)."""
        ramp = _ramp(self.tile, self.overlap_of_ramp())
        total = np.zeros(self.size, np.float64)
        for index in range(len(self.starts)):
            np.add.at(total, self.indices(index), ramp)
        out = np.stack([ramp / total[self.indices(i)] for i in range(len(self.starts))])
        return out.astype(np.float32)

    def overlap_of_ramp(self) -> int:
        """How far a tile's ramp reaches in: the smallest overlap between neighbours."""
        if len(self.starts) < 2:
            return 0
        ends = [start + self.tile for start in self.starts]
        overlaps = [ends[i] - self.starts[i + 1] for i in range(len(self.starts) - 1)]
        if self.wrap:
            overlaps.append(ends[-1] - (self.starts[0] + self.size))
        return max(1, min(overlaps))

    def scaled(self, factor: int) -> "AxisTiles":
        """The same tiles on an image ``factor`` times smaller (latents: the VAE factor)."""
        return AxisTiles(self.size // factor, self.tile // factor,
                         tuple(s // factor for s in self.starts), self.wrap)

    def times(self, factor: int) -> "AxisTiles":
        """The same tiles on an image ``factor`` times larger (a super-resolution output)."""
        return AxisTiles(self.size * factor, self.tile * factor,
                         tuple(s * factor for s in self.starts), self.wrap)


def _ramp(tile: int, overlap: int) -> np.ndarray:
    """1 inside, a raised-cosine fall over ``overlap`` pixels to each end, never 0."""
    if overlap <= 0:
        return np.ones(tile, np.float64)
    distance = np.minimum(np.arange(tile), np.arange(tile)[::-1]) + 0.5
    unit = np.clip(distance / overlap, 0.0, 1.0)
    return np.maximum(0.5 - 0.5 * np.cos(np.pi * unit), 1e-4)


def axis_tiles(size: int, tile: int, overlap: int, wrap: bool, multiple: int = 8) -> AxisTiles:
    """Tiles of side ``tile`` along a side of ``size`` pixels sharing at least ``overlap``.

    A side no longer than a tile gets one tile covering it (on a wrapped axis it then
    wraps onto itself: the caller makes that tile's own convolutions circular)."""
    if tile <= 0 or size <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"tiles of {tile} overlapping {overlap} over {size} pixels")
    if size <= tile:
        return AxisTiles(size, size, (0,), wrap)
    stride = tile - overlap
    if wrap:
        count = math.ceil(size / stride)
        starts = tuple(_floor(i * size / count, multiple) for i in range(count))
    else:
        count = math.ceil((size - overlap) / stride)
        last = size - tile
        starts = tuple(_floor(i * last / (count - 1), multiple) if i < count - 1 else last
                       for i in range(count))
    return AxisTiles(size, tile, starts, wrap)


def _floor(value: float, multiple: int) -> int:
    return int(value // multiple) * multiple


@dataclass(frozen=True)
class TileGrid:
    """Tiles over a ``width`` x ``height`` image: ``x`` and ``y`` tiles, row-major."""
    x: AxisTiles
    y: AxisTiles

    @staticmethod
    def over(width: int, height: int, tile: int, overlap: int, wrap_x: bool, wrap_y: bool,
             multiple: int = 8) -> "TileGrid":
        return TileGrid(axis_tiles(width, tile, overlap, wrap_x, multiple),
                        axis_tiles(height, tile, overlap, wrap_y, multiple))

    def __len__(self) -> int:
        return len(self.x.starts) * len(self.y.starts)

    def scaled(self, factor: int) -> "TileGrid":
        return TileGrid(self.x.scaled(factor), self.y.scaled(factor))

    def times(self, factor: int) -> "TileGrid":
        return TileGrid(self.x.times(factor), self.y.times(factor))

    def tiles(self) -> Iterator["Tile"]:
        """Every tile with its blend weight, row by row."""
        wx, wy = self.x.weights(), self.y.weights()
        for j in range(len(self.y.starts)):
            for i in range(len(self.x.starts)):
                yield Tile(self.y.indices(j), self.x.indices(i), wy[j][:, None] * wx[i][None, :])


@dataclass(frozen=True)
class Tile:
    """One tile: the image rows and columns it covers (wrapped where the axis wraps) and
    its ``(rows, cols)`` blend weight."""
    rows: np.ndarray
    cols: np.ndarray
    weight: np.ndarray

    @property
    def contiguous(self) -> bool:
        return bool(np.all(np.diff(self.rows) == 1) and np.all(np.diff(self.cols) == 1))

    def take(self, image: np.ndarray) -> np.ndarray:
        """The tile's pixels of an ``(H, W, ...)`` array (a copy where it wraps)."""
        if self.contiguous:
            return image[self.rows[0]:self.rows[-1] + 1, self.cols[0]:self.cols[-1] + 1]
        return image[np.ix_(self.rows, self.cols)]

    def add_to(self, total: np.ndarray, values: np.ndarray) -> None:
        """``total[tile] += weight * values`` for ``(rows, cols, C)`` values."""
        weighted = values * self.weight[..., None]
        if self.contiguous:
            total[self.rows[0]:self.rows[-1] + 1, self.cols[0]:self.cols[-1] + 1] += weighted
        else:
            total[np.ix_(self.rows, self.cols)] += weighted


def blend_tiles(grid: TileGrid, channels: int,
                render: Callable[[int, Tile], np.ndarray]) -> np.ndarray:
    """The uint8 ``(H, W, channels)`` image of ``render(k, tile)`` (float ``(rows, cols,
    channels)`` in 0..255 for the k-th tile, row-major) blended with the tiles' weights.

    Float sums are held for one band of rows only, a tile high: rows that no later tile
    touches are rounded into the output as soon as their band of tiles is done. On a
    wrapped y axis the last band's overflow lands on the first rows, which are kept in
    float until the end."""
    height, width = grid.y.size, grid.x.size
    tile_h, starts = grid.y.tile, grid.y.starts
    head = max(0, starts[-1] + tile_h - height) if grid.y.wrap else 0
    out = np.empty((height, width, channels), np.uint8)
    band = np.zeros((tile_h, width, channels), np.float32)    # rows base .. base + tile_h
    head_sum = np.zeros((head, width, channels), np.float32)  # rows 0 .. head
    tiles = grid.tiles()
    index = 0
    for j, base in enumerate(starts):
        inside = min(tile_h, height - base)      # the band's rows before the wrap
        for _ in grid.x.starts:
            tile = next(tiles)
            weighted = render(index, tile) * tile.weight[..., None]
            index += 1
            band[:inside, tile.cols] += weighted[:inside]
            head_sum[:tile_h - inside, tile.cols] += weighted[inside:]
        done = starts[j + 1] if j + 1 < len(starts) else height
        finished = band[:done - base]
        kept = max(0, min(head, done) - base)    # first rows: the wrap adds to them later
        head_sum[base:base + kept] += finished[:kept]
        out[base + kept:done] = _to_uint8(finished[kept:])
        band[:tile_h - (done - base)] = band[done - base:].copy()
        band[tile_h - (done - base):] = 0.0
    if head:
        out[:head] = _to_uint8(head_sum)
    return out


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
