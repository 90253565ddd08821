"""The Blender add-on's logic that needs no Blender: pixel layouts, colour, requests,
records, projection maths, and the build."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from blender_addon import build, control_maps, pacing, pixels, projection, settings
from blender_addon.protocol import ErrorCode, ProtocolError
from blender_addon.protocol.codec import encode_message
from blender_addon.protocol.messages import (LORAS_MAX, SAMPLER_PRESETS, ControlLayer,
                                             ControlSettings, DepthInput, GenerateRequest,
                                             ImageInfo, Limits, LoraWeight, ModelInfo,
                                             ReferenceImage, Result, Submit)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ pixels

def _frame(width: int, height: int) -> bytes:
    """RGBA8 rows top first where each pixel encodes its own (x, y)."""
    rows = np.zeros((height, width, 4), dtype=np.uint8)
    rows[..., 0] = np.arange(width)[None, :] * 10
    rows[..., 1] = np.arange(height)[:, None] * 20
    rows[..., 2] = 7
    rows[..., 3] = 255
    return rows.tobytes()


def test_frame_to_blender_flips_rows_and_scales() -> None:
    out = pixels.rgba8_to_blender(_frame(3, 2), 3, 2).reshape(2, 3, 4)
    # Blender's first row is the image's bottom row (y = 1 in the frame).
    assert out[0, 2].tolist() == pytest.approx([20 / 255, 20 / 255, 7 / 255, 1.0])
    assert out[1, 0].tolist() == pytest.approx([0.0, 0.0, 7 / 255, 1.0])
    assert out.dtype == np.float32


def test_blender_to_frame_round_trips_byte_images() -> None:
    data = _frame(5, 4)
    assert pixels.blender_to_rgba8(pixels.rgba8_to_blender(data, 5, 4), 5, 4) == data


def test_linear_images_round_trip_through_srgb() -> None:
    data = _frame(6, 3)
    linear = pixels.rgba8_to_blender(data, 6, 3, linear=True)
    # Mid grey 128 is about 0.216 in linear light; alpha is never converted.
    grey = pixels.rgba8_to_blender(bytes([128, 128, 128, 128]), 1, 1, linear=True)
    assert grey[:3] == pytest.approx([0.2158] * 3, abs=1e-3)
    assert grey[3] == pytest.approx(128 / 255)
    assert pixels.blender_to_rgba8(linear, 6, 3, linear=True) == data


def test_srgb_transfer_is_inverse_and_clips() -> None:
    v = np.linspace(0, 1, 101, dtype=np.float32)
    assert pixels.linear_to_srgb(pixels.srgb_to_linear(v)) == pytest.approx(v, abs=1e-5)
    assert pixels.linear_to_srgb(np.array([-1.0, 2.0])).tolist() == pytest.approx([0.0, 1.0])


def test_out_of_range_floats_clip_to_bytes() -> None:
    flat = np.array([-0.5, 0.5, 1.7, 1.0], dtype=np.float32)
    assert pixels.blender_to_rgba8(flat, 1, 1) == bytes([0, 128, 255, 255])


def test_depth_channel_goes_top_first_little_endian() -> None:
    # A 2x2 Z pass in Blender order (bottom row first), depth in every colour channel.
    bottom, top = [1.0, 2.0], [3.0, 1e10]
    flat = np.array([[d, d, d, 1.0] for d in bottom + top], dtype=np.float32)
    data = pixels.blender_channel_to_float32(flat, 2, 2)
    assert pixels.float32_rows(data, 2, 2).tolist() == [[3.0, 1e10], [1.0, 2.0]]
    assert np.frombuffer(data, dtype="<f4")[0] == 3.0


@pytest.mark.parametrize("call", [
    lambda: pixels.rgba8_to_blender(b"\0" * 15, 2, 2),
    lambda: pixels.blender_to_rgba8(np.zeros(15), 2, 2),
    lambda: pixels.blender_channel_to_float32(np.zeros(12), 2, 2),
])
def test_wrong_sizes_name_the_expected_count(call) -> None:
    with pytest.raises(ValueError, match="2x2 needs 16"):
        call()


# ------------------------------------------------------------------ requests

def test_request_from_panel_settings() -> None:
    panel = settings.PanelSettings(prompt="brick", negative_prompt="blurry", model="tiny",
                                   width=64, height=128, steps=5, guidance=4.5, seed=42,
                                   random_seed=False, scheduler="ddim", tiling="x",
                                   batch_size=2, preview_every=2)
    request = settings.build_request(panel)
    assert isinstance(request, GenerateRequest)
    assert (request.kind, request.prompt, request.negative_prompt, request.model) == \
        ("txt2img", "brick", "blurry", "tiny")
    assert (request.width, request.height, request.steps, request.guidance) == (64, 128, 5, 4.5)
    assert (request.seed, request.scheduler, request.tiling, request.batch_size) == \
        (42, "ddim", "x", 2)
    assert request.depth is None and request.control is None and request.init_image is None
    assert request.controls == [] and request.references == []
    assert request.preview_every == 2 and request.output_format == "raw"
    assert request.cache_interval == 1   # step caching stays off unless asked for


def test_step_cache_setting_reaches_the_request() -> None:
    panel = settings.PanelSettings(steps=12, cache_interval=3)
    request = settings.build_request(panel, kind="img2img", init_image="a" * 32,
                                     depth_upload="b" * 32)
    assert request.cache_interval == 3 and request.steps == 12
    assert settings.CACHE_INTERVAL_MAX == 10    # the protocol's own limit
    assert "faster" in settings.CACHE_INTERVAL_HELP and "differ" in settings.CACHE_INTERVAL_HELP


def test_random_seeds_fit_blender_ints_for_every_batch_image() -> None:
    asked = []

    def pick(limit: int) -> int:
        asked.append(limit)
        return limit - 1   # the largest seed it may draw
    request = settings.build_request(
        settings.PanelSettings(seed=9, random_seed=True, batch_size=8, model=""), pick_seed=pick)
    assert asked == [settings.SEED_MAX + 1] and request.seed == settings.SEED_MAX
    assert request.seed + request.batch_size - 1 <= 2 ** 31 - 1
    assert request.model is None    # empty: the daemon's current model
    drawn = {settings.build_request(settings.PanelSettings()).seed for _ in range(20)}
    assert len(drawn) > 1 and all(0 <= s <= settings.SEED_MAX for s in drawn)


def test_fixed_seed_above_blenders_range_is_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        settings.build_request(settings.PanelSettings(seed=settings.SEED_MAX + 1,
                                                      random_seed=False))
    assert info.value.field == "job.seed" and str(settings.SEED_MAX) in info.value.message


def test_img2img_with_depth_sets_init_and_a_depth_control() -> None:
    panel = settings.PanelSettings(strength=0.4, control_scale=0.8)
    request = settings.build_request(panel, kind="img2img", init_image="a" * 32,
                                     depth_upload="b" * 32)
    assert request.kind == "img2img" and request.init_image == "a" * 32
    assert request.strength == 0.4
    # Depth goes as a control layer (one code path with the other passes), not job.depth.
    assert request.depth is None and request.control is None
    assert request.controls == [ControlLayer(kind="depth", image="b" * 32, scale=0.8,
                                             convention="z",
                                             background_at=settings.BACKGROUND_DEPTH)]


def test_depth_model_setting_names_the_conditioner_of_depth_jobs() -> None:
    # Default: no name, the daemon picks (its --depth-control, else its default ControlNet).
    assert settings.PanelSettings().control_model == ""
    request = settings.build_request(settings.PanelSettings(), depth_upload="b" * 32)
    assert request.controls[0].model is None
    chosen = settings.PanelSettings(control_model="tiny-adapter", control_scale=0.5)
    for request in (settings.build_request(chosen, depth_upload="b" * 32),
                    settings.build_request(chosen, kind="img2img", init_image="a" * 32,
                                           depth_upload="b" * 32)):
        depth, = request.controls
        assert depth.model == "tiny-adapter" and depth.scale == 0.5
    # Without depth there is nothing to condition: no controls at all.
    assert settings.build_request(chosen).controls == []

    class Props:   # the panel's string property is copied like the others
        control_model = "tiny-controlnet"
    assert settings.settings_from(Props()).control_model == "tiny-controlnet"


def _models() -> list[ModelInfo]:
    return [ModelInfo("tiny", "tiny", "sd15"), ModelInfo("tiny-adapter", "tiny", "t2i_adapter"),
            ModelInfo("tiny-depth", "tiny", "sd2_depth"),
            ModelInfo("tiny-controlnet", "tiny", "controlnet"),
            ModelInfo("dpt", "hf_cache", "unknown")]


def test_depth_model_menu_offers_default_and_the_daemons_conditioners() -> None:
    conditioners = settings.depth_conditioners(_models())
    assert conditioners == [("tiny-adapter", "t2i_adapter"), ("tiny-controlnet", "controlnet")]
    # A ControlNet whose name says another kind (canny) is no depth model.
    canny = ModelInfo("tiny-controlnet-canny", "tiny", "controlnet", kind="controlnet",
                      control_kind="canny")
    depth = ModelInfo("cn-depth", "diffusers", "controlnet", kind="controlnet",
                      control_kind="depth")
    assert settings.depth_conditioners(_models() + [canny, depth])[-1] == ("cn-depth", "controlnet")
    assert ("tiny-controlnet-canny", "controlnet") not in settings.depth_conditioners(
        _models() + [canny])
    menu = settings.ControlModelMenu("depth")
    items = menu.build(conditioners, "")
    assert [(i[0], i[1]) for i in items] == [
        (settings.DEPTH_MODEL_DEFAULT, "Daemon default"),
        ("tiny-adapter", "tiny-adapter (T2I-Adapter: fast)"),
        ("tiny-controlnet", "tiny-controlnet (ControlNet)")]
    assert "once per job" in items[1][2] and "every step" in items[2][2]
    assert "once per job" in settings.DEPTH_MODEL_HELP
    assert "every step" in settings.DEPTH_MODEL_HELP
    numbers = [i[3] for i in items]
    assert len(set(numbers)) == 3 and numbers[0] == 0
    assert [menu.name(n) for n in numbers] == ["", "tiny-adapter", "tiny-controlnet"]
    assert menu.name(999) is None
    # Unchanged lists are handed out again as the same object: Blender keeps pointers into
    # the strings of the list it got, so that list must stay alive.
    assert menu.build(list(conditioners), "tiny-adapter") is items is menu.items


def test_depth_model_menu_copes_with_no_daemon_and_a_vanished_name() -> None:
    menu = settings.ControlModelMenu("depth")
    assert [i[0] for i in menu.build([], "")] == [settings.DEPTH_MODEL_DEFAULT]
    adapter = menu.build([("tiny-adapter", "t2i_adapter")], "")[1][3]
    # Chosen, then no longer listed (or not connected yet): shown, marked, same number.
    items = menu.build([("tiny-controlnet", "controlnet")], "tiny-adapter")
    assert items[-1][:2] == ("tiny-adapter", "tiny-adapter (not listed by the daemon)")
    assert items[-1][3] == adapter == menu.number("tiny-adapter")
    assert len({i[3] for i in items}) == len(items)
    items = menu.build([], "gone")
    assert [i[0] for i in items] == [settings.DEPTH_MODEL_DEFAULT, "gone"]
    assert menu.name(items[1][3]) == "gone"
    # No list from the daemon yet (not connected): the chosen name is shown as it is.
    items = menu.build([], "tiny-adapter", listed_now=False)
    assert items[-1][:2] == ("tiny-adapter", "tiny-adapter") and items[-1][3] == adapter
    assert "connected" in items[-1][2]


@pytest.mark.parametrize("change, field", [
    ({"scheduler": "plms"}, "job.scheduler"),
    ({"guidance": 80.0}, "job.guidance"),
    ({"tiling": "diagonal"}, "job.tiling"),
    ({"seed": 2 ** 33, "random_seed": False}, "job.seed"),
    ({"cache_interval": 0}, "job.cache_interval"),
    ({"cache_interval": 11}, "job.cache_interval"),
])
def test_bad_settings_raise_protocol_error_naming_the_field(change, field) -> None:
    with pytest.raises(ProtocolError) as info:
        settings.build_request(settings.PanelSettings(**change))
    assert info.value.field == field


def _limits(max_side: int, max_pixels: int) -> Limits:
    return Limits(max_message_bytes=1 << 28, max_pixels=max_pixels, max_side=max_side,
                  max_batch=8, max_steps=150, max_queue=32, max_uploads=16)


@pytest.mark.parametrize("width, height, limits, words", [
    (500, 512, None, "Width 500 is not a multiple of 8, which the daemon needs: use 496 or 504"),
    (512, 4, None, "Height 4 is not a multiple of 8, which the daemon needs: use 8"),
    (1024, 512, _limits(768, 768 * 768), "Width 1024 is more than the daemon allows "
                                         "(max_side 768)"),
    (768, 1024, _limits(768, 768 * 768), "Height 1024 is more than the daemon allows "
                                         "(max_side 768)"),
    (1024, 1024, _limits(2048, 1 << 19), "Width x Height 1024 x 1024 is 1048576 pixels, "
                                         "more than the daemon allows (max_pixels 524288)"),
])
def test_sizes_the_daemon_would_refuse_name_the_field_and_limit(width, height, limits,
                                                                 words) -> None:
    assert settings.size_problem(width, height, limits) == words


def test_sizes_within_the_limits_pass() -> None:
    assert settings.size_problem(4096, 8, None) is None   # limits not known yet
    assert settings.size_problem(768, 768, _limits(768, 768 * 768)) is None


def test_settings_from_copies_matching_attributes() -> None:
    class Props:   # what a Blender PropertyGroup looks like to this function
        prompt, steps, use_depth = "x", 3, True
    copied = settings.settings_from(Props())
    assert copied.prompt == "x" and copied.steps == 3 and copied.width == 512


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("localhost", True),
                                         ("[::1]", True), ("127.4.0.1", True),
                                         ("192.168.1.5", False), ("gpu-box", False)])
def test_loopback_addresses(host: str, local: bool) -> None:
    assert settings.is_loopback(host) is local


# ------------------------------------------------------------------ names and records

def test_image_names_say_prompt_and_seed_and_fit_blender() -> None:
    assert settings.image_name("  red   brick\nwall ", 12) == "red brick wall 12"
    assert settings.image_name("", 3) == "untitled 3"
    assert settings.image_name("x", 5, index=1, batch_size=4) == "x 5 #2"
    assert settings.preview_name(" moss ") == "moss (preview)"
    long = settings.image_name("é" * 100, 4294967295)
    assert len(long.encode("utf-8")) <= settings.NAME_LIMIT and long.endswith(" 4294967295")


@pytest.mark.parametrize("name, stem", [
    ("red brick wall 12", "red brick wall 12"),
    ("tiles 5 #2", "tiles 5 _2"),                 # '#' would be a frame number to Blender
    ("a/b\\c:d*e?f", "a_b_c_d_e_f"),
    ("m\u00fcde Stra\u00dfe 3", "m_de Stra_e 3"),
    ("...", "image"),
])
def test_result_file_names_are_safe_everywhere(name: str, stem: str) -> None:
    assert settings.file_stem(name) == stem


def _result() -> Result:
    params = GenerateRequest(prompt="moss", negative_prompt="n", width=64, height=64, steps=4,
                             guidance=3.0, seed=100, scheduler="euler", batch_size=2,
                             tiling="both", cache_interval=2)
    return Result(job_id="j" * 32, images=[ImageInfo(0, 64, 64, "rgba8", 100),
                                           ImageInfo(1, 64, 64, "rgba8", 101)],
                  params=params, tiling="both", model="tiny", seconds=0.5)


def test_result_record_and_recall_regenerate_that_image() -> None:
    record = settings.result_record(_result(), 1, 101)
    assert record["seed"] == 101 and record["model"] == "tiny" and record["batch_index"] == 1
    assert all(isinstance(v, (str, int, float)) for v in record.values())  # IDProperty-safe
    base = settings.PanelSettings(prompt="other", random_seed=True, batch_size=4, steps=30)
    recalled = settings.settings_from_record(record, base)
    assert (recalled.prompt, recalled.seed, recalled.random_seed, recalled.batch_size) == \
        ("moss", 101, False, 1)
    assert (recalled.steps, recalled.tiling, recalled.model, recalled.scheduler) == \
        (4, "both", "tiny", "euler")
    assert record["cache_interval"] == 2 and recalled.cache_interval == 2
    again = settings.build_request(recalled)
    assert (again.seed, again.prompt, again.width, again.guidance) == (101, "moss", 64, 3.0)
    assert again.cache_interval == 2    # the same step caching, so the same pixels
    assert set(settings.HISTORY_FIELDS) <= set(record)


def test_depth_model_is_recorded_and_recalled_for_depth_results_only() -> None:
    depth = DepthInput(upload="b" * 32, convention="distance", background_at=1e9)
    for model, recorded in (("tiny-adapter", "tiny-adapter"), (None, "")):
        result = dataclasses.replace(_result(), params=dataclasses.replace(
            _result().params, depth=depth, control=ControlSettings(model=model)))
        record = settings.result_record(result, 0, 100)
        assert record["control_model"] == recorded
        assert set(settings.DEPTH_FIELDS) <= set(record)
        base = settings.PanelSettings(control_model="tiny-controlnet")
        assert settings.settings_from_record(record, base).control_model == recorded
    # A result made without depth says nothing about it; recalling it keeps the panel's.
    record = settings.result_record(_result(), 0, 100)
    assert "control_model" not in record
    base = settings.PanelSettings(control_model="tiny-controlnet")
    assert settings.settings_from_record(record, base).control_model == "tiny-controlnet"


# ------------------------------------------------------------------ pacing

class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throttle_lets_through_once_per_interval_and_urgent_at_once() -> None:
    clock = _Clock()
    throttle = pacing.Throttle(0.25, clock=clock)
    assert throttle.ready() and not throttle.ready()
    clock.now += 0.2
    assert not throttle.ready() and throttle.ready(urgent=True)
    clock.now += 0.25
    assert throttle.ready()


def test_throttle_waits_longer_after_costly_goes() -> None:
    clock = _Clock()
    throttle = pacing.Throttle(0.25, share=0.25, clock=clock)
    assert throttle.ready()
    throttle.took(0.3)           # drawing what it set off: 0.3 s, then 0.2 s more
    throttle.took(0.2)
    clock.now += 1.9
    assert not throttle.ready()  # 0.5 s of drawing may take a quarter: 2 s apart
    clock.now += 0.1
    assert throttle.ready()
    throttle.took(-0.05)         # a timer early, not a cost
    clock.now += 0.25
    assert throttle.ready()
    throttle.took(30.0)          # Blender busy with something long: still within 2 s
    clock.now += 2.0
    assert throttle.ready()


# ------------------------------------------------------------------ projection maths

def _look_along_y(distance: float) -> tuple[np.ndarray, np.ndarray]:
    """View and projection matrices of a camera at (0, -distance, 0) looking along +Y
    with a 90 degree field of view and a square image."""
    world = np.array([[1, 0, 0, 0], [0, 0, -1, -distance], [0, 1, 0, 0], [0, 0, 0, 1]],
                     dtype=float)  # camera -Z = world +Y, camera +Y = world +Z
    near, far = 0.1, 100.0
    proj = np.array([[1, 0, 0, 0], [0, 1, 0, 0],
                     [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
                     [0, 0, -1, 0]])
    return np.linalg.inv(world), proj


def test_projection_maps_points_to_image_corners_and_depth() -> None:
    view, proj = _look_along_y(5.0)
    pts = np.array([[0, 0, 0], [5, 0, 5], [-5, 0, -5], [2.5, 5, 0]])
    uvd = projection.project_to_uv(pts, view, proj)
    assert uvd[0].tolist() == pytest.approx([0.5, 0.5, 5.0])
    assert uvd[1].tolist() == pytest.approx([1.0, 1.0, 5.0])      # top right
    assert uvd[2].tolist() == pytest.approx([0.0, 0.0, 5.0])      # bottom left
    assert uvd[3].tolist() == pytest.approx([0.625, 0.5, 10.0])   # farther: nearer the centre
    assert projection.inside_frame(uvd).tolist() == [True, True, True, True]
    behind = projection.project_to_uv(np.array([[0, -10, 0]]), view, proj)
    assert not projection.inside_frame(behind)[0]


def test_facing_test_for_perspective_and_orthographic_cameras() -> None:
    centers = np.array([[0, -1, 0], [0, 1, 0], [1, 0, 0], [3, -1, 0]])
    normals = np.array([[0, -1, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]])
    origin, forward = (0, -5, 0), (0, 1, 0)
    persp = projection.faces_toward_camera(centers, normals, origin, forward, False)
    # A side face off to the right is seen edge-on in ortho but from behind in perspective.
    assert persp.tolist() == [True, False, False, False]
    ortho = projection.faces_toward_camera(centers, normals, origin, forward, True)
    assert ortho.tolist() == [True, False, False, False]
    left_side = projection.faces_toward_camera(np.array([[-3, -1, 0]]), np.array([[1, 0, 0]]),
                                               origin, forward, False)
    assert left_side.tolist() == [True]   # perspective sees the inner side of a face to the left


def test_occlusion_compares_first_hit_with_face_distance() -> None:
    hits = np.array([5.0, 4.9999, 3.0, np.inf])
    faces = np.array([5.0, 5.0, 5.0, 5.0])
    assert projection.unoccluded(hits, faces).tolist() == [True, True, False, True]


def test_visibility_samples_are_denser_on_faces_big_in_the_image() -> None:
    small = [[0, 0], [10, 0], [0, 10]]                  # 14 px at most: corners suffice
    big = [[0, 0], [100, 0], [0, 40]]                   # 100 px: steps of 16 px or less
    huge = [[0, 0], [5000, 0], [0, 5000]]
    assert projection.grid_levels(np.array([small, big, huge])).tolist() == [1, 7, 8]


def test_triangle_grid_covers_the_triangle_without_its_corners() -> None:
    tri = np.array([[[0, 0, 0], [4, 0, 0], [0, 4, 0]], [[0, 0, 1], [1, 0, 1], [0, 1, 1]]],
                   dtype=float)
    points, owner = projection.triangle_grid(tri, np.array([4, 1]))
    assert set(owner.tolist()) == {0}                   # one step: corners only, none here
    assert len(points) == 15 - 3                        # (k + 1)(k + 2) / 2 grid points
    got = {tuple(p) for p in points[:, :2].round(6).tolist()}
    assert (2.0, 0.0) in got and (1.0, 1.0) in got and (2.0, 2.0) in got
    assert not {(0.0, 0.0), (4.0, 0.0), (0.0, 4.0)} & got
    assert np.all(points[:, 0] + points[:, 1] <= 4 + 1e-9) and np.all(points >= 0)


def test_a_face_with_one_hidden_sample_is_not_seen() -> None:
    seen = projection.faces_with_nothing_hidden(4, np.array([2, 2, 0]))
    assert seen.tolist() == [False, True, False, True]
    assert projection.faces_with_nothing_hidden(2, np.zeros(0, dtype=int)).tolist() == [True,
                                                                                        True]


def test_unseen_objects_are_named_in_the_report() -> None:
    assert settings.unseen_report(["Back"]) == "the camera sees no face of 'Back': left as it was"
    assert "'A', 'B': left as they were" in settings.unseen_report(["A", "B"])
    assert "nothing to project onto" in settings.unseen_report(["A"], all_of_them=True)


def test_bilinear_sampling_hits_texel_centres_and_clamps() -> None:
    image = np.arange(2 * 4, dtype=np.float32).reshape(2, 4, 1)   # row 0 at v = 0
    uv = np.array([[0.125, 0.25], [0.25, 0.25], [0.125, 0.75], [-1.0, 2.0]])
    assert projection.sample_bilinear(image, uv)[:, 0].tolist() == \
        pytest.approx([0.0, 0.5, 4.0, 4.0])


def test_bake_copies_a_projected_square_into_another_layout() -> None:
    # Source: 8x8 image whose texel (row, col) holds row * 8 + col.
    source = np.arange(64, dtype=np.float32).reshape(8, 8, 1)
    # Target: the left half of a 16x8 texture; source: the whole projected image.
    tgt_square = np.array([[0, 0], [0.5, 0], [0.5, 1], [0, 1]])
    src_square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])
    tris = [(0, 1, 2), (0, 2, 3)]
    baked = projection.bake_triangles(tgt_square[tris], src_square[tris], source, 16, 8,
                                      padding=2)
    assert baked.shape == (8, 16, 2)
    # Texel centres line up one to one: the left half is the source, unchanged.
    assert baked[:, :8, 0] == pytest.approx(source[..., 0])
    assert baked[:, :8, 1].min() == 1.0
    # Padding: two more columns covered with the edge's values; beyond them nothing.
    assert baked[:, 8:10, 1].min() == 1.0 and baked[:, 8, 0] == pytest.approx(source[:, 7, 0])
    assert baked[:, 10:, 1].max() == 0.0 and baked[:, 10:, 0].max() == 0.0


def test_bake_of_a_dense_mesh_onto_its_own_layout_reproduces_the_image() -> None:
    # 24 x 24 quads (1152 triangles, all the same small size) mapped onto themselves.
    n = 24
    grid = np.stack(np.meshgrid(np.linspace(0, 1, n + 1), np.linspace(0, 1, n + 1)), axis=-1)
    quads = np.stack([grid[:-1, :-1], grid[:-1, 1:], grid[1:, 1:], grid[1:, :-1]], axis=2)
    tris = np.concatenate([quads[:, :, [0, 1, 2]], quads[:, :, [0, 2, 3]]]).reshape(-1, 3, 2)
    source = np.random.default_rng(1).random((48, 48, 3)).astype(np.float32)
    baked = projection.bake_triangles(tris, tris, source, 48, 48)
    assert baked[..., 3].min() == 1.0
    assert np.abs(baked[..., :3] - source).max() < 1e-5


def test_bake_skips_degenerate_and_offscreen_triangles() -> None:
    source = np.ones((4, 4, 1), dtype=np.float32)
    flat = np.array([[[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]]])           # zero area
    away = np.array([[[2.0, 2.0], [3.0, 2.0], [2.0, 3.0]]])           # outside 0..1
    for tri in (flat, away):
        baked = projection.bake_triangles(tri, tri, source, 8, 8, padding=0)
        assert baked[..., 1].max() == 0.0


# ------------------------------------------------------------------ build

def test_build_zip_vendors_protocol_and_websockets(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "blender_addon.build", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, check=True)
    target = Path(out.stdout.strip())
    names = set(zipfile.ZipFile(target).namelist())
    pkg = build.PACKAGE
    for required in ("__init__.py", "blender_manifest.toml", "host.py", "protocol/client.py",
                     "protocol/_vendor/__init__.py", "protocol/_vendor/websockets/__init__.py",
                     "protocol/_vendor/websockets/sync/client.py",
                     "protocol/_vendor/websockets/LICENSE"):
        assert f"{pkg}/{required}" in names, required
    assert not any(n.endswith((".so", ".pyc")) or "__pycache__" in n for n in names)
    assert f"{pkg}/build.py" not in names
    assert all(n.startswith(f"{pkg}/") for n in names)
    # Same sources, same bytes.
    again = build.build(tmp_path / "again")
    assert again.read_bytes() == target.read_bytes()


def test_zip_imports_its_vendored_websockets_without_blender(tmp_path: Path) -> None:
    target = build.build(tmp_path)
    zipfile.ZipFile(target).extractall(tmp_path / "x")
    code = ("import sys; sys.path.insert(0, '.'); "
            "from atelier_blender.protocol import _websocket as w; "
            "print(w.connect.__module__)")
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path / "x",
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "atelier_blender.protocol._vendor.websockets.sync.client"


def test_manifest_and_bl_info_agree() -> None:
    import tomllib
    manifest = tomllib.loads((REPO / "blender_addon" / "blender_manifest.toml").read_text())
    version = ".".join(map(str, build.addon_version()))
    assert manifest["id"] == build.PACKAGE and manifest["version"] == version
    tree = ast.parse((REPO / "blender_addon" / "__init__.py").read_text())
    info = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign))
    assert info["blender"] == (3, 4, 0) and manifest["blender_version_min"] == "4.2.0"


# ------------------------------------------------------------------ cameras from a viewport view

def _view_from(world: np.ndarray) -> list[list[float]]:
    return np.linalg.inv(world).tolist()


def _turned_camera() -> np.ndarray:
    """A camera at (1, -8, 2) looking along +Y, turned 30 degrees about world Z."""
    turn = np.radians(30.0)
    rot_z = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0],
                      [0, 0, 1]])
    look_y = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)
    world = np.eye(4)
    world[:3, :3] = rot_z @ look_y
    world[:3, 3] = (1, -8, 2)
    return world


def test_view_camera_sits_where_the_view_looks_from() -> None:
    world = _turned_camera()
    cam = projection.camera_for_view(_view_from(world), orthographic=False, lens=50.0,
                                     clip_start=0.01, clip_end=1000.0, view_distance=8.0,
                                     region_size=(400, 400), image_size=(64, 64))
    assert np.allclose(np.array(cam.matrix_world), world)
    assert (cam.orthographic, cam.lens, cam.clip_start, cam.clip_end) == (False, 50.0, 0.01,
                                                                          1000.0)
    # The viewport frames like a 36 mm sensor at zoom 2: 72 mm across the square region.
    assert cam.sensor_size == pytest.approx(projection.VIEWPORT_SENSOR)


@pytest.mark.parametrize("region, image, fit, size", [
    ((400, 200), (64, 64), "HORIZONTAL", 72.0),   # square image of a wide view: same width
    ((200, 400), (64, 64), "VERTICAL", 72.0),     # of a tall view: same height
    ((400, 200), (96, 32), "VERTICAL", 36.0),     # wider than the view: same height
    ((200, 400), (32, 96), "HORIZONTAL", 36.0),   # taller than the view: same width
])
def test_view_camera_covers_the_whole_region(region, image, fit, size) -> None:
    cam = projection.camera_for_view(_view_from(_turned_camera()), orthographic=False,
                                     lens=35.0, clip_start=0.1, clip_end=100.0,
                                     view_distance=5.0, region_size=region, image_size=image)
    assert (cam.sensor_fit, cam.sensor_size) == (fit, pytest.approx(size))
    # Half-extents at unit distance: the image's are never smaller than the region's.
    longer = 72.0 / 35.0 / 2
    region_half = np.array(region) / max(region) * longer
    fitted = size / 35.0 / 2
    aspect = image[0] / image[1]
    image_half = np.array([fitted, fitted / aspect] if fit == "HORIZONTAL"
                          else [fitted * aspect, fitted])
    assert np.all(image_half >= region_half - 1e-12)
    assert np.any(np.isclose(image_half, region_half))


def test_orthographic_view_camera_moves_back_to_clip_from_zero() -> None:
    world = _turned_camera()
    cam = projection.camera_for_view(_view_from(world), orthographic=True, lens=50.0,
                                     clip_start=0.01, clip_end=200.0, view_distance=10.0,
                                     region_size=(300, 300), image_size=(64, 64))
    moved = np.array(cam.matrix_world)
    assert np.allclose(moved[:3, :3], world[:3, :3])
    # Back along the view axis (camera +Z) by half the range: the view clips at +-100.
    assert np.allclose(moved[:3, 3], world[:3, 3] + world[:3, 2] * 100.0)
    assert (cam.clip_start, cam.clip_end) == (projection.MIN_CLIP_START, 200.0)
    assert cam.ortho_scale == pytest.approx(10.0 * 72.0 / 50.0)


@pytest.mark.parametrize("change, words", [
    ({"lens": 0.0}, "lens"), ({"clip_end": 0.001}, "clip range"),
    ({"region_size": (0, 10)}, "positive sizes"),
    ({"view_matrix": np.zeros((4, 4)).tolist()}, "singular"),
])
def test_unusable_views_are_refused_naming_the_problem(change, words) -> None:
    args = dict(view_matrix=_view_from(_turned_camera()), orthographic=False, lens=50.0,
                clip_start=0.01, clip_end=100.0, view_distance=5.0, region_size=(100, 100),
                image_size=(64, 64))
    args.update(change)
    view = args.pop("view_matrix")
    with pytest.raises(ValueError, match=words):
        projection.camera_for_view(view, **args)


# ------------------------------------------------------------------ LoRAs and sampler presets
class _Row:
    """Stands in for a panel LoRA row (AtelierLoraItem)."""

    def __init__(self, lora_name: str, weight: float) -> None:
        self.lora_name, self.weight = lora_name, weight


class _Props:
    """Stands in for the panel's PropertyGroup: a LoRA collection and a preset name."""

    def __init__(self, rows, preset: str = "") -> None:
        self.loras = rows
        self.sampler_preset = preset
        self.prompt = "wall"


def test_loras_and_sampler_preset_go_into_the_request() -> None:
    panel = settings.settings_from(_Props([_Row("style_peft", 0.8), _Row("", 1.0),
                                           _Row("detail", -1.5)], "lightning_4"))
    assert panel.loras == (("style_peft", 0.8), ("", 1.0), ("detail", -1.5))
    request = settings.build_request(panel)
    # The row without a LoRA chosen sends nothing; order and weights are kept.
    assert request.loras == [LoraWeight("style_peft", 0.8), LoraWeight("detail", -1.5)]
    assert request.sampler_preset == "lightning_4"
    wire = json.loads(encode_message(Submit(job=request)))["job"]
    assert wire["loras"] == [{"name": "style_peft", "weight": 0.8},
                             {"name": "detail", "weight": -1.5}]
    assert wire["sampler_preset"] == "lightning_4"
    # Nothing chosen: no LoRAs, no preset (null: the panel's steps, guidance and scheduler).
    plain = settings.build_request(settings.PanelSettings())
    assert plain.loras == [] and plain.sampler_preset is None


def test_at_most_8_loras_with_a_clear_report() -> None:
    eight = tuple((f"l{i}", 1.0) for i in range(LORAS_MAX))
    assert len(settings.build_request(settings.PanelSettings(loras=eight)).loras) == 8
    # Empty rows do not count.
    assert len(settings.build_request(
        settings.PanelSettings(loras=eight + (("", 1.0),))).loras) == 8
    with pytest.raises(ProtocolError) as info:
        settings.build_request(settings.PanelSettings(loras=eight + (("l8", 0.5),)))
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED and info.value.field == "job.loras"
    assert "at most 8 LoRAs" in info.value.message and "lists 9" in info.value.message
    assert "remove 1" in info.value.message
    with pytest.raises(ProtocolError) as info:
        settings.build_request(settings.PanelSettings(loras=(("a", 1.0), ("a", 0.5))))
    assert info.value.field == "job.loras[1].name" and "twice" in info.value.message
    # A weight the protocol refuses, and a preset it does not know, name their field.
    with pytest.raises(ProtocolError) as info:
        settings.build_request(settings.PanelSettings(loras=(("a", 9.0),)))
    assert info.value.field == "job.loras[0].weight"
    with pytest.raises(ProtocolError) as info:
        settings.build_request(settings.PanelSettings(sampler_preset="fast_2"))
    assert info.value.field == "job.sampler_preset"


def test_loras_and_preset_are_recorded_and_recalled() -> None:
    params = dataclasses.replace(_result().params, loras=[LoraWeight("style_peft", 0.75)],
                                 sampler_preset="lcm_4")
    record = settings.result_record(dataclasses.replace(_result(), params=params), 0, 100)
    assert all(isinstance(v, (str, int, float)) for v in record.values())  # IDProperty-safe
    assert record["sampler_preset"] == "lcm_4" and set(settings.HISTORY_FIELDS) <= set(record)
    recalled = settings.settings_from_record(record, settings.PanelSettings(
        loras=(("other", 1.0),)))
    assert recalled.loras == (("style_peft", 0.75),) and recalled.sampler_preset == "lcm_4"
    again = settings.build_request(recalled)
    assert again.loras == [LoraWeight("style_peft", 0.75)] and again.sampler_preset == "lcm_4"
    # A result without LoRAs or preset records "" for both; recalling clears the panel's.
    plain = settings.result_record(_result(), 0, 100)
    assert plain["loras"] == "" and plain["sampler_preset"] == ""
    cleared = settings.settings_from_record(plain, recalled)
    assert cleared.loras == () and cleared.sampler_preset == ""
    assert settings.loras_from_text("not json") == ()


def test_lora_menu_offers_the_models_family_and_keeps_chosen_names() -> None:
    menu = settings.LoraMenu()
    daemon = [("style_peft", "sd15"), ("xl_kohya", "sdxl"), ("odd", "unknown")]
    # Not connected: only the rows' names, not yet checked.
    items = menu.build([], None, ["style_peft", ""], listed_now=False)
    assert [i[0] for i in items] == ["NONE", "style_peft"] and items[1][1] == "style_peft"
    items = menu.build(daemon, "sd15", ["", "xl_kohya", "gone"])
    assert [i[0] for i in items] == ["NONE", "style_peft", "odd", "xl_kohya", "gone"]
    labels = {i[0]: i[1] for i in items}
    assert labels["xl_kohya"] == "xl_kohya (made for sdxl)"
    assert labels["gone"] == "gone (not listed by the daemon)"
    assert all(i[2] for i in items)   # every item has a tooltip
    # Numbers stay with names; the same inputs hand out the very same list.
    numbers = {i[0]: i[3] for i in items}
    assert menu.build(daemon, "sd15", ["", "xl_kohya", "gone"]) is items
    again = menu.build(daemon, "sdxl", [])
    assert [i[0] for i in again] == ["NONE", "xl_kohya", "odd"]
    # An inpainting model takes its base family's LoRAs, as the daemon judges them.
    assert [i[0] for i in menu.build(daemon, "sd15_inpaint", [])] == ["NONE", "style_peft", "odd"]
    assert {i[0]: i[3] for i in again}["xl_kohya"] == numbers["xl_kohya"]
    assert menu.name(numbers["gone"]) == "gone" and menu.name(0) == ""
    # A model of unknown family (a path, say): every LoRA is offered.
    assert len(menu.build(daemon, None, [])) == 4


def test_sampler_preset_menu_and_what_it_overrides() -> None:
    menu = settings.SamplerPresetMenu()
    assert [i[0] for i in menu.build([], "", listed_now=False)] == ["NONE"]
    items = menu.build(list(SAMPLER_PRESETS), "")
    assert [i[0] for i in items] == ["NONE", *SAMPLER_PRESETS]
    assert set(settings.SAMPLER_PRESET_INFO) == set(SAMPLER_PRESETS)
    lightning = {i[0]: i for i in items}["lightning_4"]
    assert "euler, 4 steps, guidance 1" in lightning[2] and "overrides" in lightning[2]
    old = menu.build(["lcm_4"], "hyper_8")
    assert old[-1][:2] == ("hyper_8", "hyper_8 (not listed by the daemon)")
    assert menu.name(old[-1][3]) == "hyper_8"
    assert settings.preset_summary("turbo_1") == "euler_a, 1 step, guidance 1"
    assert settings.preset_summary("nope") == ""


# ------------------------------------------------------------------ Live (issue 15)
from blender_addon import live_rules  # noqa: E402
from blender_addon.protocol.live import LiveDebounce, LiveResults, is_superseded  # noqa: E402
from blender_addon.protocol.messages import LIVE_NAME_MAX, Cancelled  # noqa: E402


def test_live_size_scales_down_only_keeping_aspect_in_multiples_of_8() -> None:
    assert live_rules.live_size(512, 512) == (512, 512)
    assert live_rules.live_size(1024, 768) == (512, 384)
    assert live_rules.live_size(768, 1024, longest=256) == (192, 256)
    assert live_rules.live_size(2048, 64) == (512, 64)     # never under 64
    assert live_rules.live_size(64, 64) == (64, 64)        # never up
    for width, height in ((1000, 333), (4096, 4000), (72, 1920)):
        w, h = live_rules.live_size(width, height)
        assert w % 8 == 0 and h % 8 == 0 and max(w, h) <= live_rules.LIVE_LONGEST


def test_live_settings_make_one_quick_img2img_at_the_live_strength_and_session_seed() -> None:
    panel = settings.PanelSettings(prompt="moss", width=1024, height=1024, strength=0.9,
                                   batch_size=4, preview_every=2, random_seed=True, seed=3)
    live = live_rules.live_settings(panel, 0.35, seed=1234)
    assert (live.width, live.height, live.strength) == (512, 512, 0.35)
    assert live.batch_size == 1 and live.preview_every == 0
    assert not live.random_seed and live.seed == 1234 and live.prompt == "moss"
    request = settings.build_request(live, kind="img2img", init_image="init")
    assert request.seed == 1234 and request.strength == 0.35 and request.preview_every == 0
    submit = json.loads(encode_message(Submit(job=request, live=live_rules.LIVE_SESSION)))
    assert submit["live"] == "viewport" and len(live_rules.LIVE_SESSION) <= LIVE_NAME_MAX


def test_live_counts_scene_edits_but_not_its_own_capture_or_image() -> None:
    for kind in ("Object", "Mesh", "Material", "ShaderNodeTree", "World", "Light", "Camera"):
        assert live_rules.counts_as_edit(kind), kind
    # What the live capture and the live image write change: resolution (the scene), its
    # File Output nodes, its temporary camera's collection, the live image itself.
    for kind in ("Scene", "Image", "CompositorNodeTree", "Collection", "WindowManager"):
        assert not live_rules.counts_as_edit(kind), kind


def _camera(x: float) -> tuple:
    """A Blender-side view signature as live.LiveMode.signature makes it (camera, view,
    frame, edits, strength, settings)."""
    matrix = (1.0, 0.0, 0.0, x, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    return (("Cam", matrix), None, 1, 0, 0.5, settings.PanelSettings(prompt="moss"))


def test_live_debounce_on_view_signatures_sends_once_per_still_view() -> None:
    """The timer ticks every 0.1 s: a camera that stands still goes once; a burst of moves
    50 ms apart goes once, 0.3 s after the last move, with the last view."""
    debounce = LiveDebounce()
    sent = []

    def tick(now: float, state: tuple) -> None:
        debounce.observe(state, now)
        if debounce.due(now):
            sent.append(state)

    for step in range(10):                     # Live on: the first view, standing still
        tick(step * 0.1, _camera(0.0))
    assert sent == [_camera(0.0)]
    for step in range(20):                     # a drag of the camera, 50 ms a step
        tick(1.0 + step * 0.05, _camera(step * 0.1))
    assert len(sent) == 1 and debounce.pending
    for step in range(1, 6):
        tick(1.95 + step * 0.1, _camera(1.9))
    assert sent == [_camera(0.0), _camera(1.9)] and not debounce.pending
    edited = _camera(1.9)[:3] + (1,) + _camera(1.9)[4:]    # an edit: the update count moved
    for step in range(5):
        tick(3.0 + step * 0.1, edited)
    assert sent[-1] == edited and len(sent) == 3


def test_live_results_latest_wins_and_superseded_is_silent() -> None:
    """Three states sent; the daemon supersedes the second, delivers the third, then a late
    result of the first (it was being encoded): only the third is shown."""
    results = LiveResults()
    for number, ref in enumerate(("r1", "r2", "r3")):
        assert results.sent(ref) == number
        results.accepted(ref, f"j{number + 1}")
    assert results.newest_id() == "j3" and results.running
    superseded = Cancelled(job_id="j2", reason="superseded")
    assert is_superseded(superseded) and not is_superseded(Cancelled(job_id="j3"))
    results.ended("j2")
    assert results.should_show("j3") and results.shows_newest
    results.ended("j3")
    assert not results.should_show("j1")           # older than what is shown
    results.ended("j1")
    assert not results.running and results.shows_newest


def test_live_line_says_what_live_does() -> None:
    line = live_rules.live_line
    assert line(False, True, 3, 2, False) == "Live is off"
    assert line(True, False, 0, 0, False) == "Live: waiting for the daemon"
    assert line(True, True, 0, 0, False) == "Live: on; move the camera or edit"
    assert line(True, True, 2, 1, True) == "Live: updating ..."
    assert line(True, True, 5, 4, False) == "Live: up to date, 4 shown"
    assert line(True, True, 5, 4, False, "the scene has no active camera") == \
        "Live: the scene has no active camera"
