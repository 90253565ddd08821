"""Mask grow/feather, the inpaint context region and the paste back (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.pipelines.masks import (Box, composite, context_box, feather_mask, grow_mask,
                                     mask_bounds, prepare_mask)


def _brute_grow(mask: np.ndarray, radius: int) -> np.ndarray:
    out = np.zeros_like(mask)
    height, width = mask.shape
    for y in range(height):
        for x in range(width):
            out[y, x] = mask[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1].max()
    return out


@pytest.mark.parametrize("radius", [1, 2, 3, 5, 8, 17, 60])
def test_grow_is_a_square_max_filter(radius):
    rng = np.random.default_rng(radius)
    mask = np.where(rng.random((23, 31)) < 0.03, rng.integers(1, 256, (23, 31)), 0).astype(np.uint8)
    assert np.array_equal(grow_mask(mask, radius), _brute_grow(mask, radius))


def test_grow_zero_is_identity():
    mask = np.eye(5, dtype=np.uint8) * 255
    assert grow_mask(mask, 0) is mask


def test_feather_ramps_and_stays_within_half_its_width():
    mask = np.zeros((50, 50), np.uint8)
    mask[15:35, 15:35] = 255
    for feather in (1, 4, 9):
        soft = feather_mask(mask, feather)
        reach = math.ceil(feather / 2)
        assert soft.dtype == np.float32
        assert mask_bounds(soft) == Box(15 - reach, 15 - reach, 20 + 2 * reach, 20 + 2 * reach)
        assert soft[20, 20] == 1.0                          # the core stays full strength
        row = soft[20, 15 - reach:16]
        assert np.all(np.diff(row) > 0)                     # a rising ramp into the mask
        assert 0 < soft[20, 15 - reach] < soft[20, 15] < 1


def test_feather_keeps_full_strength_at_the_image_border():
    mask = np.zeros((20, 20), np.uint8)
    mask[:, :8] = 255
    soft = feather_mask(mask, 6)
    assert np.all(soft[:, 0] == 1.0)
    assert np.all(soft[:, 12:] == 0.0)


def test_prepare_mask_grows_then_feathers():
    mask = np.zeros((30, 30), np.uint8)
    mask[14, 14] = 255
    prepared = prepare_mask(mask, grow=3, feather=4)
    assert mask_bounds(prepared) == Box(14 - 5, 14 - 5, 11, 11)
    assert prepared[14, 14] == 1.0


def test_mask_bounds_of_empty_mask_is_none():
    assert mask_bounds(np.zeros((4, 4), np.float32)) is None


def test_context_box_pads_aligns_and_centres():
    box = context_box(Box(30, 20, 10, 5), padding=4, width=100, height=80, multiple=8)
    assert box.width % 8 == 0 and box.height % 8 == 0
    assert box.x <= 26 and box.right >= 44 and box.y <= 16 and box.bottom >= 29
    assert (box.width, box.height) == (24, 16)


def test_context_box_shifts_inward_at_edges_and_clamps_to_the_image():
    near_corner = context_box(Box(0, 60, 3, 4), padding=8, width=64, height=64)
    assert near_corner.x == 0 and near_corner.bottom == 64
    assert near_corner.width % 8 == 0 and near_corner.height % 8 == 0
    whole = context_box(Box(10, 10, 40, 40), padding=100, width=64, height=48)
    assert whole == Box(0, 0, 64, 48)


def test_composite_keeps_bytes_where_the_mask_is_zero():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    generated = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 2:6] = 1.0
    mask[1, 1] = 0.5
    box = Box(4, 4, 8, 8)
    out = composite(base, generated, mask, box)
    changed = np.zeros((16, 16), bool)
    changed[4:12, 4:12] = mask > 0
    assert np.array_equal(out[~changed], base[~changed])
    assert np.array_equal(out[6:10, 6:10, :3], generated[2:6, 2:6])
    assert np.all(out[6:10, 6:10, 3] == 255)                 # repainted pixels are opaque
    expected = np.rint(base[5, 5, :3] + (generated[1, 1].astype(np.float32) - base[5, 5, :3]) * 0.5)
    assert np.array_equal(out[5, 5, :3], expected.astype(np.uint8))


@pytest.mark.parametrize("seed", range(12))
def test_prepare_mask_on_the_mask_region_equals_the_whole_image(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((60, 70), np.uint8)
    y, x = rng.integers(0, 60), rng.integers(0, 70)
    mask[y:y + rng.integers(1, 20), x:x + rng.integers(1, 20)] = rng.integers(1, 256)
    grow, feather = int(rng.integers(0, 10)), int(rng.integers(0, 12))
    assert np.array_equal(prepare_mask(mask, grow, feather),
                          feather_mask(grow_mask(mask, grow), feather))
