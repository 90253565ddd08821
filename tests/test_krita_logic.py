"""The Krita plugin's logic that needs no Krita: pixels, masks, geometry, requests, build."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "krita_plugin"))

from atelier_krita.geometry import (Bounds, Extent, ResolutionRange, context_region,  # noqa: E402
                                    default_padding, fit_extent, range_for_family)
from atelier_krita.history import History, HistoryEntry  # noqa: E402
from atelier_krita import pixels  # noqa: E402
from atelier_krita.jobs import (CACHE_INTERVAL_HELP, CACHE_INTERVAL_MAX,  # noqa: E402
                                DEPTH_MODEL_DEFAULT, DEPTH_MODEL_HELP, ESTIMATE_DEPTH, SEED_MAX,
                                JobRefused, JobSettings, Mode, UploadIds, base_model_names,
                                build_request, conditioner_family, default_depth_source,
                                depth_model_choices, layer_name, model_family, parse_seed,
                                plan_job)
from atelier_krita.pixels import (bgra_to_rgba, feather, grow, grow_and_feather,  # noqa: E402
                                  luminance, mask_bounds, rgb_to_rgba, rgba_to_bgra, transpose,
                                  with_alpha)
from atelier_krita.protocol.messages import ModelInfo  # noqa: E402
from atelier_krita.protocol.schema import validate  # noqa: E402


def square_mask(extent: Extent, box: Bounds) -> bytes:
    rows = []
    for y in range(extent.height):
        inside = box.y <= y < box.bottom
        rows.append(bytes(255 if inside and box.x <= x < box.right else 0
                          for x in range(extent.width)))
    return b"".join(rows)


# ------------------------------------------------------------------ pixels
def test_bgra_rgba_swap_moves_red_and_blue_only():
    bgra = bytes([10, 20, 30, 40, 1, 2, 3, 4])
    rgba = bgra_to_rgba(bgra)
    assert rgba == bytes([30, 20, 10, 40, 3, 2, 1, 4])
    assert rgba_to_bgra(rgba) == bgra


def test_a_large_swap_goes_in_chunks_and_gives_the_same_bytes():
    # over SWAP_CHUNK the swap works a chunk at a time (Qt's thread gets Python's GIL
    # between chunks); pixels across each chunk's border come out as one swap gives them
    size = 2 * pixels.SWAP_CHUNK + 4 * 7
    data = bytes(i * 7 % 251 for i in range(size))
    swapped = bgra_to_rgba(data)
    assert len(swapped) == size
    assert swapped[0::4] == data[2::4] and swapped[2::4] == data[0::4]
    assert swapped[1::4] == data[1::4] and swapped[3::4] == data[3::4]


def test_rgb_becomes_opaque_rgba():
    assert rgb_to_rgba(bytes([1, 2, 3, 4, 5, 6])) == bytes([1, 2, 3, 255, 4, 5, 6, 255])


def test_swap_rejects_partial_pixels():
    with pytest.raises(ValueError, match="4-byte pixels"):
        bgra_to_rgba(b"\x00" * 6)


def test_luminance_weights_channels_and_alpha():
    # BGRA: pure red, pure green, white, white but transparent
    grey = luminance(bytes([0, 0, 255, 255, 0, 255, 0, 255, 255, 255, 255, 255, 255, 255, 255, 0]))
    assert grey[0] == 77 and grey[1] == 149 and grey[2] == 255 and grey[3] == 0


def test_transpose_flips_over_the_diagonal():
    data = bytes(range(6))            # 3 wide, 2 high
    assert transpose(data, Extent(3, 2)) == bytes([0, 3, 1, 4, 2, 5])


def test_grow_dilates_by_radius_in_every_direction():
    extent = Extent(20, 15)
    mask = square_mask(extent, Bounds(8, 6, 3, 2))
    grown = grow(mask, extent, 2)
    assert mask_bounds(grown, extent) == (6, 4, 7, 6)
    assert set(grown) == {0, 255}
    assert grow(mask, extent, 0) == mask


@pytest.mark.parametrize("radius", [1, 3, 4, 7])
def test_grow_matches_a_direct_max_filter(radius):
    extent = Extent(13, 9)
    mask = bytes((x * 7 + y * 13) % 256 if (x + y) % 5 == 0 else 0
                 for y in range(9) for x in range(13))
    expected = bytes(
        max(mask[yy * 13 + xx]
            for yy in range(max(0, y - radius), min(9, y + radius + 1))
            for xx in range(max(0, x - radius), min(13, x + radius + 1)))
        for y in range(9) for x in range(13))
    assert grow(mask, extent, radius) == expected


def test_grow_does_not_leak_across_row_ends():
    extent = Extent(10, 3)
    mask = bytearray(30)
    mask[9] = 255  # last pixel of row 0
    grown = grow(bytes(mask), extent, 1)
    assert grown[19] == 255 and grown[18] == 255    # below it and diagonally
    assert grown[10] == 0 and grown[20] == 0        # the next rows' starts stay clear


def test_feather_ramps_the_edge_and_keeps_the_inside():
    extent = Extent(30, 30)
    mask = square_mask(extent, Bounds(10, 10, 10, 10))
    soft = feather(mask, extent, 3)
    row = soft[15 * 30:16 * 30]
    assert row[15] == 255 and row[0] == 0 and row[29] == 0
    assert 0 < row[9] < row[10] < row[12] <= 255    # a ramp across the old edge
    assert list(row[7:15]) == sorted(row[7:15])
    assert soft[5 * 30 + 15] == 0                    # well outside stays untouched


def test_feather_keeps_a_full_mask_full_at_the_image_border():
    extent = Extent(8, 6)
    full = b"\xff" * 48
    assert feather(full, extent, 3) == full          # edges repeat, no darkening


def test_grow_and_feather_reach_bounds():
    extent = Extent(40, 40)
    mask = square_mask(extent, Bounds(15, 15, 5, 5))
    soft = grow_and_feather(mask, extent, 4, 3)
    assert mask_bounds(soft, extent) == (15 - 7, 15 - 7, 5 + 14, 5 + 14)


def direct_box_mean(mask: bytes, extent: Extent, radius: int) -> bytes:
    """A box blur computed pixel by pixel, edges repeated: what ``feather`` must equal."""
    w, h = extent.width, extent.height
    window = 2 * radius + 1

    def at(x: int, y: int) -> int:
        return mask[min(max(y, 0), h - 1) * w + min(max(x, 0), w - 1)]

    rows = [(sum(at(x + d, y) for d in range(-radius, radius + 1)) + window // 2) // window
            for y in range(h) for x in range(w)]
    return bytes((sum(rows[min(max(y + d, 0), h - 1) * w + x]
                      for d in range(-radius, radius + 1)) + window // 2) // window
                 for y in range(h) for x in range(w))


@pytest.mark.parametrize("band", [1, 40, 1 << 16])
def test_mask_filters_give_the_same_pixels_in_bands_of_any_size(monkeypatch, band):
    # The filters run on the plugin's worker thread in bands of rows, so that no single
    # C-level step holds Python's GIL long enough to stall Qt's thread.
    monkeypatch.setattr(pixels, "BAND_PIXELS", band)
    extent = Extent(23, 17)
    mask = bytes((x * 37 + y * 11) % 256 if (x * y) % 7 < 3 else 0
                 for y in range(17) for x in range(23))
    for radius in (1, 2, 5, 30):
        assert feather(mask, extent, radius) == direct_box_mean(mask, extent, radius), radius
    expected = bytes(max(mask[yy * 23 + xx] for yy in range(max(0, y - 3), min(17, y + 4))
                         for xx in range(max(0, x - 3), min(23, x + 4)))
                     for y in range(17) for x in range(23))
    assert grow(mask, extent, 3) == expected


def test_with_alpha_multiplies_or_replaces():
    rgba = bytes([1, 2, 3, 255, 4, 5, 6, 255])
    assert with_alpha(rgba, bytes([0, 128])) == bytes([1, 2, 3, 0, 4, 5, 6, 128])
    half = bytes([1, 2, 3, 128, 4, 5, 6, 255])
    assert with_alpha(half, bytes([255, 128]))[3::4] == bytes([128, 128])
    with pytest.raises(ValueError, match="does not match"):
        with_alpha(rgba, b"\x00")


# ------------------------------------------------------------------ geometry
def test_fit_extent_scales_4k_down_to_the_range_in_multiples_of_8():
    fitted = fit_extent(Extent(3840, 2160), ResolutionRange(512, 1024))
    assert fitted == Extent(1024, 576)


def test_fit_extent_rounds_odd_sizes_and_scales_small_ones_up():
    assert fit_extent(Extent(203, 157), ResolutionRange(64, 96)) == Extent(96, 72)
    fitted = fit_extent(Extent(101, 33), ResolutionRange(512, 768))
    assert fitted.longest == 512 and fitted.height % 8 == 0
    assert abs(fitted.width / fitted.height - 101 / 33) < 0.2


def test_fit_extent_never_passes_max_side():
    for width in range(1, 400, 7):
        fitted = fit_extent(Extent(width, 301), ResolutionRange(64, 100))
        assert fitted.longest <= 96 and fitted.width % 8 == 0 and fitted.height % 8 == 0


def test_resolution_range_capped_by_daemon_limit():
    assert range_for_family("sdxl").capped(768) == ResolutionRange(768, 768)
    assert range_for_family("sd15") == ResolutionRange(512, 768)
    # a Flux-family Fill region goes out at Flux's megapixel, in whole 16-pixel tokens
    for family in ("flux", "flux_fill", "flux_control", "sd3", "chroma", "zimage"):
        fitted = fit_extent(Extent(300, 200), range_for_family(family))
        assert fitted.longest == 1024 and fitted.width % 16 == 0 and fitted.height % 16 == 0
    with pytest.raises(ValueError):
        ResolutionRange(600, 500)


def test_context_region_pads_and_stays_in_canvas():
    canvas = Extent(200, 150)
    region = context_region(Bounds(10, 20, 30, 20), canvas, padding=16)
    assert region == Bounds(0, 4, 56, 52)
    # min_size widens around the selection and shifts back inside the canvas
    region = context_region(Bounds(180, 130, 10, 10), canvas, padding=4, min_size=64)
    assert region == Bounds(136, 86, 64, 64)
    # a canvas smaller than min_size is taken whole
    assert context_region(Bounds(5, 5, 4, 4), Extent(40, 30), padding=2, min_size=64) == \
        Bounds(0, 0, 40, 30)


def test_context_region_contains_the_selection():
    canvas = Extent(300, 200)
    for sel in (Bounds(0, 0, 10, 10), Bounds(290, 190, 10, 10), Bounds(100, 50, 80, 120)):
        region = context_region(sel, canvas, padding=default_padding(sel), min_size=128)
        assert region.x <= sel.x and region.y <= sel.y
        assert region.right >= sel.right and region.bottom >= sel.bottom
        assert region.right <= canvas.width and region.bottom <= canvas.height


def test_bounds_clamp_and_relative():
    assert Bounds(-5, -5, 20, 20).clamped(Extent(10, 10)) == Bounds(0, 0, 10, 10)
    assert Bounds(50, 50, 5, 5).clamped(Extent(10, 10)).is_empty
    assert Bounds(12, 7, 3, 3).relative_to(Bounds(10, 5, 10, 10)) == Bounds(2, 2, 3, 3)


# ------------------------------------------------------------------ plans and requests
CANVAS = Extent(203, 157)
SMALL = ResolutionRange(32, 96)


def test_generate_without_selection_covers_the_canvas():
    plan = plan_job(Mode.GENERATE, JobSettings(), CANVAS, None, SMALL)
    assert plan.region == Bounds(0, 0, 203, 157)
    assert plan.model_extent == Extent(96, 72) and plan.scaled
    assert (plan.kind, plan.send_image, plan.send_mask, plan.clip_to_selection) == \
        ("txt2img", False, False, False)


def test_generate_with_selection_covers_its_bounds():
    plan = plan_job(Mode.GENERATE, JobSettings(), CANVAS, Bounds(20, 30, 40, 24), SMALL)
    assert plan.region == Bounds(20, 30, 40, 24)
    assert plan.model_extent == Extent(40, 24)


def test_fill_needs_a_selection():
    with pytest.raises(JobRefused, match="needs a selection"):
        plan_job(Mode.FILL, JobSettings(), CANVAS, None, SMALL)
    with pytest.raises(JobRefused, match="needs a selection"):
        plan_job(Mode.FILL, JobSettings(), CANVAS, Bounds(500, 500, 10, 10), SMALL)


def test_fill_sends_context_around_the_grown_selection():
    settings = JobSettings(mask_grow=4, mask_feather=2)
    selection = Bounds(80, 60, 30, 20)
    plan = plan_job(Mode.FILL, settings, CANVAS, selection, ResolutionRange(64, 512))
    reach = selection.expanded(6)
    assert plan.region.x < reach.x and plan.region.right > reach.right
    assert plan.region.width >= 64 and plan.region.height >= 64
    assert (plan.kind, plan.send_image, plan.send_mask, plan.clip_to_selection) == \
        ("inpaint", True, True, True)


def test_seamless_is_the_whole_canvas_and_defaults_to_both_axes():
    plan = plan_job(Mode.SEAMLESS, JobSettings(), CANVAS, Bounds(1, 1, 5, 5), SMALL)
    assert plan.region == Bounds.of(CANVAS) and plan.kind == "make_seamless"
    assert plan.tiling == "both"
    assert plan_job(Mode.SEAMLESS, JobSettings(tiling="x"), CANVAS, None, SMALL).tiling == "x"


def test_refine_with_selection_clips_without_sending_a_mask():
    plan = plan_job(Mode.REFINE, JobSettings(mask_grow=2, mask_feather=1), CANVAS,
                    Bounds(10, 10, 20, 20), SMALL)
    assert plan.region == Bounds(7, 7, 26, 26)
    assert plan.kind == "img2img" and plan.send_image and not plan.send_mask
    assert plan.clip_to_selection


def test_build_request_for_each_mode_validates():
    settings = JobSettings(prompt="a red fox", seed=7, steps=4, batch_size=2,
                           depth_layer="depth", strength=0.4)
    ids = UploadIds(image="a" * 32, mask="b" * 32, depth="c" * 32)
    for mode in set(Mode) - {Mode.UPSCALE, Mode.TEXTURE, Mode.CONTROL_IMAGE}:   # further down
        plan = plan_job(mode, settings, CANVAS, Bounds(40, 40, 50, 40), SMALL)
        request = build_request(plan, settings, ids)
        validate(request, "job")
        assert (request.width, request.height) == (plan.model_extent.width,
                                                   plan.model_extent.height)
        assert request.seed == 7 and request.batch_size == 2 and request.prompt == "a red fox"
        assert (request.init_image is not None) == plan.send_image
        assert (request.mask is not None) == plan.send_mask
    fill = build_request(plan_job(Mode.FILL, settings, CANVAS, Bounds(40, 40, 50, 40), SMALL),
                         settings, ids)
    assert fill.strength == 1.0 and fill.mask_grow == 0 and fill.mask_feather == 0
    depth = build_request(plan_job(Mode.DEPTH, settings, CANVAS, None, SMALL), settings, ids)
    assert depth.depth is not None and depth.depth.upload == "c" * 32
    assert depth.depth.convention == "normalized" and depth.control is not None
    estimate = JobSettings(depth_layer=None)
    plan = plan_job(Mode.DEPTH, estimate, CANVAS, None, SMALL)
    request = build_request(plan, estimate, UploadIds(image="a" * 32))
    assert request.depth is not None and request.depth.estimate and request.init_image
    assert request.kind == "img2img" and request.strength == estimate.strength
    assert request.cache_interval == 1      # step caching stays off unless asked for


def test_step_cache_reaches_the_request_in_every_mode():
    settings = JobSettings(prompt="a red fox", seed=7, steps=9, depth_layer="depth",
                           cache_interval=3)
    ids = UploadIds(image="a" * 32, mask="b" * 32, depth="c" * 32)
    for mode in set(Mode) - {Mode.UPSCALE, Mode.TEXTURE, Mode.CONTROL_IMAGE}:   # further down
        plan = plan_job(mode, settings, CANVAS, Bounds(40, 40, 50, 40), SMALL)
        request = build_request(plan, settings, ids)
        validate(request, "job")
        assert request.cache_interval == 3 and request.steps == 9, mode
    assert CACHE_INTERVAL_MAX == 10       # the protocol's own limit
    assert "faster" in CACHE_INTERVAL_HELP and "differ" in CACHE_INTERVAL_HELP


def test_depth_model_reaches_control_model_of_depth_jobs_only():
    ids = UploadIds(image="a" * 32, mask="b" * 32, depth="c" * 32)
    for layer in ("depth", None):          # a depth layer, or depth estimated on the daemon
        default = JobSettings(prompt="a canyon", seed=7, depth_layer=layer)
        assert default.depth_model is None
        plan = plan_job(Mode.DEPTH, default, CANVAS, None, SMALL)
        request = build_request(plan, default, ids)
        validate(request, "job")
        assert request.control is not None and request.control.model is None   # daemon's choice
        chosen = JobSettings(prompt="a canyon", seed=7, depth_layer=layer,
                             depth_model="tiny-adapter", depth_scale=0.8)
        request = build_request(plan, chosen, ids)
        validate(request, "job")
        assert request.control is not None
        assert (request.control.model, request.control.scale) == ("tiny-adapter", 0.8)
    empty = JobSettings(depth_layer="depth", depth_model="")   # an empty name is the default
    request = build_request(plan_job(Mode.DEPTH, empty, CANVAS, None, SMALL), empty, ids)
    assert request.control is not None and request.control.model is None
    chosen = JobSettings(depth_layer="depth", depth_model="tiny-controlnet")
    for mode in Mode:
        if mode not in (Mode.DEPTH, Mode.CONTROL_IMAGE):         # no depth, no conditioning model
            request = build_request(plan_job(mode, chosen, CANVAS, Bounds(40, 40, 50, 40), SMALL),
                                    chosen, ids)
            assert request.control is None and request.depth is None, mode
    # History keeps whole settings; the seed the daemon used replaces only the seed.
    assert chosen.with_seed(5).depth_model == "tiny-controlnet"


DAEMON_MODELS = [ModelInfo("tiny", "tiny", "sd15"), ModelInfo("tiny-depth", "tiny", "sd2_depth"),
                 ModelInfo("tiny-controlnet", "tiny", "controlnet"),
                 ModelInfo("tiny-adapter", "tiny", "t2i_adapter"),
                 ModelInfo("tiny-adapter", "hf_cache", "t2i_adapter"),
                 ModelInfo("odd", "diffusers", "unknown")]


def test_the_model_field_offers_what_jobs_run_on_not_the_conditioners():
    assert base_model_names(DAEMON_MODELS) == ["tiny", "tiny-depth", "odd"]
    others = [ModelInfo("detail", "single_file", "sd15", kind="lora"),
              ModelInfo("easynegative", "single_file", "sd15", kind="embedding")]
    assert base_model_names(DAEMON_MODELS + others) == ["tiny", "tiny-depth", "odd"]


def test_depth_model_choices_offer_the_daemons_conditioners_with_their_kind():
    assert depth_model_choices(DAEMON_MODELS) == [
        (DEPTH_MODEL_DEFAULT, None),
        ("tiny-controlnet (ControlNet)", "tiny-controlnet"),
        ("tiny-adapter (T2I-Adapter: fast)", "tiny-adapter")]
    assert depth_model_choices(DAEMON_MODELS, "tiny-adapter") == depth_model_choices(DAEMON_MODELS)
    assert depth_model_choices([]) == [(DEPTH_MODEL_DEFAULT, None)]
    # A ControlNet whose name says another kind (canny) is no depth model.
    canny = ModelInfo("tiny-controlnet-canny", "tiny", "controlnet", kind="controlnet",
                      control_kind="canny")
    assert depth_model_choices(DAEMON_MODELS + [canny]) == depth_model_choices(DAEMON_MODELS)
    assert DEPTH_MODEL_DEFAULT == "Daemon default"
    assert "once per job" in DEPTH_MODEL_HELP and "every step" in DEPTH_MODEL_HELP


def test_a_depth_model_the_daemon_no_longer_lists_stays_chosen_and_marked():
    assert depth_model_choices(DAEMON_MODELS, "gone-adapter")[-1] == \
        ("gone-adapter (not listed by the daemon)", "gone-adapter")
    # Base models are no depth models: one named stays marked too.
    assert depth_model_choices(DAEMON_MODELS, "tiny")[-1] == \
        ("tiny (not listed by the daemon)", "tiny")
    # Before the daemon answers, nothing is known to be missing.
    assert depth_model_choices([], "tiny-adapter") == [(DEPTH_MODEL_DEFAULT, None),
                                                        ("tiny-adapter", "tiny-adapter")]


# ------------------------------------------------------------------ issue 12
def test_seeds_are_all_32_bits_and_the_seed_field_text_is_checked():
    assert SEED_MAX == 2**32 - 1                      # the protocol's own bound
    assert parse_seed("") is None and parse_seed("  ") is None      # empty: random
    assert parse_seed("2661926866") == 2661926866     # above what a QSpinBox holds
    assert parse_seed("4294967295") == SEED_MAX and parse_seed("0") == 0
    for text in ("4294967296", "-1", "12a", "1.5", "0x10"):
        with pytest.raises(ValueError, match="0 to 4294967295"):
            parse_seed(text)
    settings = JobSettings(prompt="p", seed=2661926866)
    request = build_request(plan_job(Mode.GENERATE, settings, CANVAS, None, SMALL), settings,
                            UploadIds())
    validate(request, "job")
    assert request.seed == 2661926866
    for seed in (-1, 2**32):
        with pytest.raises(ValueError, match="seed"):
            JobSettings(seed=seed)


@pytest.mark.parametrize("name,family", [
    ("lllyasviel/control_v11f1p_sd15_depth", "sd15"),
    ("TencentARC/t2iadapter_depth_sd15v2", "sd15"),
    ("controlnet/control_sd15_depth.safetensors", "sd15"),
    ("diffusers/controlnet-depth-sdxl-1.0", "sdxl"),
    ("TencentARC/t2i-adapter-depth-midas-sdxl-1.0", "sdxl"),
    ("controlnet/diffusers_xl_depth_full.safetensors", "sdxl"),
    ("thibaud/controlnet-sd21-depth-diffusers", "sd2"),
    ("lllyasviel/sd-controlnet-depth", None),         # the name does not say
    ("tiny-adapter", None), ("XLabs-AI/flux-controlnet-depth", None)])
def test_conditioner_family_reads_what_the_name_says(name, family):
    assert conditioner_family(name) == family


FAMILY_MODELS = DAEMON_MODELS + [ModelInfo("tiny-sdxl", "tiny", "sdxl"),
                                 ModelInfo("tiny-sdxl-adapter", "tiny", "t2i_adapter"),
                                 ModelInfo("diffusers/controlnet-depth-sdxl-1.0", "hf_cache",
                                           "controlnet"),
                                 ModelInfo("lllyasviel/control_v11f1p_sd15_depth", "hf_cache",
                                           "controlnet")]


def names(choices):
    return [name for _, name in choices]


def test_depth_model_choices_are_those_made_for_the_models_family():
    sd15 = names(depth_model_choices(FAMILY_MODELS, family="sd15"))
    assert sd15 == [None, "tiny-controlnet", "tiny-adapter",
                    "lllyasviel/control_v11f1p_sd15_depth"]
    assert names(depth_model_choices(FAMILY_MODELS, family="sd15_inpaint")) == sd15
    sdxl = names(depth_model_choices(FAMILY_MODELS, family="sdxl"))
    assert sdxl == [None, "tiny-controlnet", "tiny-adapter", "tiny-sdxl-adapter",
                    "diffusers/controlnet-depth-sdxl-1.0"]
    # SD2-depth takes the depth map itself; an unknown family gets everything.
    assert names(depth_model_choices(FAMILY_MODELS, family="sd2_depth")) == [None]
    assert len(depth_model_choices(FAMILY_MODELS, family=None)) == 6     # all, once each
    assert model_family(FAMILY_MODELS, "tiny-sdxl") == "sdxl"
    assert model_family(FAMILY_MODELS, None) is None


def test_a_chosen_depth_model_of_another_family_stays_and_says_so():
    assert depth_model_choices(FAMILY_MODELS, "tiny-sdxl-adapter", family="sd15")[-1] == \
        ("tiny-sdxl-adapter (made for SDXL models)", "tiny-sdxl-adapter")
    assert depth_model_choices(FAMILY_MODELS, "tiny-adapter", family="sd2_depth")[-1] == \
        ("tiny-adapter (SD2-depth models take none)", "tiny-adapter")


def test_depth_source_defaults_to_what_works():
    layers = ["Background", "sketch", "Depth pass", "depth 2"]
    assert default_depth_source(layers, None) == "Depth pass"      # named for depth
    assert default_depth_source(layers, "no estimator") == "Depth pass"
    # Nothing named for depth: estimating, until the daemon said it cannot.
    assert default_depth_source(["Background", "sketch"], None) == ESTIMATE_DEPTH
    assert default_depth_source(["Background", "sketch"], "no estimator") == "Background"
    assert default_depth_source([], "no estimator") == ESTIMATE_DEPTH


@pytest.mark.parametrize("interval", [0, 11])
def test_settings_reject_a_step_cache_out_of_range(interval):
    with pytest.raises(ValueError, match="step cache"):
        JobSettings(cache_interval=interval)


def test_build_request_wants_its_uploads():
    plan = plan_job(Mode.FILL, JobSettings(), CANVAS, Bounds(5, 5, 9, 9), SMALL)
    with pytest.raises(ValueError, match="mask uploaded"):
        build_request(plan, JobSettings(), UploadIds(image="a" * 32))


def test_settings_reject_unknown_axes():
    with pytest.raises(ValueError, match="seamless axes"):
        JobSettings(tiling="diagonal")


def test_layer_name_has_prompt_and_seed():
    assert layer_name("  a   red fox ", 42) == "a red fox [seed 42]"
    long = layer_name("x" * 100, 1)
    assert len(long) < 60 and long.endswith("[seed 1]")
    assert layer_name("", 3) == "untitled [seed 3]"


def test_history_keeps_newest_first_up_to_its_limit():
    history = History(limit=2)
    for seed in (1, 2, 3):
        history.add(HistoryEntry(Mode.GENERATE, JobSettings(prompt="p", seed=seed),
                                 Bounds(0, 0, 8, 8), "done", (seed,)))
    assert len(history) == 2 and [e.settings.seed for e in history] == [3, 2]
    assert "seed 3" in history[0].summary()


# ------------------------------------------------------------------ packaging
def test_build_makes_an_importable_zip(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "krita_plugin" / "build.py"),
                          "--out", str(tmp_path)], capture_output=True, text=True, check=True)
    zip_path = Path(out.stdout.strip())
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        desktop = archive.read("atelier_krita.desktop").decode()
        archive.extractall(tmp_path / "x")
    assert "ServiceTypes=Krita/PythonPlugin" in desktop and "X-KDE-Library=atelier_krita" in desktop
    assert "atelier_krita/" in names          # Krita's importer looks for the folder entry
    assert "atelier_krita/protocol/client.py" in names
    assert "atelier_krita/protocol/_vendor/websockets/sync/client.py" in names
    assert not any(name.endswith(".so") or "__pycache__" in name for name in names)
    # The extracted plugin imports its protocol and the vendored websockets, not the installed one.
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); "
             "from atelier_krita.protocol import _websocket; print(_websocket.connect.__module__)")
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "x")],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "atelier_krita.protocol._vendor.websockets.sync.client"


# ------------------------------------------------------------------ the docker (issue 12)
from atelier_krita import actions  # noqa: E402
from atelier_krita.jobs import (QUEUE_LIMIT, Workflow, action_label, job_mode,  # noqa: E402
                                queue_text, shown_fields, workflow_of)
from atelier_krita.geometry import thumbnail_extent  # noqa: E402


def test_generate_fills_a_selection_and_the_other_modes_keep_theirs():
    assert job_mode(Workflow.GENERATE, False) is Mode.GENERATE
    assert job_mode(Workflow.GENERATE, True) is Mode.FILL
    for workflow, mode in ((Workflow.REFINE, Mode.REFINE), (Workflow.DEPTH, Mode.DEPTH),
                           (Workflow.SEAMLESS, Mode.SEAMLESS)):
        assert job_mode(workflow, False) is mode and job_mode(workflow, True) is mode
    # History's Recall finds the drop-down entry of every job it keeps (no control images)
    for mode in set(Mode) - {Mode.CONTROL_IMAGE}:
        assert job_mode(workflow_of(mode), mode is Mode.FILL) is mode


def test_the_generate_button_says_what_a_click_does():
    assert action_label(Workflow.GENERATE, False) == "Generate"
    assert action_label(Workflow.GENERATE, True) == "Fill selection"
    assert action_label(Workflow.REFINE, True) == "Refine selection"
    assert action_label(Workflow.SEAMLESS, True) == "Make seamless"


def test_each_mode_shows_only_its_own_fields():
    assert shown_fields(Workflow.GENERATE, estimate_depth=True) == frozenset()
    assert shown_fields(Workflow.REFINE, estimate_depth=False) == {"strength"}
    assert shown_fields(Workflow.SEAMLESS, estimate_depth=False) == {"strength"}
    assert shown_fields(Workflow.DEPTH, estimate_depth=False) == {"depth"}
    # Estimating depth repaints the canvas at strength.
    assert shown_fields(Workflow.DEPTH, estimate_depth=True) == {"depth", "strength"}


def test_queue_text_counts_waiting_jobs():
    assert queue_text(0) == ""
    assert queue_text(2) == "2 queued"
    assert queue_text(QUEUE_LIMIT) == f"{QUEUE_LIMIT} queued (full)"


def test_shortcut_sequences_compare_in_any_spelling():
    assert actions.normalize("Shift+Ctrl+Enter") == actions.normalize("ctrl+shift+return")
    assert actions.normalize("Shift+Esc") == actions.normalize("Shift+Escape")
    clash = actions.ActionSpec("x", "X", "Ctrl+Shift+G")
    assert actions.shortcut_clashes([clash], ["ctrl+shift+g"]) == {"x": "Ctrl+Shift+G"}


KRITA_SHORTCUTS = Path("/usr/share/krita")


def _krita_default_shortcuts() -> set[str]:
    """Every default shortcut Krita's installed action files and default scheme name."""
    import re
    taken: set[str] = set()
    for path in (KRITA_SHORTCUTS / "actions").glob("*.action"):
        taken |= set(re.findall(r"<shortcut>([^<]+)</shortcut>", path.read_text()))
    scheme = KRITA_SHORTCUTS / "shortcuts" / "krita_default.shortcuts"
    if scheme.is_file():
        for line in scheme.read_text().splitlines():
            if "=" in line and not line.startswith("["):
                taken |= {part for part in line.split("=", 1)[1].split(";") if part.strip()}
    return {t.replace("&lt;", "<").replace("&gt;", ">") for t in taken}


def test_default_shortcuts_clash_with_none_of_kritas_defaults():
    if not (KRITA_SHORTCUTS / "actions").is_dir():
        pytest.skip("Krita is not installed; tests/test_krita_host.py checks the real app")
    taken = _krita_default_shortcuts()
    assert {"Ctrl+Shift+G", "Ctrl+Shift+A"} <= taken     # what the issue suggested: Krita's
    assert actions.shortcut_clashes(actions.ACTIONS, taken) == {}


def test_the_action_file_gives_krita_the_same_default_shortcuts():
    import xml.etree.ElementTree as ElementTree
    root = ElementTree.parse(REPO / "krita_plugin" / "atelier_krita.action").getroot()
    found = {action.get("name"): action.findtext("shortcut")
             for action in root.iter("Action")}
    assert found == {spec.name: spec.shortcut for spec in actions.ACTIONS}


def test_history_keeps_the_newest_results_pixels_within_its_budget():
    from atelier_krita.history import ResultImage
    image = ResultImage(b"\x01" * 400, 7, b"\x02" * 16, Extent(2, 2))
    history = History(limit=5, pixel_budget=1000)
    for seed in range(4):
        history.add(HistoryEntry(Mode.GENERATE, JobSettings(seed=seed), Bounds(0, 0, 10, 10),
                                 "done", (seed,), images=(image, image) if seed == 0 else
                                 (image,)))
    kept = [entry.has_pixels for entry in history]
    assert kept == [True, True, False, False]     # 400 + 400, then 800 would pass 1000
    assert all(entry.images[0].thumb for entry in history)   # thumbnails stay


def test_thumbnails_keep_the_aspect():
    assert thumbnail_extent(Extent(2048, 1024), 96) == Extent(96, 48)
    assert thumbnail_extent(Extent(30, 300), 96) == Extent(10, 96)
    assert thumbnail_extent(Extent(1, 4000), 96) == Extent(1, 96)


# ---------------------------------------------------------------- live painting (issue 15)
from atelier_krita.live import (LIVE_DELAY_S, LIVE_SESSION, LIVE_STRENGTH,  # noqa: E402
                                LiveDebounce, LiveResults, checksum, is_superseded)
from atelier_krita.protocol.messages import Cancelled  # noqa: E402


def test_live_debounce_sends_the_newest_state_once_after_the_canvas_stands_still():
    live = LiveDebounce(delay=0.3)
    assert not live.due(0.0)                       # nothing seen yet
    live.observe(1, 0.0)                           # Live turned on: the first state is a change
    assert live.pending and not live.due(0.2)
    assert live.due(0.31)                          # 300 ms of stillness: send it
    assert not live.due(0.5) and not live.pending  # once
    live.observe(1, 0.6)                           # unchanged: nothing to send
    assert not live.due(2.0)
    # Two strokes quickly: the wait restarts at each, one send for the newest.
    live.observe(2, 3.0)
    live.observe(3, 3.2)
    assert not live.due(3.4)
    assert live.due(3.51)
    assert live.sent == 3 and not live.due(4.0)
    # Back to a state sent before the newest still counts as a change.
    live.observe(2, 5.0)
    assert live.due(5.31)
    live.reset()
    assert not live.pending and not live.due(9.0)
    live.observe(2, 10.0)
    assert live.due(10.31)                         # after Live off/on the state goes again


def test_live_defaults():
    assert LIVE_DELAY_S == 0.3 and LIVE_STRENGTH == 0.5 and LIVE_SESSION == "canvas"
    assert checksum([b"ab", b"c"]) == checksum([b"abc"]) != checksum([b"abd"])


def test_live_results_show_only_newer_states_and_superseded_is_no_user_cancel():
    jobs = LiveResults()
    assert jobs.sent("r1") == 0 and jobs.sent("r2") == 1
    assert jobs.running and jobs.owns(ref="r1") and not jobs.owns(ref="zz")
    assert jobs.accepted("r1", "j1") and jobs.accepted("r2", "j2")
    assert not jobs.accepted("other", "j9")
    assert jobs.newest_id() == "j2"
    assert jobs.should_show("j2")
    jobs.ended("j2")
    assert not jobs.should_show("j1")             # older than what is shown: dropped
    jobs.ended("j1")
    assert not jobs.running and jobs.newest_id() is None
    assert is_superseded(Cancelled(job_id="j1", reason="superseded"))
    assert not is_superseded(Cancelled(job_id="j1"))


# ---------------------------------------------------------------- LoRAs and sampler presets
LORA_MODELS = [ModelInfo("tiny", "tiny", "sd15"), ModelInfo("tiny-xl", "tiny", "sdxl"),
               ModelInfo("style15", "single_file", "sd15", kind="lora"),
               ModelInfo("stylexl", "single_file", "sdxl", kind="lora"),
               ModelInfo("odd", "single_file", "unknown", kind="lora"),
               ModelInfo("easyneg", "single_file", "sd15", kind="embedding")]


def test_a_lora_row_offers_the_daemons_loras_made_for_the_models_family():
    from atelier_krita.loras import LORA_NONE_LABEL, lora_choices
    names = lambda family: [name for _, name in lora_choices(LORA_MODELS, family)]  # noqa: E731
    assert names("sd15") == [None, "style15", "odd"]
    assert names("sd15_inpaint") == [None, "style15", "odd"]   # an inpainting model: its base's
    assert names("sdxl") == [None, "stylexl", "odd"]
    assert names(None) == names("unknown") == [None, "style15", "stylexl", "odd"]
    assert lora_choices(LORA_MODELS, "sd15")[0] == (LORA_NONE_LABEL, None)
    assert lora_choices([], "sd15") == [(LORA_NONE_LABEL, None)]


def test_a_chosen_lora_that_is_not_offered_stays_and_says_why():
    from atelier_krita.loras import lora_choices
    assert lora_choices(LORA_MODELS, "sd15", "stylexl")[-1] == (
        "stylexl (made for SDXL models)", "stylexl")
    assert lora_choices(LORA_MODELS, "sd15", "gone")[-1] == (
        "gone (not listed by the daemon)", "gone")
    assert lora_choices([], "sd15", "gone")[-1] == ("gone", "gone")   # not known yet
    assert lora_choices(LORA_MODELS, "sd15", "style15").count(("style15", "style15")) == 1


def test_settings_refuse_loras_a_job_cannot_take():
    from atelier_krita.protocol.messages import LORAS_MAX
    JobSettings(loras=tuple((f"l{i}", 1.0) for i in range(LORAS_MAX)))
    with pytest.raises(ValueError, match=f"at most {LORAS_MAX} LoRAs, 9 are chosen: remove 1"):
        JobSettings(loras=tuple((f"l{i}", 1.0) for i in range(LORAS_MAX + 1)))
    with pytest.raises(ValueError, match="weight 4.5; weights go from -4 to 4"):
        JobSettings(loras=(("a", 4.5),))
    with pytest.raises(ValueError, match="'a' is chosen twice"):
        JobSettings(loras=(("a", 1.0), ("a", 0.5)))
    with pytest.raises(ValueError, match="without a LoRA"):
        JobSettings(loras=(("", 1.0),))


def test_loras_and_the_sampler_preset_reach_the_request_in_every_mode():
    settings = JobSettings(loras=(("style15", 0.5), ("odd", -1.0)), sampler_preset="lcm_4",
                           depth_layer="depth")
    ids = UploadIds(image="a" * 32, mask="b" * 32, depth="c" * 32)
    # every diffusion mode; an upscale sends them only when it refines, a texture set never
    for mode in set(Mode) - {Mode.UPSCALE, Mode.TEXTURE, Mode.CONTROL_IMAGE}:
        request = build_request(plan_job(mode, settings, CANVAS, Bounds(40, 40, 50, 40), SMALL),
                                settings, ids)
        validate(request, "job")
        assert [(lora.name, lora.weight) for lora in request.loras] == [("style15", 0.5),
                                                                         ("odd", -1.0)]
        assert request.sampler_preset == "lcm_4"
    plain = build_request(plan_job(Mode.GENERATE, JobSettings(), CANVAS, None, SMALL),
                          JobSettings(), UploadIds())
    assert plain.loras == [] and plain.sampler_preset is None


def test_the_sampler_preset_field_offers_none_and_the_daemons_presets():
    from atelier_krita.loras import preset_choices
    assert preset_choices(["lightning_4", "lcm_4"], None, True) == [
        ("None", None), ("lightning_4", "lightning_4"), ("lcm_4", "lcm_4")]
    assert preset_choices(["lcm_4"], "turbo_1", True)[-1] == (
        "turbo_1 (not listed by the daemon)", "turbo_1")
    assert preset_choices([], "turbo_1", False)[-1] == ("turbo_1", "turbo_1")   # not connected


def test_a_preset_says_why_the_fields_it_decides_are_greyed_out():
    from atelier_krita.loras import preset_override_note
    assert preset_override_note(None) == preset_override_note("") == ""
    note = preset_override_note("lcm_4")
    assert "sampler preset lcm_4" in note and "steps, guidance" in note and "None" in note


def test_history_says_which_loras_and_preset_a_job_used():
    entry = HistoryEntry(Mode.GENERATE, JobSettings(prompt="p", loras=(("style15", 0.5),),
                                                    sampler_preset="lcm_4"),
                         Bounds(0, 0, 8, 8), "done", (3,))
    assert "LoRAs style15 0.5 | preset lcm_4" in entry.summary()
    assert "LoRA" not in HistoryEntry(Mode.GENERATE, JobSettings(), Bounds(0, 0, 8, 8),
                                      "done", (3,)).summary()


# ---------------------------------------------------------------- upscale and texture sets
from atelier_krita.assets import (LANCZOS, UpscaleLayout, map_layer_names,  # noqa: E402
                                  texture_group_name, upscale_extent, upscale_layer_name,
                                  upscale_layout, upscale_problem, upscale_sizes,
                                  upscaler_choices)
from atelier_krita.jobs import (Workflow, action_label, job_mode, shown_fields,  # noqa: E402
                                workflow_of)

UPLOAD = "c" * 32


def test_upscale_sizes_are_the_factor_or_the_longest_side_in_multiples_of_8():
    assert upscale_extent(Extent(203, 157), 2.0) == Extent(408, 312)
    assert upscale_extent(Extent(1024, 1024), 4.0) == Extent(4096, 4096)
    assert upscale_extent(Extent(1000, 500), 2.0, side=4096) == Extent(4096, 2048)
    assert upscale_extent(Extent(300, 1200), 2.0, side=2048) == Extent(512, 2048)
    assert [label for label, _, _ in upscale_sizes()] == [
        "2x", "4x", "longest side 2048", "longest side 4096", "longest side 8192"]


def test_an_upscale_of_the_whole_canvas_scales_the_image_to_the_output():
    layout = upscale_layout(Extent(203, 157), Bounds(0, 0, 203, 157), Extent(408, 312), 2.0)
    assert layout == UpscaleLayout(Extent(408, 312), Bounds(0, 0, 408, 312))


def test_an_upscale_of_a_selection_lands_over_the_same_part_of_the_scaled_image():
    layout = upscale_layout(Extent(200, 100), Bounds(50, 20, 40, 32), Extent(160, 128), 4.0)
    assert layout.canvas == Extent(800, 400)
    assert layout.placed == Bounds(200, 80, 160, 128)
    # a region at the edge whose output rounded up still fits inside the scaled image
    edge = upscale_layout(Extent(203, 157), Bounds(163, 127, 40, 30), Extent(80, 64), 2.0)
    assert edge.placed.right <= edge.canvas.width and edge.placed.bottom <= edge.canvas.height


def test_upscale_limits_name_the_size_and_the_limit():
    fits = UpscaleLayout(Extent(8192, 8192), Bounds(0, 0, 8192, 8192))
    assert upscale_problem(fits, 8192, 8192 * 8192) is None
    big = UpscaleLayout(Extent(8400, 8400), Bounds(0, 0, 8400, 8400))
    problem = upscale_problem(big, 8192, 8192 * 8192)
    assert "8400x8400" in problem and "limit of 8192 pixels a side" in problem
    # a selection's result fits but the scaled document does not
    doc = UpscaleLayout(Extent(16000, 8000), Bounds(0, 0, 2048, 2048))
    assert "the scaled image would be 16000x8000" in upscale_problem(doc, 8192, None)
    pixels = upscale_problem(UpscaleLayout(Extent(8000, 8000), Bounds(0, 0, 8000, 8000)),
                             8192, 4096 * 4096)
    assert "16777216 pixels" in pixels
    assert upscale_problem(big, None, None) is None     # limits not known yet


def test_an_upscale_that_makes_nothing_bigger_is_refused():
    with pytest.raises(JobRefused, match="the region is already 4096x4096: upscaling it to "
                                         "2048x2048 makes nothing bigger"):
        plan_job(Mode.UPSCALE, JobSettings(upscale_side=2048), Extent(4096, 4096), None,
                 ResolutionRange(64, 96))


def test_upscale_request_sends_the_region_at_its_size_and_asks_for_the_output():
    settings = JobSettings(prompt="stone", seed=3, upscale_factor=4.0, upscaler="4x-tiny",
                           refine_strength=0.3, tiling="both", steps=10, model="tiny")
    plan = plan_job(Mode.UPSCALE, settings, Extent(200, 100), Bounds(50, 20, 40, 32),
                    ResolutionRange(64, 96))
    assert plan.model_extent == Extent(40, 32) and not plan.scaled   # uploaded unscaled
    assert plan.scaled_canvas == Extent(800, 400) and plan.placed == Bounds(200, 80, 160, 128)
    request = build_request(plan, settings, UploadIds(image=UPLOAD))
    validate(request, "job")
    assert (request.kind, request.width, request.height) == ("upscale", 160, 128)
    assert request.init_image == UPLOAD and request.tiling == "both"
    assert request.upscale.upscaler == "4x-tiny" and request.upscale.refine_strength == 0.3
    assert request.upscale.scale is None and request.preview_every == 0
    assert request.model == "tiny" and request.batch_size == 1 and request.output_format == "raw"
    # a plain upscale sends no diffusion settings; a huge one comes back as PNG
    plain = JobSettings(upscale_side=8192, model="tiny", loras=(("style", 1.0),))
    plan = plan_job(Mode.UPSCALE, plain, Extent(4096, 4096), None, ResolutionRange(64, 96))
    request = build_request(plan, plain, UploadIds(image=UPLOAD))
    validate(request, "job")
    assert (request.width, request.height, request.output_format) == (8192, 8192, "png")
    assert request.model is None and request.loras == [] and request.upscale.upscaler is None
    assert request.sampler_preset is None
    refining = JobSettings(refine_strength=0.5, loras=(("style", 0.5),), sampler_preset="lcm_4")
    request = build_request(plan_job(Mode.UPSCALE, refining, Extent(64, 64), None,
                                     ResolutionRange(64, 96)), refining, UploadIds(image=UPLOAD))
    assert [(lora.name, lora.weight) for lora in request.loras] == [("style", 0.5)]
    assert request.sampler_preset == "lcm_4"


def test_texture_set_request_takes_the_region_and_the_maps():
    settings = JobSettings(prompt="bark", texture_source="marigold", tiling="x",
                           loras=(("style", 1.0),))
    plan = plan_job(Mode.TEXTURE, settings, Extent(203, 157), None, ResolutionRange(64, 96))
    assert plan.region == Bounds(0, 0, 203, 157) and plan.model_extent == Extent(203, 157)
    assert plan.scaled_canvas is None and plan.placed == plan.region
    request = build_request(plan, settings, UploadIds(image=UPLOAD))
    validate(request, "job")
    assert request.kind == "texture_set" and request.init_image == UPLOAD
    assert request.texture.maps == ["normal", "height", "roughness"]
    assert request.texture.source == "marigold" and request.tiling == "x"
    assert request.loras == [] and request.upscale is None
    with pytest.raises(ValueError, match="texture maps come from one of auto, marigold, image"):
        JobSettings(texture_source="photo")
    with pytest.raises(ValueError, match="texture maps are some of"):
        JobSettings(texture_maps=("gloss",))
    with pytest.raises(ValueError, match="an upscale factor is 1 to 16"):
        JobSettings(upscale_factor=32.0)


def test_upscale_and_texture_set_are_modes_of_the_drop_down():
    assert job_mode(Workflow.UPSCALE, True) is Mode.UPSCALE
    assert job_mode(Workflow.TEXTURE, False) is Mode.TEXTURE
    assert workflow_of(Mode.UPSCALE) is Workflow.UPSCALE
    assert workflow_of(Mode.TEXTURE) is Workflow.TEXTURE
    assert action_label(Workflow.UPSCALE, False) == "Upscale"
    assert action_label(Workflow.UPSCALE, True) == "Upscale selection"
    assert action_label(Workflow.TEXTURE, False) == "Make texture set"
    assert shown_fields(Workflow.UPSCALE, False) == {"upscale"}
    assert shown_fields(Workflow.TEXTURE, False) == {"texture"}


def test_upscaler_choices_and_result_names():
    models = [ModelInfo(name="tiny", source="tiny", family="sd15"),
              ModelInfo(name="4x-tiny", source="single_file", family="unknown", kind="upscaler")]
    assert upscaler_choices(models) == [(LANCZOS, None), ("4x-tiny", "4x-tiny")]
    assert upscaler_choices(models, "gone")[-1] == ("gone (not listed by the daemon)", "gone")
    assert upscale_layer_name(Extent(4096, 2048), None, 0.0) == "[Upscaled 4096x2048] Lanczos"
    assert upscale_layer_name(Extent(64, 64), "4x-tiny", 0.25) == \
        "[Upscaled 64x64] 4x-tiny, refined 25%"
    assert texture_group_name("  mossy   stone ", "doc") == "[Texture set] mossy stone"
    assert texture_group_name("", "wall.kra") == "[Texture set] wall.kra"
    assert map_layer_names(["normal", None]) == ["normal", "map 2"]



def test_live_polls_read_the_active_layer_and_sweep_every_layer_now_and_then():
    from atelier_krita.live import SWEEP_MIN_S, PixelWatch
    watch = PixelWatch()
    layers = ["a", "b", "c"]
    assert watch.plan(0.0, "b", layers) == (layers, True)        # the first poll reads all
    for layer in layers:
        watch.read(layer, 1)
    watch.swept(0.0, 0.05)
    assert watch.plan(0.1, "b", layers) == (["b"], False)        # then the active layer only
    assert watch.plan(0.2, "c", layers) == (["b", "c"], False)   # a switch reads both once
    assert watch.plan(0.3, "c", layers) == (["c"], False)
    assert watch.plan(SWEEP_MIN_S, "c", layers) == (layers, True)  # a sweep is due
    watch.swept(SWEEP_MIN_S, 0.4)                                 # slow sweeps come less often
    assert watch.plan(SWEEP_MIN_S + 3.9, "c", layers) == (["c"], False)
    assert watch.plan(SWEEP_MIN_S + 4.0, "c", layers)[1]
    watch.swept(10.0, 0.01)
    assert watch.plan(10.1, "c", layers + ["d"]) == (layers + ["d"], True)   # a new layer
    watch.read("d", 1)
    watch.swept(10.1, 0.01)
    assert watch.plan(10.2, None, layers + ["d"])[1]              # no active layer: all
    watch.swept(10.2, 0.01)
    assert watch.plan(10.3, "a", ["a"]) == (["a"], False) and set(watch.sums) == {"a"}


# ------------------------------------------------------------------ controls, references, regions
from atelier_krita.guides import (ANNOTATION_VERSION, SELECTION, SELECTION_LABEL,  # noqa: E402
                                  ControlRow, Guides, ReferenceRow, RegionRow, check_guides,
                                  control_layer_name, from_annotation, kind_choices,
                                  layer_choices, offered_kinds, to_annotation)
from atelier_krita.jobs import upload_ids  # noqa: E402

LINES = "{00000000-0000-0000-0000-000000000001}"
SQUARE = "{00000000-0000-0000-0000-000000000002}"
GUIDES = Guides(
    controls=(ControlRow(LINES, "lines", "lineart", 0.8, 0.1, 0.9, invert=True),
              ControlRow(SELECTION, SELECTION_LABEL, "canny", preprocess=True)),
    references=(ReferenceRow(layer=SQUARE, name="square", weight=1.5, flavour="style"),
                ReferenceRow(path="/tmp/ref.png", name="ref.png")),
    regions=(RegionRow(SQUARE, "square", "a red door", "blurry"), RegionRow(LINES, "lines")))


def _counter():
    numbers = iter(range(1, 1000))
    return lambda: f"{next(numbers):032x}"


def test_control_kinds_offered_are_those_the_daemon_announces():
    caps = ["txt2img", "control:lineart", "control:depth", "control:canny", "multi_control"]
    assert offered_kinds(caps) == ["depth", "lineart", "canny"]        # the protocol's order
    assert kind_choices(["depth", "lineart"], "lineart", True) == [("depth", "depth"),
                                                                   ("lineart", "lineart")]
    # a kind the daemon does not run stays chosen, marked, once the daemon has said
    assert kind_choices(["depth"], "pose", True)[-1] == ("pose (not run by this daemon)", "pose")
    # before a welcome every kind is offered
    assert [k for _, k in kind_choices([], None, False)] == list(offered_kinds(
        [f"control:{k}" for k in ("depth", "normal", "lineart", "scribble", "softedge",
                                  "canny", "pose")]))


def test_a_rows_layer_stays_chosen_and_marked_when_it_is_gone():
    layers = [("lines", LINES)]
    assert layer_choices(layers, LINES, "lines", selection=True) == [
        (SELECTION_LABEL, SELECTION), ("lines", LINES)]
    assert layer_choices(layers, SQUARE, "square")[-1] == ("square (missing)", SQUARE)


def test_guided_jobs_send_every_row_with_its_upload_in_order():
    settings = JobSettings(prompt="a house", seed=3, guides=GUIDES)
    for mode in (Mode.GENERATE, Mode.FILL, Mode.REFINE, Mode.SEAMLESS):
        plan = plan_job(mode, settings, CANVAS, Bounds(40, 40, 50, 40), SMALL)
        ids = upload_ids(plan, settings, _counter())
        assert len(set(ids.controls + ids.references + ids.regions)) == 6
        request = build_request(plan, settings, ids)
        validate(request, "job")
        lines, selection = request.controls
        assert (lines.kind, lines.image, lines.scale, lines.start, lines.end, lines.invert,
                lines.preprocess) == ("lineart", ids.controls[0], 0.8, 0.1, 0.9, True, False)
        assert (selection.kind, selection.image, selection.preprocess) == \
            ("canny", ids.controls[1], True)
        assert [(r.image, r.weight, r.flavour) for r in request.references] == \
            [(ids.references[0], 1.5, "style"), (ids.references[1], 0.6, "content")]
        assert [(r.mask, r.prompt, r.negative_prompt) for r in request.regions] == \
            [(ids.regions[0], "a red door", "blurry"), (ids.regions[1], "", None)]


def test_upscale_and_texture_jobs_send_no_guides():
    settings = JobSettings(guides=GUIDES)
    for mode in (Mode.UPSCALE, Mode.TEXTURE):
        plan = plan_job(mode, settings, CANVAS, None, SMALL)
        ids = upload_ids(plan, settings, _counter())
        assert ids.controls == ids.references == ids.regions == ()
        request = build_request(plan, settings, ids)
        assert request.controls == request.references == request.regions == []


def test_generate_from_image_is_a_preprocess_job_of_the_rows_kind():
    row = ControlRow(LINES, "lines", "softedge", scale=0.5)
    settings = JobSettings(guides=Guides(controls=(row,)), loras=(("style", 1.0),))
    plan = plan_job(Mode.CONTROL_IMAGE, settings, CANVAS, None, SMALL)
    assert plan.kind == "preprocess" and plan.send_image and plan.region == Bounds.of(CANVAS)
    ids = upload_ids(plan, settings, _counter())
    assert ids.controls == ()          # the canvas is the picture: nothing else goes up
    request = build_request(plan, settings, ids)
    validate(request, "job")
    assert request.kind == "preprocess" and request.init_image == ids.image
    assert [(c.kind, c.image, c.preprocess) for c in request.controls] == \
        [("softedge", None, True)]
    assert request.loras == [] and request.mask is None and request.depth is None
    with pytest.raises(JobRefused, match="one control layer"):
        plan_job(Mode.CONTROL_IMAGE, JobSettings(guides=GUIDES), CANVAS, None, SMALL)
    assert control_layer_name("softedge") == "softedge control (from image)"


def test_rows_a_job_cannot_take_are_refused_naming_the_row_and_the_limit():
    row = ControlRow(LINES, "lines")
    for guides, words in (
            (Guides(controls=(row,) * 5), "at most 4 control layers"),
            (Guides(controls=(ControlRow(LINES, "lines", start=0.6, end=0.4),)),
             "control layer 1 ('lines') steers from 0.6 to 0.4"),
            (Guides(controls=(ControlRow(LINES, "lines", scale=2.5),)), "strength 2.5"),
            (Guides(controls=(ControlRow("", ""),)), "control layer 1 ('') has no layer"),
            (Guides(references=(ReferenceRow(layer=SQUARE, name="sq", weight=3.0),)),
             "reference 1 ('sq') has weight 3"),
            (Guides(references=(ReferenceRow(),)), "a layer or an image file"),
            (Guides(regions=(RegionRow(SQUARE),) * 9), "at most 8 regions")):
        with pytest.raises(JobRefused, match=re.escape(words)):
            plan_job(Mode.GENERATE, JobSettings(guides=guides), CANVAS, None, SMALL)
    # a depth map counts as a control: a Depth job takes three more
    with pytest.raises(JobRefused, match="at most 3 control layers beside the depth map"):
        plan_job(Mode.DEPTH, JobSettings(depth_layer="depth", guides=Guides(controls=(row,) * 4)),
                 CANVAS, None, SMALL)
    check_guides(Guides(controls=(row,) * 3), depth=True)


def test_rows_saved_with_the_document_come_back_the_same():
    data = to_annotation(GUIDES)
    assert json.loads(data)["version"] == ANNOTATION_VERSION
    assert from_annotation(data) == GUIDES
    assert from_annotation(b"") == Guides()
    # a newer plugin's extra keys are ignored; whole numbers are read as strengths
    newer = json.loads(data)
    newer["controls"][0].update(scale=1, future="x")
    newer["colours"] = []
    assert from_annotation(json.dumps(newer).encode()).controls[0].scale == 1.0
    for bad, words in ((b"\xff", "not JSON"), (b"[]", "not a JSON object"),
                       (b'{"version": 99}', "version 99"),
                       (b'{"version": 1, "controls": [{"layer": 5}]}',
                        "ControlRow.layer is int"),
                       (b'{"version": 1, "regions": ["x"]}', "a RegionRow is a JSON object")):
        with pytest.raises(ValueError, match=re.escape(words)):
            from_annotation(bad)


def test_references_go_up_at_most_512_a_side_and_never_grow():
    from atelier_krita.geometry import fit_within
    assert fit_within(Extent(2048, 1024), 512) == Extent(512, 256)
    assert fit_within(Extent(40, 30), 512) == Extent(40, 30)
    assert fit_within(Extent(300, 900), 512) == Extent(171, 512)


def test_history_says_which_guides_a_job_used():
    entry = HistoryEntry(Mode.GENERATE, JobSettings(prompt="p", guides=GUIDES),
                         Bounds(0, 0, 8, 8), "done", (1,))
    assert "controls lineart 0.8, canny 1 | 2 references | 2 regions" in entry.summary()
