"""The Blender game-asset kit's plain logic (blender_addon/assets.py): Upscale and Make
Material requests, the sizes and limits checked before sending, the names of what they
make, and the Upscaler menu. The same code runs inside Blender in the host scenarios
(tests/host/blender/scenarios.py: upscale, material, asset_cancel)."""

from __future__ import annotations

import pytest

from backend.pipelines.asset_plan import _scaled
from blender_addon import assets, settings
from blender_addon.protocol import ErrorCode, ProtocolError, validate
from blender_addon.protocol.messages import Limits, ModelInfo

PANEL = settings.PanelSettings(prompt="mossy stone", model="tiny", steps=20, seed=7,
                               random_seed=False, batch_size=4, preview_every=2,
                               loras=(("detail", 0.5),), tiling="none")
LIMITS = Limits(max_message_bytes=1 << 28, max_pixels=2048 * 2048, max_side=2048,
                max_batch=8, max_steps=150, max_queue=32, max_uploads=16,
                max_upscale_side=8192, max_upscale_pixels=8192 * 8192)


def test_scaled_sizes_round_as_the_daemon_rounds_them():
    for side in (8, 13, 40, 63, 100, 511, 1000, 1024):
        for factor in assets.UPSCALE_FACTORS:
            assert assets.scaled_side(side, factor) == _scaled(side, float(factor)), side
    assert assets.upscaled_size(1000, 600, assets.UpscaleChoice(factor=4)) == (4000, 2400)
    target = assets.UpscaleChoice(factor=None, width=4096, height=2048)
    assert assets.upscaled_size(1000, 600, target) == (4096, 2048)


def test_plain_upscale_request_sends_no_diffusion_settings():
    choice = assets.UpscaleChoice(factor=4, upscaler=None, refine_strength=0.0)
    request = assets.upscale_request(PANEL, choice, "u1", (256, 128), "both")
    assert request.kind == "upscale" and request.init_image == "u1"
    assert (request.width, request.height) == (1024, 512)   # what the daemon makes
    assert request.upscale.scale == 4.0 and request.upscale.upscaler is None
    assert request.upscale.refine_strength == 0.0
    assert request.tiling == "both"            # the source's axes, not the panel's "none"
    assert request.batch_size == 1 and request.preview_every == 0
    assert request.model is None and request.loras == []   # no diffusion model runs
    validate(request, "job")


def test_refine_upscale_request_takes_the_panels_prompt_seed_and_loras():
    choice = assets.UpscaleChoice(factor=None, width=2048, height=1024,
                                  upscaler="4x-UltraSharp", refine_strength=0.3)
    request = assets.upscale_request(PANEL, choice, "u2", (512, 256), "x")
    assert request.upscale.scale is None and (request.width, request.height) == (2048, 1024)
    assert request.upscale.upscaler == "4x-UltraSharp"
    assert request.upscale.refine_strength == 0.3
    assert (request.prompt, request.model, request.seed, request.steps) == (
        "mossy stone", "tiny", 7, 20)
    assert [(l.name, l.weight) for l in request.loras] == [("detail", 0.5)]
    assert request.preview_every == 2 and request.tiling == "x" and request.batch_size == 1


def test_a_random_seed_is_drawn_to_fit_blender():
    panel = settings.PanelSettings(random_seed=True)
    choice = assets.UpscaleChoice(factor=2, refine_strength=0.5)
    request = assets.upscale_request(panel, choice, "u", (64, 64), "none",
                                     pick_seed=lambda n: n - 1)
    assert request.seed == settings.SEED_MAX


def test_upscale_problems_name_the_limit_before_anything_is_sent():
    four = assets.UpscaleChoice(factor=4)
    assert assets.upscale_problem((1024, 1024), four, LIMITS) is None
    assert assets.upscale_problem((1024, 1024), four, None) is None
    problem = assets.upscale_problem((4096, 1024), four, LIMITS)
    assert "max_upscale_side 8192" in problem and "16384 x 4096" in problem
    tight = Limits(**{**LIMITS.__dict__, "max_upscale_pixels": 4096 * 4096})
    assert "max_upscale_pixels" in assets.upscale_problem((2048, 1536), four, tight)
    smaller = assets.UpscaleChoice(factor=None, width=512, height=2048)
    assert "smaller than the image" in assets.upscale_problem((1024, 1024), smaller, LIMITS)
    odd = assets.UpscaleChoice(factor=None, width=2050, height=2048)
    assert "multiple of 8" in assets.upscale_problem((1024, 1024), odd, None)


def test_texture_request_asks_for_the_materials_maps_at_the_textures_size():
    request = assets.texture_request("t1", "both", 12.0)
    assert request.kind == "texture_set" and request.init_image == "t1"
    assert request.texture.maps == ["normal", "roughness", "height"]
    assert request.texture.normal_strength == 12.0 and request.tiling == "both"
    assert request.seed == 0 and request.loras == []    # the daemon refuses LoRAs here
    with pytest.raises(ProtocolError) as err:
        assets.texture_request("t1", "both", 120.0)
    assert err.value.field == "job.texture.normal_strength"


def test_seamless_axes_come_from_the_images_record_else_the_panel():
    assert assets.source_tiling({"tiling": "y"}, "none") == "y"
    assert assets.source_tiling({"prompt": "x"}, "both") == "both"
    assert assets.source_tiling(None, "x") == "x"
    assert assets.source_tiling({"tiling": "sideways"}, "none") == "none"


def test_names_say_what_made_them_and_fit_blender():
    assert assets.upscaled_name("stone 5", assets.UpscaleChoice(factor=4), (256, 256)) == \
        "stone 5 x4"
    target = assets.UpscaleChoice(factor=None)
    assert assets.upscaled_name("stone 5", target, (4096, 2048)) == "stone 5 4096x2048"
    assert assets.map_name("Bricks", "normal") == "Bricks normal"
    assert assets.material_name("Bricks") == "Bricks PBR"
    long = "é" * 40   # 80 bytes
    for name in (assets.map_name(long, "roughness"), assets.material_name(long),
                 assets.upscaled_name(long, target, (8192, 8192))):
        assert len(name.encode("utf-8")) <= settings.NAME_LIMIT, name
    assert assets.map_name(long, "roughness").endswith(" roughness")


def test_maps_by_label_finds_each_map_or_says_which_is_missing():
    found = assets.maps_by_label(["normal", "roughness", "height"], ["a", "b", "c"])
    assert found == {"normal": "a", "roughness": "b", "height": "c"}
    with pytest.raises(ProtocolError) as err:
        assets.maps_by_label(["normal", None, "height"], ["a", "b", "c"])
    assert err.value.code == ErrorCode.INTERNAL and "roughness" in err.value.message


def test_material_maps_are_the_ticked_ones_in_order_and_none_is_refused():
    assert assets.chosen_maps({"height", "normal"}) == ("normal", "height")
    assert assets.chosen_maps(["roughness"]) == ("roughness",)
    with pytest.raises(ValueError, match="Maps: tick at least one"):
        assets.chosen_maps(set())
    request = assets.texture_request("t1", "none", 8.0, ("normal",))
    assert request.texture.maps == ["normal"]
    assert assets.maps_by_label(["normal"], ["a"], ("normal",)) == {"normal": "a"}
    with pytest.raises(ProtocolError):
        assets.maps_by_label(["normal"], ["a"], ("normal", "height"))


def test_data_maps_are_not_colour_managed():
    assert assets.MAP_COLORSPACE["albedo"] == "sRGB"
    for label in ("normal", "height", "roughness", "metallic"):
        assert assets.MAP_COLORSPACE[label] == "Non-Color"
    assert set(assets.MATERIAL_MAPS) <= set(assets.MAP_COLORSPACE)


def test_storage_note_says_saved_or_packed():
    assert "beside the .blend" in assets.storage_note(True)
    assert "packed" in assets.storage_note(False)


def test_upscaler_menu_lanczos_first_then_the_daemons_upscalers():
    models = [ModelInfo(name="tiny", source="folder", family="sd15", path="", kind="checkpoint"),
              ModelInfo(name="4x-Sharp", source="single_file", family="unknown", path="",
                        kind="upscaler"),
              ModelInfo(name="2x-Home", source="single_file", family="unknown", path="",
                        kind="upscaler")]
    upscalers = assets.daemon_upscalers(models)
    assert upscalers == ["4x-Sharp", "2x-Home"]
    menu = assets.UpscalerMenu()
    items = menu.build(upscalers, "")
    assert [i[0] for i in items] == [assets.UPSCALER_LANCZOS, "4x-Sharp", "2x-Home"]
    assert items[0][3] == 0 and menu.name(0) == ""   # Lanczos = no upscaler
    sharp = items[1][3]
    # A name chosen before that the daemon no longer lists stays, and keeps numbers stable.
    items = menu.build(["2x-Home"], "4x-Sharp")
    assert items[-1][0] == "4x-Sharp" and "not listed" in items[-1][1]
    assert items[-1][3] == sharp and menu.name(sharp) == "4x-Sharp"
    assert "not checked yet" in menu.build([], "4x-Sharp", listed_now=False)[-1][1]


def test_a_daemon_without_the_kit_is_named_before_sending():
    assert assets.capability_problem("texture_set", ["txt2img", "texture_set"], True) is None
    assert assets.capability_problem("refine", [], False) is None   # not connected: ask it
    problem = assets.capability_problem("refine", ["txt2img", "upscale"], True)
    assert "'refine'" in problem and "update" in problem


def test_a_job_made_before_connecting_is_checked_against_its_kinds_limits():
    """A 1k -> 4k upscale is past max_side (2048) but within the upscale limits: it goes."""
    upscale = assets.upscale_request(PANEL, assets.UpscaleChoice(factor=4), "u", (1024, 1024),
                                     "none")
    assert assets.request_size_problem(upscale, LIMITS) is None
    huge = assets.upscale_request(PANEL, assets.UpscaleChoice(factor=4), "u", (4096, 1024),
                                  "none")
    assert "max_upscale_side" in assets.request_size_problem(huge, LIMITS)
    texture = assets.texture_request("t", "none", 8.0)
    assert assets.request_size_problem(texture, LIMITS) is None
    big = settings.build_request(settings.PanelSettings(width=4096, height=512))
    assert "max_side 2048" in assets.request_size_problem(big, LIMITS)
