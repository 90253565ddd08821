"""The Blender add-on's control passes and reference without Blender (issue 14): Blender's
Normal pass turned into the protocol's camera-space normal map, the Freestyle line pass
into light lines on black, and the panel's Controls rows and reference into a request."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from blender_addon import control_maps, settings
from blender_addon.panel_view import CONTROL_ROWS, FIELDS
from blender_addon.protocol import ProtocolError, validate
from blender_addon.protocol.messages import (ControlLayer, GenerateRequest, ImageInfo,
                                             ModelInfo, ReferenceImage, Result)


def _camera_view(location, rotation_x: float, rotation_z: float = 0.0,
                 scale: float = 1.0) -> np.ndarray:
    """The 4x4 view (world-to-camera) matrix of a camera at ``location``, turned by
    ``rotation_x`` then ``rotation_z`` radians (Blender's XYZ Euler), scaled by ``scale``:
    the inverse of its matrix_world, as host.camera_matrices gives it."""
    cx, sx = math.cos(rotation_x), math.sin(rotation_x)
    cz, sz = math.cos(rotation_z), math.sin(rotation_z)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    world = np.eye(4)
    world[:3, :3] = rot_z @ rot_x * scale
    world[:3, 3] = location
    return np.linalg.inv(world)


# A camera at (0, -5, 0) looking along +Y, as Blender's scenes (and the host tests) set one.
FRONT = _camera_view((0, -5, 0), math.pi / 2)


def _blender_pixels(rows_top_first: np.ndarray) -> np.ndarray:
    """(H, W, 4) rows, top row first, as Blender's flat pixels (bottom row first)."""
    return np.ascontiguousarray(rows_top_first[::-1], np.float32).reshape(-1)


# ------------------------------------------------------------------ normals

@pytest.mark.parametrize("world, camera", [
    ((0, -1, 0), (0, 0, 1)),      # facing the camera
    ((1, 0, 0), (1, 0, 0)),       # facing right
    ((0, 0, 1), (0, 1, 0)),       # facing up
    ((-1, 0, 0), (-1, 0, 0)),
])
def test_world_normals_turn_into_camera_space(world, camera) -> None:
    got = control_maps.camera_space_normals(np.array([world], float), FRONT)
    assert np.allclose(got[0], camera, atol=1e-9)


def test_camera_space_follows_the_cameras_turn_not_its_place_or_scale() -> None:
    # Turned 90 degrees about Z, the camera looks along -X from (5, 0, 0): a surface
    # facing +X faces it; one facing +Y is on its right.
    side = _camera_view((5, 0, 0), math.pi / 2, math.pi / 2)
    normals = np.array([[1, 0, 0], [0, 1, 0]], float)
    assert np.allclose(control_maps.camera_space_normals(normals, side),
                       [[0, 0, 1], [1, 0, 0]], atol=1e-9)
    scaled = _camera_view((3, -7, 2), math.pi / 2, scale=2.5)
    assert np.allclose(control_maps.camera_space_normals(normals, scaled),
                       control_maps.camera_space_normals(normals, FRONT), atol=1e-9)


def test_averaged_normals_are_made_unit_and_empty_ones_are_background() -> None:
    # An edge pixel averages a surface's normal with nothing: shorter, same direction.
    normals = np.array([[0, -0.7, 0], [0, -0.3, 0], [0, 0, 0]], float)
    got = control_maps.camera_space_normals(normals, FRONT)
    assert np.allclose(got, [[0, 0, 1], [0, 0, 0], [0, 0, 0]], atol=1e-9)


def test_normals_encode_as_the_protocol_says() -> None:
    """PROTOCOL.md 4.4: facing the camera (128, 128, 255), right (255, 128, 128), up
    (128, 255, 128); no surface black; opaque."""
    normals = np.array([[[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 0]]], float)
    assert control_maps.encode_normals(normals).tolist() == [[
        [128, 128, 255, 255], [255, 128, 128, 255], [128, 255, 128, 255], [0, 0, 0, 255]]]
    # Values between: (n + 1) / 2 of 255, rounded.
    tilted = np.array([[[math.sqrt(0.5), 0, math.sqrt(0.5)]]])
    assert control_maps.encode_normals(tilted).tolist() == [[[218, 128, 218, 255]]]


def test_normal_pass_becomes_a_top_first_control_image() -> None:
    # A 2 x 2 Normal pass: the top row faces the camera, the bottom row faces right.
    rows = np.array([[[0, -1, 0, 1], [0, -1, 0, 1]], [[1, 0, 0, 1], [0, 0, 0, 0]]], float)
    data = control_maps.normal_pass_to_rgba8(_blender_pixels(rows), 2, 2, FRONT)
    image = np.frombuffer(data, np.uint8).reshape(2, 2, 4)
    assert image[0].tolist() == [[128, 128, 255, 255]] * 2
    assert image[1].tolist() == [[255, 128, 128, 255], [0, 0, 0, 255]]
    with pytest.raises(ValueError, match="2x2 needs 16 values, got 12"):
        control_maps.normal_pass_to_rgba8(np.zeros(12), 2, 2, FRONT)
    with pytest.raises(ValueError, match="degenerate"):
        control_maps.normal_pass_to_rgba8(np.zeros(16), 2, 2, np.zeros((4, 4)))


def test_line_pass_becomes_light_lines_on_black() -> None:
    # Freestyle's pass: black lines (any colour) over transparency; the alpha is the line.
    rows = np.zeros((2, 3, 4), float)
    rows[0, 1] = (0, 0, 0, 1.0)       # a full line pixel, top row
    rows[1, 2] = (0.2, 0.1, 0, 0.5)   # half covered, bottom row
    data = control_maps.line_pass_to_rgba8(_blender_pixels(rows), 3, 2)
    image = np.frombuffer(data, np.uint8).reshape(2, 3, 4)
    assert image[..., 0].tolist() == [[0, 255, 0], [0, 0, 128]]
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    assert (image[..., 3] == 255).all()


# ------------------------------------------------------------------ requests

def test_each_ticked_pass_is_sent_with_its_rows_settings() -> None:
    panel = settings.PanelSettings(use_depth=True, control_scale=0.7, depth_end=0.9,
                                   control_model="tiny-adapter", use_normal=True,
                                   normal_scale=1.5, normal_start=0.2, use_lineart=False,
                                   lineart_model="my-lines")
    assert settings.passes_to_send(panel) == ("depth", "normal")
    assert settings.passes_to_send(dataclasses.replace(panel, use_depth=False)) == ("normal",)
    # Project Texture generates from depth, ticked or not.
    assert settings.passes_to_send(dataclasses.replace(panel, use_depth=False),
                                   depth=True) == ("depth", "normal")
    # In the panel's order whatever order the uploads come in; depth is the Z pass.
    request = settings.build_request(panel, kind="img2img", init_image="i" * 32,
                                     controls={"lineart": "l" * 32, "normal": "n" * 32,
                                               "depth": "d" * 32})
    assert request.controls == [
        ControlLayer(kind="depth", image="d" * 32, model="tiny-adapter", scale=0.7, end=0.9,
                     convention="z", background_at=settings.BACKGROUND_DEPTH),
        ControlLayer(kind="normal", image="n" * 32, scale=1.5, start=0.2),
        ControlLayer(kind="lineart", image="l" * 32, model="my-lines"),
    ]
    assert not any(c.preprocess or c.invert for c in request.controls)
    with pytest.raises(ValueError, match="pose"):
        settings.build_request(panel, controls={"pose": "p" * 32})


def test_a_row_ending_before_it_starts_is_refused_naming_it() -> None:
    panel = settings.PanelSettings(use_normal=True, normal_start=0.8, normal_end=0.3)
    with pytest.raises(ProtocolError) as info:
        settings.build_request(panel, controls={"depth": "d" * 32, "normal": "n" * 32})
    assert info.value.field == "job.controls[1].end"
    assert "Normal control: End 0.3 is before Start 0.8" in info.value.message


def test_the_reference_goes_with_its_weight_and_flavour() -> None:
    panel = settings.PanelSettings(use_reference=True, reference_weight=1.2,
                                   reference_flavour="style")
    request = settings.build_request(panel, reference="r" * 32)
    assert request.references == [ReferenceImage(image="r" * 32, weight=1.2, flavour="style")]
    assert settings.build_request(panel).references == []   # nothing uploaded: none
    assert settings.PanelSettings().reference_weight == ReferenceImage(image="x").weight
    with pytest.raises(ProtocolError) as info:
        settings.build_request(dataclasses.replace(panel, reference_weight=2.5),
                               reference="r" * 32)
    assert info.value.field == "job.references[0].weight"


def test_panel_rows_copy_into_the_settings() -> None:
    class Props:   # what the scene's PropertyGroup looks like to settings_from
        use_normal, normal_scale, normal_model = True, 0.4, "cn-normal"
        lineart_start, use_reference, reference_flavour = 0.25, True, "style"
        reference_image = object()   # a Blender image: not a setting, not copied
    panel = settings.settings_from(Props())
    row = settings.control_choice(panel, "normal")
    assert row == settings.ControlChoice("normal", True, 0.4, 0.0, 1.0, "cn-normal")
    assert settings.control_choice(panel, "lineart").start == 0.25
    assert panel.use_reference and panel.reference_flavour == "style"
    # Depth keeps the names older .blend files saved it under.
    assert settings.CONTROL_FIELDS["depth"][0] == "use_depth"
    assert settings.CONTROL_FIELDS["depth"][1:5:3] == ("control_scale", "control_model")


def test_the_panel_draws_one_row_per_pass_control() -> None:
    assert [kind for kind, _ in CONTROL_ROWS] == list(settings.PASS_CONTROLS)
    labels = dict(FIELDS["controls"])
    for kind, (use, scale, start, end, model) in CONTROL_ROWS:
        names = settings.CONTROL_FIELDS[kind]
        assert (use, scale, start, end) == names[:4]
        assert model.startswith(kind) and labels[use]


def test_a_depth_control_result_records_its_model() -> None:
    params = GenerateRequest(prompt="p", width=64, height=64, seed=1, controls=[
        ControlLayer(kind="normal", image="n" * 32, model="cn-normal"),
        ControlLayer(kind="depth", image="d" * 32, model="tiny-adapter", convention="z")])
    validate(params, "job")
    result = Result(job_id="j" * 32, images=[ImageInfo(0, 64, 64, "rgba8", 1)],
                    params=params, tiling="none", model="tiny", seconds=0.1)
    assert settings.result_record(result, 0, 1)["control_model"] == "tiny-adapter"
    plain = dataclasses.replace(result, params=dataclasses.replace(params, controls=[]))
    assert "control_model" not in settings.result_record(plain, 0, 1)


# ------------------------------------------------------------------ model menus

def test_each_controls_model_menu_lists_the_daemons_models_of_its_kind() -> None:
    models = [ModelInfo("tiny", "tiny", "sd15"),
              ModelInfo("tiny-controlnet", "tiny", "controlnet", kind="controlnet"),
              ModelInfo("tiny-controlnet-normal", "tiny", "controlnet", kind="controlnet",
                        control_kind="normal"),
              ModelInfo("tiny-controlnet-lineart", "tiny", "controlnet", kind="controlnet",
                        control_kind="lineart"),
              ModelInfo("tiny-adapter-canny", "tiny", "t2i_adapter", kind="t2i_adapter",
                        control_kind="canny")]
    # A model whose name says no kind is offered for every kind (the daemon trusts it).
    assert settings.conditioners_for(models, "normal") == [
        ("tiny-controlnet", "controlnet"), ("tiny-controlnet-normal", "controlnet")]
    assert [n for n, _ in settings.conditioners_for(models, "lineart")] == [
        "tiny-controlnet", "tiny-controlnet-lineart"]
    menu = settings.ControlModelMenu("normal")
    items = menu.build(settings.conditioners_for(models, "normal"), "")
    assert [i[0] for i in items] == [settings.DEPTH_MODEL_DEFAULT, "tiny-controlnet",
                                     "tiny-controlnet-normal"]
    assert "normal" in items[0][2]
    items = menu.build([], "gone-normal")
    assert items[-1][:2] == ("gone-normal", "gone-normal (not listed by the daemon)")
    assert "a normal job" in items[-1][2]


# ------------------------------------------------------------------ records and recall

def test_normal_and_line_controls_are_recorded_and_recalled() -> None:
    params = GenerateRequest(prompt="p", width=64, height=64, seed=1, controls=[
        ControlLayer(kind="depth", image="d" * 32, convention="z"),
        ControlLayer(kind="lineart", image="l" * 32, scale=0.5, start=0.1, end=0.6,
                     model="my-lines")])
    result = Result(job_id="j" * 32, images=[ImageInfo(0, 64, 64, "rgba8", 1)],
                    params=params, tiling="none", model="tiny", seconds=0.1)
    record = settings.result_record(result, 0, 1)
    assert record["pass_controls"] == '[["lineart", 0.5, 0.1, 0.6, "my-lines"]]'
    assert set(settings.HISTORY_FIELDS) <= set(record)
    base = settings.PanelSettings(use_normal=True, normal_scale=1.7, use_lineart=False)
    recalled = settings.settings_from_record(record, base)
    assert not recalled.use_normal and recalled.normal_scale == 1.7   # not in the result
    assert settings.control_choice(recalled, "lineart") == settings.ControlChoice(
        "lineart", True, 0.5, 0.1, 0.6, "my-lines")
    # Made without them (or recorded before they existed): the panel's rows stay.
    for text in ("", "not json", "[[1, 2]]"):
        assert settings.settings_from_record({**record, "pass_controls": text}, base) \
            .use_normal
