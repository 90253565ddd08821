"""Seam metric and the "make seamless" job."""

from __future__ import annotations

import numpy as np
import pytest

from backend.pipelines.seamless import seam_score


def _rgba(rgb: np.ndarray) -> bytes:
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    return np.concatenate([rgb.astype(np.uint8), alpha], axis=-1).tobytes()


def _ramp_image(width: int, height: int) -> np.ndarray:
    """Brightness rises left to right: a hard seam where the right edge meets the left."""
    row = np.linspace(0, 250, width)
    return np.broadcast_to(row[None, :, None], (height, width, 3)).copy()


def test_seam_score_of_a_ramp_is_large_across_x_and_flat_across_y():
    image = _ramp_image(64, 32)
    # wrap step 250 against interior steps of 250/63
    assert seam_score(_rgba(image), 64, 32, "x") == pytest.approx(63, rel=0.05)
    # every row is the same: no seam and no texture on y
    assert seam_score(_rgba(image), 64, 32, "y") == 1.0


def test_seam_score_of_a_periodic_pattern_is_about_one():
    # A triangle wave up and down in steps of 10: the wrap step is like every other step.
    wave = np.concatenate([np.arange(0, 240, 10), np.arange(240, 0, -10)])
    image = np.broadcast_to(wave[:, None, None], (48, 40, 3)).copy()   # varies along y
    assert seam_score(_rgba(image), 40, 48, "y") == pytest.approx(1.0)
    shifted = np.roll(image, 5, axis=0)
    assert seam_score(_rgba(shifted), 40, 48, "y") == pytest.approx(1.0)


def test_seam_score_ignores_alpha_and_checks_sizes():
    image = _ramp_image(16, 8)
    rgba = bytearray(_rgba(image))
    rgba[3::4] = bytes(range(len(rgba) // 4))      # wild alpha changes nothing
    assert seam_score(bytes(rgba), 16, 8, "x") == seam_score(_rgba(image), 16, 8, "x")
    with pytest.raises(ValueError, match="needs 512 bytes"):
        seam_score(b"\0" * 10, 16, 8, "x")
    with pytest.raises(ValueError, match="axis"):
        seam_score(_rgba(image), 16, 8, "z")
