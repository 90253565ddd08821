"""Upscaling (issue 16): tiles and their blend weights, Lanczos and model upscaling (also
seamless), upscaler files (safetensors only, .pth refused), the tiled refine on the tiny
model (no visible tile seams, wrap-equivariant), and the plan's checks."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from backend.limits import ServerLimits
from backend.models.catalog import list_models
from backend.models.sources import ModelRoots
from backend.models.store import ModelStore
from backend.models.upscalers import load_upscaler, resolve_upscaler
from backend.pipelines.asset_plan import plan_upscale
from backend.pipelines.plan import ModelTraits
from backend.pipelines.refine import RefineSettings, refine_grid, tiled_refine
from backend.pipelines.seamless import seam_score as _seam_score
from backend.pipelines.tiles import TileGrid, axis_tiles, blend_tiles
from backend.pipelines.tiling import TileAxes
from backend.pipelines.upscale import lanczos, model_upscale
from protocol.client import make_upload
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import PixelFormat
from protocol.messages import GenerateRequest, UpscaleSettings

NONE, BOTH = TileAxes(False, False), TileAxes(True, True)


def seam_score(rgb: np.ndarray, axis: str) -> float:
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return _seam_score(rgba.tobytes(), rgb.shape[1], rgb.shape[0], axis)


def _noise_image(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def _smooth_periodic(height: int, width: int) -> np.ndarray:
    """A smooth texture that tiles on both axes (sines of whole periods)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 90 * np.sin(2 * np.pi * x / width) * np.cos(4 * np.pi * y / height)
    g = 128 + 90 * np.cos(2 * np.pi * (x / width + 2 * y / height))
    b = 128 + 60 * np.sin(6 * np.pi * x / width)
    return np.clip(np.stack([r, g, b], axis=2), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ tiles
@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("size,tile,overlap", [(1000, 256, 64), (512, 128, 32), (96, 128, 32),
                                               (2048, 512, 128)])
def test_blend_weights_sum_to_one_everywhere_and_every_pixel_is_covered(size, tile, overlap, wrap):
    axis = axis_tiles(size, tile, overlap, wrap)
    total = np.zeros(size)
    for index, weights in enumerate(axis.weights()):
        np.add.at(total, axis.indices(index), weights)
    assert np.allclose(total, 1.0, atol=1e-5)
    grid = TileGrid(axis, axis_tiles(size // 2 // 8 * 8, tile, overlap, not wrap))
    total2d = np.zeros((grid.y.size, grid.x.size, 1))
    for t in grid.tiles():
        t.add_to(total2d, np.ones(t.weight.shape + (1,)))
    assert np.allclose(total2d, 1.0, atol=1e-5)


@pytest.mark.parametrize("width,height,tile,overlap,wrap_x,wrap_y", [
    (1000, 700, 256, 64, False, False), (1024, 768, 256, 64, True, True),
    (96, 80, 128, 32, True, True), (520, 520, 512, 128, False, True)])
def test_band_by_band_blending_equals_summing_the_whole_image(width, height, tile, overlap,
                                                            wrap_x, wrap_y):
    """blend_tiles holds float sums for one band of tiles only; the image is the same as
    that of one float buffer for the whole image."""
    grid = TileGrid.over(width, height, tile, overlap, wrap_x, wrap_y)
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    offsets = rng.uniform(-5, 5, len(grid))
    whole = np.zeros_like(image)
    for k, t in enumerate(grid.tiles()):
        t.add_to(whole, t.take(image) + offsets[k])
    banded = blend_tiles(grid, 3, lambda k, t: t.take(image) + offsets[k])
    assert np.array_equal(banded, np.clip(np.rint(whole), 0, 255).astype(np.uint8))


def test_tiles_overlap_at_least_as_asked_and_sit_on_multiples_of_8():
    axis = axis_tiles(1000, 256, 64, wrap=False)
    ends = [s + 256 for s in axis.starts]
    assert axis.starts[0] == 0 and ends[-1] == 1000
    assert all(ends[i] - axis.starts[i + 1] >= 64 for i in range(len(ends) - 1))
    assert all(s % 8 == 0 for s in axis.starts)
    wrapped = axis_tiles(1024, 256, 64, wrap=True)
    assert wrapped.starts[-1] + 256 > 1024   # the last tile crosses the border


def _blend_constant_tiles(grid: TileGrid) -> np.ndarray:
    """Blend tiles that disagree as much as tiles can: each one flat, of its own value."""
    values = np.random.default_rng(4).uniform(0, 255, len(grid))
    out = np.zeros((grid.y.size, grid.x.size, 1))
    for value, t in zip(values, grid.tiles()):
        t.add_to(out, np.full(t.weight.shape + (1,), value))
    return out[..., 0]


def test_blended_tiles_that_disagree_show_no_step_at_tile_borders():
    """Where a tile ends, the blend changes no faster than it does inside the overlaps;
    a hard cut (each pixel from the tile that holds it last) jumps there."""
    grid = TileGrid.over(1024, 512, 256, 64, wrap_x=False, wrap_y=False)
    blended = _blend_constant_tiles(grid)
    steps = np.abs(np.diff(blended, axis=1)).max(axis=0)
    borders = [s + 256 - 1 for s in grid.x.starts[:-1]] + list(grid.x.starts[1:])
    at_borders = max(steps[b - 1] for b in borders)
    inside = np.delete(steps, [b - 1 for b in borders])
    assert at_borders <= inside.max() + 1e-9
    assert steps.max() < 0.1 * np.ptp(blended)     # the blend is smooth: no visible step
    hard = np.zeros_like(blended)
    for value, t in zip(np.random.default_rng(4).uniform(0, 255, len(grid)), grid.tiles()):
        hard[np.ix_(t.rows, t.cols)] = value
    assert np.abs(np.diff(hard, axis=1)).max() > 10 * steps.max()


def test_blend_weights_are_smooth_and_near_zero_at_a_tile_border():
    axis = axis_tiles(1024, 256, 64, wrap=False)
    weights = axis.weights()
    # Inside the image a tile's weight falls to ~0 at its own edge, and no step between
    # neighbouring pixels is larger than a smooth ramp over the overlap allows.
    assert weights[1][0] < 0.01 and weights[1][-1] < 0.01
    assert np.abs(np.diff(weights, axis=1)).max() < 3 * np.pi / (2 * 64)


# ------------------------------------------------------------------ Lanczos and models
def test_lanczos_gives_the_exact_size_and_wraps_exactly_on_tiled_axes():
    image = _noise_image(40, 48)
    out = lanczos(image, 96, 80, BOTH)
    assert out.shape == (80, 96, 3)
    rolled = lanczos(np.roll(image, 5, axis=1), 96, 80, BOTH)
    assert np.array_equal(np.roll(out, 10, axis=1), rolled)
    rolled_y = lanczos(np.roll(image, 3, axis=0), 96, 80, BOTH)
    assert np.array_equal(np.roll(out, 6, axis=0), rolled_y)
    odd = lanczos(image, 100, 70, NONE)     # any size, not only multiples
    assert odd.shape == (70, 100, 3)


class _PixelShuffleNet(nn.Module):
    """A small real super-resolution network (ESPCN-shaped): convs then pixel shuffle."""
    scale = 2

    def __init__(self, circular: bool = False):
        super().__init__()
        mode = "circular" if circular else "zeros"
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode=mode), nn.Tanh(),
                                  nn.Conv2d(8, 12, 3, padding=1, padding_mode=mode))
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.shuffle(self.body(x)) + 0.0 * x.mean())


@pytest.mark.parametrize("axes", [NONE, BOTH], ids=["plain", "wrapped"])
def test_model_upscale_in_tiles_equals_one_whole_pass(axes):
    """Tiles overlapping more than the network's reach, blended to 1, give the whole-image
    output; on wrapped axes, that of a network whose convolutions wrap."""
    image = _noise_image(100, 120, 3)
    net = _PixelShuffleNet(circular=axes.any)
    whole = net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    expected = (whole[0].permute(1, 2, 0) * 255).detach().numpy()
    done = []
    tiled = model_upscale(image, net, axes, lambda: False, tile=48, overlap=16,
                          on_tile=lambda d, t: done.append((d, t)))
    assert tiled.shape == (200, 240, 3)
    assert done[-1][0] == done[-1][1] > 4
    # Where a tile's own edge (zero-padded) affects it, its blend weight is ~0.
    assert np.abs(tiled.astype(np.float32) - expected).max() <= 1.5


def test_model_upscale_stops_between_tiles_when_cancelled():
    from backend.generation import JobCancelled

    calls = []
    with pytest.raises(JobCancelled):
        model_upscale(_noise_image(100, 100), _PixelShuffleNet(), NONE,
                      lambda: len(calls) >= 2, tile=48, overlap=16,
                      on_tile=lambda d, t: calls.append(d))
    assert len(calls) == 2


# ------------------------------------------------------------------ upscaler files
@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "upscale_models").mkdir()
    (tmp_path / "ESRGAN" / "4x-Old.pth").write_bytes(b"not read")
    return tmp_path


def _roots(model_dir: Path, home: Path) -> ModelRoots:
    return ModelRoots.of(home, [model_dir], home / "no-hf-cache")


def test_pth_upscaler_is_refused_saying_why(model_dir, tmp_path):
    with pytest.raises(ProtocolError) as err:
        resolve_upscaler("4x-Old.pth", _roots(model_dir, tmp_path / "home"))
    assert err.value.code == ErrorCode.MODEL_LOAD_FAILED
    assert "pickle" in err.value.message and "arbitrary code" in err.value.message
    assert ".safetensors" in err.value.message and err.value.field == "job.upscale.upscaler"


def test_unknown_upscaler_names_the_folders(model_dir, tmp_path):
    with pytest.raises(ProtocolError) as err:
        resolve_upscaler("4x-Old", _roots(model_dir, tmp_path / "home"))
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND
    assert "models/ESRGAN" in err.value.message and "upscale_models" in err.value.message


def _save_tiny_compact(path: Path) -> None:
    """A tiny Real-ESRGAN "compact" (SRVGGNetCompact) upscaler with random weights."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact   # spandrel's SRVGGNetCompact

    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def _spandrel_usable() -> bool:
    try:
        importlib.import_module("spandrel")
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _spandrel_usable(),
                    reason="spandrel cannot be imported here (its torchvision dependency has no "
                           "build for this CPU torch); upscaler models are refused with that reason")
def test_tiny_upscaler_loads_from_safetensors_and_is_listed(model_dir, tmp_path):
    path = model_dir / "upscale_models" / "2x-tiny.safetensors"
    _save_tiny_compact(path)
    home = tmp_path / "home"
    assert resolve_upscaler("2x-tiny", _roots(model_dir, home)) == path.resolve()
    model = load_upscaler(path, "cpu")
    assert model.scale == 2
    out = model_upscale(_noise_image(40, 40), model, NONE, lambda: False, tile=32, overlap=8)
    assert out.shape == (80, 80, 3)


@pytest.mark.skipif(not _spandrel_usable(), reason="spandrel cannot be imported here")
def test_a_daemon_job_upscales_with_a_users_model_and_a_seamless_texture_stays_seamless(
        start_daemon, tmp_path):
    """The whole path a user's upscaler takes: a ``.safetensors`` file in ComfyUI's
    folder, listed, named by a websocket job, run in tiles that wrap on tiled axes."""
    from protocol import JobDone
    from protocol.client import AtelierClient
    from protocol.messages import Models

    models = tmp_path / "user-models"
    (models / "upscale_models").mkdir(parents=True)
    _save_tiny_compact(models / "upscale_models" / "2x-tiny.safetensors")
    daemon = start_daemon("--models-dir", str(models))
    texture = _noise_image(96, 128, seed=4)
    rgba = np.concatenate([texture, np.full((96, 128, 1), 255, np.uint8)], axis=2)
    with AtelierClient(daemon.url, client_name="pytest-upscaler") as client:
        client.wait_connected()
        models_reply = client.call(Models, client.list_models)
        listed = {m.name: m.kind for m in models_reply.models}
        assert listed.get("2x-tiny") == "upscaler"
        outputs = {}
        for tiling, shift in (("none", 0), ("none", 1), ("both", 0), ("both", 1)):
            source = np.roll(rgba, (6 * shift, 10 * shift), axis=(0, 1))
            up = make_upload(PixelFormat.RGBA8, 128, 96, source.tobytes())
            job = GenerateRequest(kind="upscale", init_image=up.id, tiling=tiling,
                                  upscale=UpscaleSettings(scale=2.0, upscaler="2x-tiny"))
            done = client.run_job(job, [up], timeout=120)
            assert isinstance(done, JobDone), done
            assert done.result.model == "2x-tiny"
            [image] = done.images
            assert (image.width, image.height) == (256, 192)
            outputs[tiling, shift] = np.frombuffer(image.data, np.uint8).reshape(192, 256, 4)

    def equivariance_error(tiling: str) -> int:
        """How far upscaling a rolled texture is from rolling the upscaled one."""
        rolled_after = np.roll(outputs[tiling, 0], (12, 20), axis=(0, 1)).astype(int)
        return int(np.abs(rolled_after - outputs[tiling, 1]).max())

    # Wrapped, the border pixels see their neighbours across the edge, as inner ones do:
    # the upscale commutes with rolling (up to float rounding). Unwrapped, the rolled
    # texture's old border lands inside and shows.
    assert equivariance_error("both") <= 1
    assert equivariance_error("none") > 20


def test_without_spandrel_an_upscaler_job_says_what_is_missing(model_dir, tmp_path):
    if _spandrel_usable():
        pytest.skip("spandrel is importable here")
    path = model_dir / "ESRGAN" / "2x-tiny.safetensors"
    from safetensors.torch import save_file
    save_file({"body.0.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    with pytest.raises(ProtocolError) as err:
        load_upscaler(path, "cpu")
    assert err.value.code == ErrorCode.UNSUPPORTED and "spandrel" in err.value.message
    assert "Lanczos" in err.value.message


def test_upscalers_are_listed_with_kind_upscaler(model_dir, tmp_path):
    from safetensors.torch import save_file
    save_file({"body.0.weight": torch.zeros(8, 3, 3, 3)},
              str(model_dir / "upscale_models" / "4x-Sharp.safetensors"))
    home = tmp_path / "home"
    (home / "upscale_models").mkdir(parents=True)
    save_file({"conv_first.weight": torch.zeros(8, 3, 3, 3)},
              str(home / "upscale_models" / "2x-Home.safetensors"))
    catalog = list_models(home, [model_dir], tmp_path / "no-hf-cache")
    upscalers = {m.name: m for m in catalog.models if m.kind == "upscaler"}
    assert set(upscalers) == {"4x-Sharp", "2x-Home"}
    assert not any("4x-Sharp" in p.path for p in catalog.problems)


# ------------------------------------------------------------------ plan
def _upload(width: int, height: int):
    return make_upload(PixelFormat.RGBA8, width, height, bytes(width * height * 4))


def _plan(upload, limits=ServerLimits(), **fields):
    job = GenerateRequest(kind="upscale", init_image=upload.id, **fields)
    return plan_upscale(job, {upload.id: upload}, limits, ModelTraits(native_side=64), 5)


def test_plan_settles_size_from_scale_or_fields_and_checks_the_upscale_limits():
    up = _upload(1000, 750)
    plan = _plan(up, upscale=UpscaleSettings(scale=2.0))
    assert (plan.width, plan.height) == (2000, 1504)   # multiples of 8
    assert (plan.request.width, plan.request.height, plan.request.seed) == (2000, 1504, 5)
    assert plan.refine is None and plan.upscaler is None
    sized = _plan(up, width=4096, height=3072)
    assert (sized.width, sized.height) == (4096, 3072)   # over max_side 2048: upscale limits
    with pytest.raises(ProtocolError) as err:
        _plan(up, upscale=UpscaleSettings(scale=16.0))
    assert err.value.code == ErrorCode.LIMIT_EXCEEDED and "8192" in err.value.message
    assert "upscale" in err.value.message and err.value.field == "job.width"


def test_plan_of_a_refine_takes_the_native_tile_and_checks_tile_and_strength():
    up = _upload(256, 256)
    plan = _plan(up, steps=10, upscale=UpscaleSettings(scale=2.0, refine_strength=0.3))
    assert plan.refine is not None
    assert (plan.refine.tile, plan.refine.overlap, plan.refine.denoise_steps()) == (64, 16, 3)
    for settings, field in ((UpscaleSettings(refine_strength=0.01), "job.upscale.refine_strength"),
                            (UpscaleSettings(refine_strength=0.5, tile=100), "job.upscale.tile"),
                            (UpscaleSettings(refine_strength=0.5, tile=128, overlap=72),
                             "job.upscale.overlap")):
        with pytest.raises(ProtocolError) as err:
            _plan(up, steps=10, width=512, height=512, upscale=settings)
        assert err.value.field == field
    with pytest.raises(ProtocolError) as err:
        _plan(up, batch_size=2)
    assert err.value.field == "job.batch_size"


# ------------------------------------------------------------------ tiled refine
@pytest.fixture(scope="module")
def pipe(atelier_home):
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny")
    return store.current.pipe


def _settings(strength: float, axes: TileAxes = NONE, tile: int = 64, overlap: int = 16,
              scheduler: str = "euler", steps: int = 20) -> RefineSettings:
    return RefineSettings(prompt="stone wall", negative_prompt="", steps=steps,
                          strength=strength, guidance=5.0, scheduler=scheduler, seed=3,
                          tile=tile, overlap=overlap, axes=axes)


def _refine(pipe, rgb, settings, progress=None, noise=None):
    steps = []
    out = tiled_refine(pipe, "sd15", rgb, settings, pipe.scheduler.config,
                       progress or (lambda d, t, p: steps.append((d, t, p))), lambda: False,
                       noise=noise)
    return out, steps


def _column_steps(image: np.ndarray) -> np.ndarray:
    """Mean absolute difference between each column and the next."""
    return np.abs(np.diff(image.astype(np.float32), axis=1)).mean(axis=(0, 2))


def test_refine_at_strength_near_zero_shows_no_tile_seam(pipe):
    rgb = _smooth_periodic(96, 160)
    settings = _settings(0.05)
    out, steps = _refine(pipe, rgb, settings)
    grid = refine_grid(160, 96, settings)
    assert len(grid.x.starts) >= 3
    assert steps[-1][:2] == (len(grid) * 1, len(grid) * 1)
    columns = _column_steps(out)
    # Where one tile ends and the next takes over: no larger jump than inside the tiles.
    borders = sorted({s + settings.tile - 1 for s in grid.x.starts[:-1]} | set(grid.x.starts[1:]))
    interior = np.delete(columns, [b - 1 for b in borders] + borders)
    assert max(columns[b - 1] for b in borders) <= np.percentile(interior, 95)


def test_refine_of_a_seamless_texture_is_seamless_and_wrap_equivariant(pipe):
    rgb = _smooth_periodic(128, 192)
    settings = _settings(0.5, BOTH, steps=4)
    grid = refine_grid(192, 128, settings)
    stride_x = grid.x.starts[1]
    assert all(b - a == stride_x for a, b in zip(grid.x.starts, grid.x.starts[1:]))
    noise = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(1))
    out, _ = _refine(pipe, rgb, settings, noise=noise)
    rolled, _ = _refine(pipe, np.roll(rgb, stride_x, axis=1), settings,
                        noise=torch.roll(noise, stride_x // 8, dims=3))
    # Rolling the input (and its noise) by one tile stride rolls the output by the same.
    assert np.abs(np.roll(out, stride_x, axis=1).astype(int) - rolled).max() <= 1
    assert seam_score(out, "x") < 1.5 and seam_score(out, "y") < 1.5


def test_refine_progress_counts_tiles_times_steps_and_previews_the_whole_image(pipe):
    rgb = _noise_image(128, 128)
    settings = RefineSettings(**{**_settings(0.5, steps=4).__dict__, "preview_every": 1})
    out, steps = _refine(pipe, rgb, settings)
    grid = refine_grid(128, 128, settings)
    assert [d for d, _, _ in steps] == list(range(1, len(grid) * 2 + 1))
    previews = [p for _, _, p in steps if p is not None]
    assert len(previews) == 1 and (previews[0].width, previews[0].height) == (16, 16)
    assert out.shape == (128, 128, 3)


def test_refine_stops_within_a_tile_of_a_cancel(pipe):
    from backend.generation import JobCancelled

    calls = []
    with pytest.raises(JobCancelled):
        tiled_refine(pipe, "sd15", _noise_image(128, 128), _settings(0.5, steps=4),
                     pipe.scheduler.config, lambda d, t, p: calls.append(d),
                     lambda: len(calls) >= 3)
    assert len(calls) == 3


def test_refine_runs_on_an_sdxl_model_with_its_pooled_embeddings(atelier_home):
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny-sdxl")
    sdxl = store.current.pipe
    out = tiled_refine(sdxl, "sdxl", _noise_image(96, 128), _settings(0.5, BOTH, steps=4),
                       sdxl.scheduler.config, lambda *_: None, lambda: False)
    assert out.shape == (96, 128, 3) and out.std() > 1


# ------------------------------------------------------------------ refine with controls
@pytest.fixture(scope="module")
def asset_generator(atelier_home):
    from backend.pipelines.assets import AssetGenerator
    from backend.pipelines.generator import DiffusionGenerator

    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny")
    return AssetGenerator(DiffusionGenerator(store), store)


def _refine_job(asset_generator, **fields):
    init = _smooth_periodic(64, 96)
    rgba = np.concatenate([init, np.full((64, 96, 1), 255, np.uint8)], axis=2)
    up = make_upload(PixelFormat.RGBA8, 96, 64, rgba.tobytes())
    job = GenerateRequest(kind="upscale", init_image=up.id, steps=4, seed=9, scheduler="euler",
                          prompt="bricks", upscale=UpscaleSettings(scale=2.0, refine_strength=0.5,
                                                                   tile=64), **fields)
    out = asset_generator.generate(job, {up.id: up}, lambda *_: None, lambda: False)
    return np.frombuffer(out.images[0].pixels.rgba, np.uint8)


def test_refine_tiles_are_steered_by_a_controlnet_within_its_window(asset_generator):
    from protocol.messages import ControlLayer

    plain = _refine_job(asset_generator)
    canny = ControlLayer(kind="canny", preprocess=True, scale=2.0)
    steered = _refine_job(asset_generator, controls=[canny])
    assert np.abs(steered.astype(int) - plain).mean() > 1
    # A window of no steps leaves the refine as it was without the control.
    closed = ControlLayer(kind="canny", preprocess=True, scale=2.0, start=0.0, end=0.0)
    assert np.array_equal(_refine_job(asset_generator, controls=[closed]), plain)


def test_refine_refuses_t2i_adapters_and_controls_without_a_refine(asset_generator):
    from protocol.messages import ControlLayer

    with pytest.raises(ProtocolError) as err:
        _refine_job(asset_generator, controls=[ControlLayer(kind="depth", preprocess=False,
                                                            model="tiny-adapter",
                                                            image=None)])
    assert err.value.field == "job.controls[0].image"   # checked first: no image given
    init = _smooth_periodic(64, 96)
    depth = make_upload(PixelFormat.RGBA8, 96, 64,
                        np.concatenate([init, np.full((64, 96, 1), 255, np.uint8)], 2).tobytes())
    rgba = make_upload(PixelFormat.RGBA8, 96, 64, depth.data)
    job = GenerateRequest(kind="upscale", init_image=rgba.id, steps=4, seed=9,
                          upscale=UpscaleSettings(scale=2.0, refine_strength=0.5, tile=64),
                          controls=[ControlLayer(kind="depth", image=depth.id,
                                                 model="tiny-adapter")])
    with pytest.raises(ProtocolError) as err:
        asset_generator.generate(job, {rgba.id: rgba, depth.id: depth}, lambda *_: None,
                                 lambda: False)
    assert err.value.code == ErrorCode.UNSUPPORTED and err.value.field == "job.controls[0].model"
    with pytest.raises(ProtocolError) as err:
        asset_generator.check(GenerateRequest(kind="upscale", init_image=rgba.id,
                                              upscale=UpscaleSettings(scale=2.0),
                                              controls=[ControlLayer(kind="depth",
                                                                     image=depth.id)]),
                              {rgba.id: rgba, depth.id: depth})
    assert err.value.field == "job.controls" and "refine_strength" in err.value.message
