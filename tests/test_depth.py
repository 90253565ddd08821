"""Depth maps: normalisation, background, orientation, and depth-conditioned generation."""

from __future__ import annotations

import numpy as np
import pytest

from backend.pipelines.depth import (
    FOREGROUND_FLOOR,
    control_tensor,
    depth_for_job,
    find_depth_model,
    nearness,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import DepthInput

BLENDER_BACKGROUND = 1e10


def float_frame(values: np.ndarray) -> ImageFrame:
    height, width = values.shape
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.FLOAT32, 0, width, height, new_id(),
                      values.astype("<f4").tobytes())


def test_distance_becomes_nearness_stretched_over_the_foreground():
    # A slanted plane from 10 (near) to 20 (far) units, left to right.
    distance = np.tile(np.linspace(10, 20, 8, dtype=np.float32), (4, 1))
    near = nearness(distance, DepthInput(convention="distance"))
    assert near.dtype == np.float32
    assert near[0, 0] == pytest.approx(1.0) and near[0, -1] == pytest.approx(0.0)
    assert np.all(np.diff(near, axis=1) < 0)          # brighter where nearer
    # Disparity, not distance, is what estimators report: the midpoint 15 is at
    # (1/15 - 1/20) / (1/10 - 1/20) = 1/3, not 1/2.
    mid = nearness(np.array([[10, 15, 20]], np.float32), DepthInput())
    assert mid[0, 1] == pytest.approx(1 / 3)


def test_background_is_far_and_the_foreground_keeps_its_silhouette():
    distance = np.full((6, 6), BLENDER_BACKGROUND, np.float32)
    distance[2:4, 1:5] = [[9.0, 9.5, 10.0, 10.5], [9.0, 9.5, 10.0, 10.5]]
    distance[0, 0] = np.nan
    distance[0, 1] = np.inf
    distance[0, 2] = -1.0                             # no distance at all
    near = nearness(distance, DepthInput(convention="distance", background_at=1e9))
    background = np.ones((6, 6), bool)
    background[2:4, 1:5] = False
    assert np.all(near[background] == 0.0)
    assert near[2, 1] == pytest.approx(1.0)
    # the farthest surface is above the empty background
    assert near[2, 4] == pytest.approx(FOREGROUND_FLOOR)
    # the 1e10 never blends into the object when resized
    resized = depth_for_job(float_frame(distance), DepthInput(background_at=1e9), 12, 12)
    assert resized.shape == (12, 12) and resized.max() <= 1.0 and resized.min() >= 0.0


def test_normalized_convention_is_kept_and_background_below_threshold_dropped():
    values = np.array([[1.0, 0.5, 0.05, 1.7]], np.float32)
    near = nearness(values, DepthInput(convention="normalized", background_at=0.1))
    assert near.tolist() == [[1.0, 0.5, 0.0, 1.0]]


def test_all_background_or_flat_maps_do_not_divide_by_zero():
    empty = np.full((3, 3), BLENDER_BACKGROUND, np.float32)
    assert not nearness(empty, DepthInput(background_at=1e9)).any()
    wall = np.full((3, 3), 4.0, np.float32)
    assert np.all(nearness(wall, DepthInput()) == 1.0)


def test_rows_stay_top_first_through_resampling_and_the_control_tensor():
    distance = np.full((8, 4), 20.0, np.float32)
    distance[:2] = 5.0                                 # something near at the top
    near = depth_for_job(float_frame(distance), DepthInput(), 16, 32)
    assert near.shape == (32, 16)
    tensor = control_tensor(near)
    assert tuple(tensor.shape) == (1, 3, 32, 16)
    assert tensor[0, :, 0].min() == pytest.approx(1.0)   # top row bright
    assert tensor[0, :, -1].max() == pytest.approx(0.0)  # bottom row dark


def test_gray8_uploads_and_other_formats():
    gray = ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, 2, 1, new_id(), bytes([255, 0]))
    near = depth_for_job(gray, DepthInput(convention="normalized"), 2, 1)
    assert near.tolist() == [[1.0, 0.0]]
    rgba = ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, 1, 1, new_id(), bytes(4))
    with pytest.raises(ProtocolError) as err:
        depth_for_job(rgba, DepthInput(), 8, 8)
    assert err.value.field == "job.depth.upload" and "float32 or gray8" in err.value.message


def test_estimation_without_a_local_depth_model_says_how_to_get_one(tmp_path):
    with pytest.raises(ProtocolError) as err:
        find_depth_model({}, tmp_path / "empty-hf-cache")
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND
    assert err.value.field == "job.depth.estimate"
    assert "ATELIER_DEPTH_MODEL" in err.value.message and "huggingface-cli download" in err.value.message
    with pytest.raises(ProtocolError) as err:
        find_depth_model({"ATELIER_DEPTH_MODEL": str(tmp_path)}, None)
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND and "config.json" in err.value.message


def _tiny_dpt(folder):
    """A random-weight DPT small enough to build in a test, saved like a downloaded one."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor
    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=37, image_size=32, patch_size=8,
                       neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16,
                       backbone_out_indices=[0, 1, 2, 3], reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_estimator_from_a_local_folder_gives_a_nearness_map(tmp_path):
    from backend.pipelines.depth import DepthEstimator
    folder = _tiny_dpt(tmp_path / "dpt")
    assert find_depth_model({"ATELIER_DEPTH_MODEL": str(folder)}, None) == folder
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    near = DepthEstimator(folder).estimate(rgb)
    assert near.shape == (40, 56) and near.dtype == np.float32
    assert near.min() == 0.0 and near.max() == 1.0
