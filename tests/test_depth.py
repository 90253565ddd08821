"""Depth maps: normalisation, background, orientation, and depth-conditioned generation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel

from backend.generation import GenerationOutput
from backend.models.store import ModelStore
from backend.pipelines.depth import (
    FOREGROUND_FLOOR,
    control_tensor,
    depth_for_job,
    find_depth_model,
    nearness,
)
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.tiling import TileAxes, wrapped_convolutions
from protocol.client import AtelierClient, make_upload
from protocol.errors import ErrorCode, ProtocolError
from protocol.events import JobDone
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from models_support import save_tiny_dpt
from protocol.messages import ControlSettings, DepthInput, GenerateRequest

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


def test_z_depth_is_converted_like_distance():
    """Blender's Z pass is depth along the camera's axis: sent as "z", made near = bright by
    1 / value like a distance, with its background past background_at."""
    from protocol import validate
    z = np.full((4, 6), BLENDER_BACKGROUND, np.float32)
    z[1:3, 1:5] = [[9.0, 10.0, 11.0, 12.0]] * 2
    near = nearness(z, DepthInput(convention="z", background_at=1e9))
    assert np.array_equal(near, nearness(z, DepthInput(convention="distance", background_at=1e9)))
    assert near[0, 0] == 0.0 and near[1, 1] == pytest.approx(1.0)
    assert near[1, 4] == pytest.approx(FOREGROUND_FLOOR)
    validate(GenerateRequest(depth=DepthInput(upload="d" * 32, convention="z")), "job")


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


def test_estimator_from_a_local_folder_gives_a_nearness_map(tmp_path):
    from backend.pipelines.depth import DepthEstimator
    folder = save_tiny_dpt(tmp_path / "dpt")
    assert find_depth_model({"ATELIER_DEPTH_MODEL": str(folder)}, None) == folder
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    near = DepthEstimator(folder).estimate(rgb)
    assert near.shape == (40, 56) and near.dtype == np.float32
    assert near.min() == 0.0 and near.max() == 1.0

    # In the model's half precision (as on a GPU), waiting in CPU memory between estimates
    # (low-memory mode): the same map within half precision's rounding.
    half = DepthEstimator(folder, "cpu", torch.bfloat16, keep_on_device=False)
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    near_half = half.estimate(rgb)
    assert near_half.dtype == np.float32
    assert np.corrcoef(near.ravel(), near_half.ravel())[0, 1] > 0.98
    assert {p.device.type for p in half.model.parameters()} == {"cpu"}


def test_an_estimator_that_overflows_in_fp16_falls_back_to_fp32(tmp_path):
    """A processor whose normalisation gives inputs beyond fp16's range (65504) makes the
    fp16 run infinite; the estimator runs again in fp32, and stays there."""
    from transformers import DPTImageProcessor

    from backend.pipelines.depth import DepthEstimator
    folder = save_tiny_dpt(tmp_path / "dpt")
    DPTImageProcessor(size={"height": 32, "width": 32},
                      image_std=[1e-6] * 3).save_pretrained(folder)
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    estimator = DepthEstimator(folder, "cpu", torch.float16)
    near = estimator.estimate(rgb)
    assert np.isfinite(near).all() and near.min() == 0.0 and near.max() == 1.0
    assert estimator.dtype == torch.float32
    assert {p.dtype for p in estimator.model.parameters()} == {torch.float32}
    # the weights were rounded to fp16 once: close to the fp32 estimator's map, not equal
    np.testing.assert_allclose(near, DepthEstimator(folder).estimate(rgb), atol=2e-3)


# ------------------------------------------------------- through the generator

SIZE = 64
JOB = dict(prompt="a stone wall", width=SIZE, height=SIZE, steps=3, seed=11, scheduler="euler")


def _store(home, name: str, *models_dirs: Path) -> ModelStore:
    """A store serving ``name``; ControlNets the test saves go in ``models_dirs``."""
    store = ModelStore("cpu", torch.float32, home, search_dirs=list(models_dirs),
                       hf_cache=home / "no-hf-cache")
    store.load(name)
    return store


def _live_controlnet(store: ModelStore, tiny_name: str, dest):
    """The built-in tiny ControlNet with its zero-initialised output convolutions given
    random weights: a fresh ControlNet adds exactly nothing, which would make every
    "the depth has an effect" assertion vacuous."""
    controlnet = ControlNetModel.from_pretrained(str(store.resolve(tiny_name).path))
    generator = torch.Generator().manual_seed(5)
    zero_initialised = [controlnet.controlnet_cond_embedding.conv_out,
                        *controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in zero_initialised:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
    controlnet.save_pretrained(dest, safe_serialization=True)
    return str(dest)


@pytest.fixture(scope="module")
def sd15(atelier_home, tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("cn")
    store = _store(atelier_home, "tiny", models_dir)
    folder = _live_controlnet(store, "tiny-controlnet", models_dir / "sd15")
    return store, DiffusionGenerator(store), folder


def _run(generator: DiffusionGenerator, job: GenerateRequest, *uploads: ImageFrame) -> GenerationOutput:
    return generator.generate(job, {u.id: u for u in uploads}, lambda *a: None, lambda: False)


def _image(output: GenerationOutput, index: int = 0) -> np.ndarray:
    pixels = output.images[index].pixels
    return np.frombuffer(pixels.rgba, np.uint8).reshape(pixels.height, pixels.width, 4)


def _near_top_depth() -> ImageFrame:
    """Something near in the top quarter, a far wall below, empty background at the bottom."""
    distance = np.full((40, 24), 20.0, np.float32)
    distance[:10] = 5.0
    distance[-8:] = BLENDER_BACKGROUND
    return float_frame(distance)


def _rgba_upload(seed: int = 0) -> ImageFrame:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, SIZE, SIZE, new_id(), pixels.tobytes())


def test_depth_reaches_the_controlnet_upright_and_normalised(sd15):
    store, generator, folder = sd15
    depth = _near_top_depth()
    seen: list[torch.Tensor] = []
    embedding = store.controlnet(folder).controlnet_cond_embedding
    hook = embedding.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        _run(generator, GenerateRequest(**JOB, depth=DepthInput(upload=depth.id, background_at=1e9),
                                        control=ControlSettings(model=folder)), depth)
    finally:
        hook.remove()
    cond = seen[0]
    assert cond.shape[1:] == (3, SIZE, SIZE)
    # 40 rows -> 64: the near quarter is rows 0-15, the far wall 16-50, background 51-63
    assert torch.all(cond[:, :, :14] == 1.0)
    assert torch.allclose(cond[:, :, 20:46], torch.tensor(FOREGROUND_FLOOR))
    assert torch.all(cond[:, :, 53:] == 0.0)


def test_control_scale_zero_is_no_control_and_scale_one_is_not(sd15):
    _, generator, folder = sd15
    depth = _near_top_depth()
    plain = _image(_run(generator, GenerateRequest(**JOB)))

    def with_scale(scale: float) -> np.ndarray:
        job = GenerateRequest(**JOB, depth=DepthInput(upload=depth.id),
                              control=ControlSettings(model=folder, scale=scale))
        return _image(_run(generator, job, depth))

    assert np.array_equal(with_scale(0.0), plain)
    assert np.abs(with_scale(1.0).astype(int) - plain).mean() > 1.0


def test_guidance_window_limits_the_control_to_its_steps(sd15):
    _, generator, folder = sd15
    depth = _near_top_depth()

    def window(start: float, end: float) -> np.ndarray:
        job = GenerateRequest(**JOB, depth=DepthInput(upload=depth.id),
                              control=ControlSettings(model=folder, start=start, end=end))
        return _image(_run(generator, job, depth))

    plain = _image(_run(generator, GenerateRequest(**JOB)))
    full, late = window(0.0, 1.0), window(0.5, 1.0)
    assert not np.array_equal(late, full) and not np.array_equal(late, plain)


def test_depth_with_inpaint_keeps_unmasked_pixels_and_img2img_runs(sd15):
    _, generator, folder = sd15
    depth, init = _near_top_depth(), _rgba_upload()
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[20:44, 8:40] = 255
    mask_frame = ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, SIZE, SIZE, new_id(), mask.tobytes())
    control = ControlSettings(model=folder)
    out = _run(generator, GenerateRequest(**JOB, kind="inpaint", init_image=init.id,
                                          mask=mask_frame.id, depth=DepthInput(upload=depth.id),
                                          control=control), init, mask_frame, depth)
    before = np.frombuffer(init.data, np.uint8).reshape(SIZE, SIZE, 4)
    after = _image(out)
    assert np.array_equal(after[mask == 0], before[mask == 0])
    assert not np.array_equal(after[mask == 255], before[mask == 255])

    img2img = GenerateRequest(**JOB, kind="img2img", init_image=init.id, strength=0.6)
    plain = _image(_run(generator, img2img, init))
    conditioned = _image(_run(generator, dataclasses.replace(
        img2img, depth=DepthInput(upload=depth.id), control=control), init, depth))
    assert np.abs(conditioned.astype(int) - plain).mean() > 1.0


def test_control_settings_are_checked_before_any_model_runs(sd15):
    _, generator, _ = sd15
    depth = _near_top_depth()
    with pytest.raises(ProtocolError) as err:
        _run(generator, GenerateRequest(**JOB, control=ControlSettings()))
    assert err.value.field == "job.control"
    with pytest.raises(ProtocolError) as err:
        _run(generator, GenerateRequest(**JOB, depth=DepthInput(upload=depth.id),
                                        control=ControlSettings(start=0.8, end=0.2)), depth)
    assert err.value.field == "job.control.end" and "before" in err.value.message
    with pytest.raises(ProtocolError) as err:
        _run(generator, GenerateRequest(**JOB, depth=DepthInput(estimate=True)))
    assert err.value.field == "job.depth.estimate"


def test_sd2_depth_model_gets_the_map_as_its_fifth_unet_channel(atelier_home):
    store = _store(atelier_home, "tiny-depth")
    generator = DiffusionGenerator(store)
    depth = _near_top_depth()
    seen: list[torch.Tensor] = []
    hook = store.current.pipe.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        out = _run(generator, GenerateRequest(**JOB, depth=DepthInput(upload=depth.id)), depth)
    finally:
        hook.remove()
    assert len(out.images) == 1
    depth_channel = seen[0][:, 4]             # (batch, h, w) at latent size, scaled to [-1, 1]
    assert depth_channel.shape[-2:] == (SIZE // 8, SIZE // 8)
    assert depth_channel[:, 0].min() > 0.9 and depth_channel[:, -1].max() < -0.9
    with pytest.raises(ProtocolError) as err:
        _run(generator, GenerateRequest(**JOB, depth=DepthInput(upload=depth.id),
                                        control=ControlSettings(model="tiny-controlnet")), depth)
    assert err.value.field == "job.control.model"


def test_sdxl_controlnet_depth_runs(atelier_home, tmp_path):
    store = _store(atelier_home, "tiny-sdxl", tmp_path)
    folder = _live_controlnet(store, "tiny-sdxl-controlnet", tmp_path / "sdxl-cn")
    generator = DiffusionGenerator(store)
    depth = _near_top_depth()
    plain = _image(_run(generator, GenerateRequest(**JOB)))
    conditioned = _image(_run(generator, GenerateRequest(
        **JOB, depth=DepthInput(upload=depth.id), control=ControlSettings(model=folder)), depth))
    assert np.abs(conditioned.astype(int) - plain).mean() > 1.0


def test_estimated_depth_from_a_local_model_conditions_the_job(sd15, tmp_path, monkeypatch):
    store, _, folder = sd15
    init = _rgba_upload(3)
    job = GenerateRequest(**JOB, kind="img2img", init_image=init.id,
                          depth=DepthInput(estimate=True), control=ControlSettings(model=folder))
    with pytest.raises(ProtocolError) as err:
        _run(DiffusionGenerator(store), job, init)
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND
    monkeypatch.setenv("ATELIER_DEPTH_MODEL", str(save_tiny_dpt(tmp_path / "dpt")))
    estimated = _image(_run(DiffusionGenerator(store), job, init))
    plain = _image(_run(DiffusionGenerator(store), dataclasses.replace(job, depth=None, control=None), init))
    assert np.abs(estimated.astype(int) - plain).mean() > 1.0


def test_tiling_wraps_the_controlnet_too(sd15):
    """Rolled noise and a rolled depth map give the rolled image only when the ControlNet's
    convolutions wrap along with the UNet's and the VAE's."""
    store, _, folder = sd15
    pipe = store.pipeline("txt2img", folder)
    width, height = 96, 64
    noise = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(2))
    distance = np.tile(np.linspace(5, 30, width, dtype=np.float32), (height, 1))
    distance[20:40, 30:50] = 3.0
    depth = control_tensor(nearness(distance, DepthInput()))
    k = 2                               # latent pixels; the tiny UNet downsamples once

    def generate(latents: torch.Tensor, image: torch.Tensor, modules: list) -> torch.Tensor:
        with wrapped_convolutions(modules, TileAxes(x=True, y=False)):
            return pipe("a stone wall", latents=latents, image=image, num_inference_steps=2,
                        width=width, height=height, output_type="pt").images

    def roll_error(modules: list) -> float:
        image = generate(noise, depth, modules)
        rolled = generate(torch.roll(noise, k, dims=3), torch.roll(depth, 8 * k, dims=3), modules)
        return (torch.roll(image, 8 * k, dims=3) - rolled).abs().max().item()

    assert roll_error([pipe.unet, pipe.vae, pipe.controlnet]) < 1e-4
    assert roll_error([pipe.unet, pipe.vae]) > 1e-2


def test_depth_job_over_the_daemon(daemon):
    """A float32 depth upload crosses the real websocket and conditions a tiled job with
    the tiny model's default ControlNet."""
    distance = _near_top_depth()
    depth = make_upload(PixelFormat.FLOAT32, distance.width, distance.height, distance.data)
    job = GenerateRequest(**JOB, tiling="y", depth=DepthInput(upload=depth.id, background_at=1e9),
                          control=ControlSettings(scale=0.8, start=0.0, end=0.9))
    with AtelierClient(daemon.url, client_name="test_depth") as client:
        client.wait_connected()
        done = client.run_job(job, [depth], timeout=120)
    assert isinstance(done, JobDone), done
    assert done.result.tiling == "y" and done.result.params.depth == job.depth
    assert (done.images[0].width, done.images[0].height) == (SIZE, SIZE)
