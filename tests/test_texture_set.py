"""PBR maps of a colour texture (issue 16): height-to-normal geometry, seamless maps, and
Marigold's absence reported with the pull command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.models.store import ModelStore
from backend.pipelines.asset_plan import plan_texture_set
from backend.pipelines.assets import AssetGenerator
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.pbr import MARIGOLD_NORMALS, maps_from_colour, normal_map
from backend.pipelines.tiling import TileAxes
from protocol.client import make_upload
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import PixelFormat
from protocol.messages import GenerateRequest, TextureSettings

NONE, BOTH = TileAxes(False, False), TileAxes(True, True)


def _normals(height: np.ndarray, strength: float, axes: TileAxes) -> np.ndarray:
    """The normal map as unit vectors again (decoded from (n + 1) / 2 in 8 bits)."""
    return normal_map(height, strength, axes).astype(np.float32) / 127.5 - 1.0


def test_a_flat_height_map_gives_normals_straight_up():
    encoded = normal_map(np.full((32, 48), 0.3, np.float32), 8.0, NONE)
    assert (encoded == [128, 128, 255]).all()


@pytest.mark.parametrize("axes", [NONE, BOTH])
def test_a_known_slope_gives_the_known_normal(axes):
    """z = strength * height; a height rising 0.01 a pixel to the right at strength 10 is a
    slope of 0.1: the normal leans left, (-0.1, 0, 1) normalised. Rising down the image
    (towards -Y in OpenGL's +Y-up convention) it leans up: (0, +0.1, 1)."""
    x = np.arange(64, dtype=np.float32)
    ramp_x = np.tile(0.01 * x, (40, 1))
    expected = np.array([-0.1, 0.0, 1.0]) / np.linalg.norm([-0.1, 0.0, 1.0])
    normal = _normals(ramp_x, 10.0, axes)
    inside = (slice(4, -4), slice(4, -4))     # away from the ramp's own ends
    assert np.abs(normal[inside] - expected).max() <= 1 / 127.5
    ramp_y = np.tile(0.01 * np.arange(40, dtype=np.float32)[:, None], (1, 64))
    normal_y = _normals(ramp_y, 10.0, axes)
    assert np.abs(normal_y[inside] - [0.0, -expected[0], expected[2]]).max() <= 1 / 127.5


def _seamless_colour(height: int = 64, width: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 128 + 100 * np.sin(2 * np.pi * x / width) * np.sin(4 * np.pi * y / height)
    return np.clip(np.stack([base, base * 0.8, 255 - base], axis=2), 0, 255).astype(np.uint8)


def test_a_seamless_colour_texture_gives_seamless_maps():
    """Wrapped: the maps of the texture rolled by any amount are its maps rolled, so the
    wrap edge is like any other pixel pair. Not wrapped, the border is treated as an edge."""
    rgb = _seamless_colour()
    names = ["normal", "height", "roughness", "albedo"]
    maps = maps_from_colour(rgb, names, 8.0, BOTH)
    for dx, dy in ((7, 0), (0, 5), (31, 13)):
        rolled = maps_from_colour(np.roll(rgb, (dy, dx), axis=(0, 1)), names, 8.0, BOTH)
        for name in names:
            assert np.array_equal(np.roll(maps[name], (dy, dx), axis=(0, 1)), rolled[name]), name
    plain = maps_from_colour(rgb, ["normal"], 8.0, NONE)["normal"]
    assert not np.array_equal(np.roll(plain, 7, axis=1),
                              maps_from_colour(np.roll(rgb, 7, axis=1), ["normal"], 8.0,
                                               NONE)["normal"])
    assert maps["height"].shape == (64, 96, 3) and maps["normal"].dtype == np.uint8


def test_metallic_from_the_colour_alone_is_refused_naming_marigold():
    with pytest.raises(ProtocolError) as err:
        maps_from_colour(_seamless_colour(), ["metallic"], 1.0, NONE)
    assert err.value.field == "job.texture.maps" and "marigold" in err.value.message.lower()


def _upload(rgb: np.ndarray):
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return make_upload(PixelFormat.RGBA8, rgb.shape[1], rgb.shape[0], rgba.tobytes())


def test_plan_checks_the_maps():
    up = _upload(_seamless_colour())
    for maps in ([], ["normal", "normal"]):
        job = GenerateRequest(kind="texture_set", init_image=up.id,
                              texture=TextureSettings(maps=maps))
        with pytest.raises(ProtocolError) as err:
            plan_texture_set(job, {up.id: up}, 0)
        assert err.value.field == "job.texture.maps"
    plan = plan_texture_set(GenerateRequest(kind="texture_set", init_image=up.id), {up.id: up}, 3)
    assert plan.maps == ("normal", "height", "roughness")
    assert (plan.request.width, plan.request.height, plan.request.seed) == (96, 64, 3)


@pytest.fixture(scope="module")
def generator(atelier_home: Path) -> AssetGenerator:
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny")
    return AssetGenerator(DiffusionGenerator(store), store)


def test_marigold_without_its_weights_is_model_not_found_with_the_pull_command(generator):
    up = _upload(_seamless_colour())
    job = GenerateRequest(kind="texture_set", init_image=up.id,
                          texture=TextureSettings(source="marigold", maps=["normal"]))
    for attempt in (generator.check, lambda j, u: generator.generate(j, u, lambda *_: None,
                                                                      lambda: False)):
        with pytest.raises(ProtocolError) as err:
            attempt(job, {up.id: up})
        assert err.value.code == ErrorCode.MODEL_NOT_FOUND
        assert f"atelier models pull {MARIGOLD_NORMALS}" in err.value.message
        assert err.value.field == "job.texture.source"


def test_auto_source_without_marigold_derives_the_maps_from_the_colour(generator):
    rgb = _seamless_colour()
    up = _upload(rgb)
    job = GenerateRequest(kind="texture_set", init_image=up.id, tiling="both", seed=1,
                          texture=TextureSettings(maps=["albedo", "normal"]))
    steps = []
    out = generator.generate(job, {up.id: up}, lambda *a: steps.append(a[:2]), lambda: False)
    assert [i.label for i in out.images] == ["albedo", "normal"]
    assert out.model == "image" and out.tiling == "both" and steps[-1] == (2, 2)
    albedo = np.frombuffer(out.images[0].pixels.rgba, np.uint8).reshape(64, 96, 4)
    assert np.array_equal(albedo[..., :3], rgb)


@pytest.fixture(scope="module")
def marigold_generator(atelier_home: Path, tmp_path_factory) -> AssetGenerator:
    """A generator whose Hugging Face cache holds tiny Marigold normals, depth and
    appearance pipelines, found the way pulled ones are."""
    from backend.models.tiny_marigold import build_tiny_marigold
    from backend.pipelines.pbr import MARIGOLD_APPEARANCE, MARIGOLD_DEPTH

    hf_cache = tmp_path_factory.mktemp("hf-cache")
    for repo_id in (MARIGOLD_NORMALS, MARIGOLD_DEPTH, MARIGOLD_APPEARANCE):
        build_tiny_marigold(repo_id, hf_cache)
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[], hf_cache=hf_cache)
    store.load("tiny")
    return AssetGenerator(DiffusionGenerator(store), store)


def test_marigold_pipelines_give_every_map_labelled_at_the_texture_size(marigold_generator):
    rgb = _seamless_colour()
    up = _upload(rgb)
    maps = ["albedo", "normal", "height", "roughness", "metallic"]
    job = GenerateRequest(kind="texture_set", init_image=up.id, seed=2,
                          texture=TextureSettings(source="marigold", maps=maps))
    out = marigold_generator.generate(job, {up.id: up}, lambda *_: None, lambda: False)
    assert [i.label for i in out.images] == maps
    assert all((i.pixels.width, i.pixels.height) == (96, 64) for i in out.images)
    assert "prs-eth/marigold-normals-v1-1" in out.model and "image" not in out.model
    arrays = {i.label: np.frombuffer(i.pixels.rgba, np.uint8).reshape(64, 96, 4)[..., :3]
              for i in out.images}
    normals = arrays["normal"].astype(np.float32) / 127.5 - 1.0
    assert np.allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=0.03)   # unit vectors
    for grey in ("height", "roughness", "metallic"):
        assert (arrays[grey][..., 0] == arrays[grey][..., 2]).all()
    # The same seed gives the same maps.
    again = marigold_generator.generate(job, {up.id: up}, lambda *_: None, lambda: False)
    assert [i.pixels.rgba for i in again.images] == [i.pixels.rgba for i in out.images]


def test_auto_source_takes_marigold_where_cached_and_wraps_on_tiled_axes(marigold_generator):
    """A texture larger than the model's processing size (64 for the tiny ones) on tiled
    axes: resized around the wrap, down for the pipeline and back up to its own size."""
    up = _upload(_seamless_colour(128, 192))
    job = GenerateRequest(kind="texture_set", init_image=up.id, tiling="both",
                          texture=TextureSettings(maps=["normal", "roughness"]))
    out = marigold_generator.generate(job, {up.id: up}, lambda *_: None, lambda: False)
    assert out.model == "prs-eth/marigold-iid-appearance-v1-1, prs-eth/marigold-normals-v1-1"
    assert out.tiling == "both"
    assert all((i.pixels.width, i.pixels.height) == (192, 128) for i in out.images)
    normal = np.frombuffer(out.images[0].pixels.rgba, np.uint8).reshape(128, 192, 4)[..., :3]
    assert np.allclose(np.linalg.norm(normal / 127.5 - 1.0, axis=-1), 1.0, atol=0.03)
