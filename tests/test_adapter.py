"""Depth through a T2I-Adapter (backend/pipelines/adapter.py): the same images as
diffusers' own adapter pipelines, one adapter run per job, every job kind, tiling, and
clear errors for adapters that do not fit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionAdapterPipeline,
    StableDiffusionXLAdapterPipeline,
    T2IAdapter,
    UNet2DConditionModel,
)

from backend.generation import GenerationOutput
from backend.models.store import ModelStore
from backend.pipelines.adapter import adapter_guide, adapter_residuals, residual_shapes
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.tiling import TileAxes, wrapped_convolutions
from models_support import put_in_hf_cache
from protocol.client import AtelierClient, make_upload
from protocol.errors import ErrorCode, ProtocolError
from protocol.events import JobDone
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import ControlSettings, DepthInput, GenerateRequest

CONFIGS = Path(__file__).resolve().parents[1] / "backend" / "models" / "configs"
SIZE = 64
JOB = dict(prompt="a stone wall", width=SIZE, height=SIZE, steps=4, seed=11, scheduler="euler")
NO_TILING = TileAxes(x=False, y=False)


def _depth_frame(width: int = SIZE, height: int = SIZE) -> ImageFrame:
    """Normalised nearness: a ramp with a near block, so every feature map varies."""
    near = np.tile(np.linspace(0.1, 0.9, width, dtype=np.float32), (height, 1))
    near[height // 4: height // 2, width // 4: width // 2] = 1.0
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.FLOAT32, 0, width, height, new_id(),
                      near.astype("<f4").tobytes())


def _depth_tensor(width: int = SIZE, height: int = SIZE) -> torch.Tensor:
    frame = _depth_frame(width, height)
    near = torch.from_numpy(np.frombuffer(frame.data, "<f4").reshape(height, width).copy())
    return near[None, None].expand(1, 3, height, width).contiguous()


def _store(home: Path, name: str) -> ModelStore:
    store = ModelStore("cpu", torch.float32, home, search_dirs=[], hf_cache=home / "no-hf-cache")
    store.load(name)
    return store


@pytest.fixture(scope="module")
def sd15(atelier_home):
    store = _store(atelier_home, "tiny")
    return store, DiffusionGenerator(store)


def _run(generator: DiffusionGenerator, job: GenerateRequest, *uploads: ImageFrame) -> GenerationOutput:
    return generator.generate(job, {u.id: u for u in uploads}, lambda *a: None, lambda: False)


def _image(output: GenerationOutput, index: int = 0) -> np.ndarray:
    pixels = output.images[index].pixels
    return np.frombuffer(pixels.rgba, np.uint8).reshape(pixels.height, pixels.width, 4).astype(int)


def _with_adapter(depth: ImageFrame, **control) -> dict:
    return dict(depth=DepthInput(upload=depth.id, convention="normalized"),
                control=ControlSettings(model="tiny-adapter", **control))


# ------------------------------------------------------------------ the UNet's layout

@pytest.mark.parametrize("family, adapter_type, side, to_mid_block", [
    ("sd15", "full_adapter", 512, False),      # four down blocks, four features
    ("sdxl", "full_adapter_xl", 1024, True),   # three down blocks; the fourth goes to the mid block
])
def test_residual_shapes_match_the_published_adapter_layouts(family, adapter_type, side, to_mid_block):
    """The full-size UNets' residual slots (from the configs in the repo) against the
    feature maps of the adapter architectures published for them, run shape-only."""
    unet_config = UNet2DConditionModel.load_config(str(CONFIGS / family / "unet"))
    wanted = residual_shapes(dataclasses.make_dataclass("C", unet_config.keys())(**unet_config),
                             side // 8, side // 8)
    with torch.device("meta"):
        adapter = T2IAdapter(channels=[320, 640, 1280, 1280], num_res_blocks=2, adapter_type=adapter_type,
                             downscale_factor=8 if family == "sd15" else 16)
        features = adapter(torch.zeros(1, 3, side, side))
    assert [tuple(f.shape[1:]) for f in features] == wanted[:len(features)]
    assert len(features) == len(wanted) - (0 if to_mid_block else 1)


# ------------------------------------------------------------------ same as diffusers

@pytest.mark.parametrize("base, adapter_name, pipeline_class", [
    ("tiny", "tiny-adapter", StableDiffusionAdapterPipeline),
    ("tiny-sdxl", "tiny-sdxl-adapter", StableDiffusionXLAdapterPipeline),
])
def test_residuals_give_the_latents_of_diffusers_adapter_pipeline(atelier_home, base, adapter_name,
                                                                   pipeline_class):
    """The plain txt2img pipeline plus ``adapter_residuals`` computes what diffusers'
    adapter pipeline computes, with guidance and a batch of two."""
    store = _store(atelier_home, base)
    adapter = store.adapter(adapter_name)
    pipe = store.pipeline("txt2img")
    reference = pipeline_class.from_pipe(pipe, adapter=adapter)
    depth = _depth_tensor()
    call = dict(prompt="a stone wall", width=SIZE, height=SIZE, num_inference_steps=3,
                guidance_scale=6.0, num_images_per_prompt=2, output_type="latent")

    expected = reference(image=depth, adapter_conditioning_scale=0.7,
                         generator=torch.Generator().manual_seed(4), **call).images
    guide = adapter_guide(adapter, depth, pipe.unet, pipe.vae_scale_factor,
                          ControlSettings(scale=0.7), NO_TILING, adapter_name)
    steps_done = 0

    def count(_p, index, _t, _tensors):
        nonlocal steps_done
        steps_done = index + 1
        return {}

    # PNDM's first step takes two UNet calls: the loop runs ``num_timesteps`` (4) times
    with adapter_residuals(pipe.unet, guide, lambda: (steps_done, pipe.num_timesteps)):
        ours = pipe(generator=torch.Generator().manual_seed(4), callback_on_step_end=count, **call).images
    plain = pipe(generator=torch.Generator().manual_seed(4), **call).images
    assert torch.allclose(ours, expected, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3       # the residuals did something
    assert not pipe.unet._forward_pre_hooks         # and are gone after the block


# ------------------------------------------------------------------ jobs

def test_adapter_runs_once_per_job_and_the_unet_every_step(sd15):
    store, generator = sd15
    depth = _depth_frame()
    adapter, unet = store.adapter("tiny-adapter"), store.current.pipe.unet
    calls = {"adapter": 0, "unet": 0}
    hooks = [adapter.register_forward_hook(lambda *_: calls.__setitem__("adapter", calls["adapter"] + 1)),
             unet.register_forward_hook(lambda *_: calls.__setitem__("unet", calls["unet"] + 1))]
    try:
        _run(generator, GenerateRequest(**JOB, batch_size=2, **_with_adapter(depth)), depth)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"adapter": 1, "unet": JOB["steps"]}


def test_scale_zero_is_no_conditioning_and_the_window_limits_it(sd15):
    _, generator = sd15
    depth = _depth_frame()
    plain = _image(_run(generator, GenerateRequest(**JOB)))

    def conditioned(**control) -> np.ndarray:
        return _image(_run(generator, GenerateRequest(**JOB, **_with_adapter(depth, **control)), depth))

    full = conditioned()
    assert np.array_equal(conditioned(scale=0.0), plain)
    assert np.abs(full - plain).mean() > 0.3
    late = conditioned(start=0.5)
    assert not np.array_equal(late, full) and not np.array_equal(late, plain)
    assert np.array_equal(conditioned(start=1.0), plain)     # a window with no steps in it


def test_img2img_and_inpaint_take_the_adapter(sd15):
    _, generator = sd15
    depth = _depth_frame()
    rng = np.random.default_rng(0)
    init_pixels = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    init_pixels[..., 3] = 255
    init = ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, SIZE, SIZE, new_id(), init_pixels.tobytes())
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 8:40] = 255
    mask_frame = ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, SIZE, SIZE, new_id(), mask.tobytes())

    img2img = GenerateRequest(**JOB, kind="img2img", init_image=init.id, strength=0.7)
    plain = _image(_run(generator, img2img, init))
    guided = _image(_run(generator, dataclasses.replace(img2img, **_with_adapter(depth)), init, depth))
    assert np.abs(guided - plain).mean() > 0.3

    inpaint = GenerateRequest(**JOB, kind="inpaint", init_image=init.id, mask=mask_frame.id,
                              **_with_adapter(depth))
    after = _image(_run(generator, inpaint, init, mask_frame, depth))
    plain_inpaint = _image(_run(generator, dataclasses.replace(inpaint, depth=None, control=None),
                                init, mask_frame))
    assert np.array_equal(after[mask == 0], init_pixels[mask == 0])
    assert not np.array_equal(after[mask == 255], plain_inpaint[mask == 255])


def test_sizes_the_adapter_cannot_divide_are_resized_to_the_unet(sd15):
    """72x40 is not a multiple of the tiny adapter's 32: its features are made at 96x64
    and resized to the UNet's slots instead of failing on a shape mismatch."""
    _, generator = sd15
    depth = _depth_frame(72, 40)
    job = GenerateRequest(**{**JOB, "width": 72, "height": 40}, **_with_adapter(depth))
    plain = _image(_run(generator, dataclasses.replace(job, depth=None, control=None)))
    guided = _image(_run(generator, job, depth))
    assert guided.shape == (40, 72, 4) and np.abs(guided - plain).mean() > 0.3


def test_tiling_wraps_the_adapter_too(sd15):
    """Rolled noise and a rolled depth map give the rolled image only when the adapter's
    convolutions wrap along with the UNet's and the VAE's."""
    store, _ = sd15
    pipe, adapter = store.pipeline("txt2img"), store.adapter("tiny-adapter")
    width, height, k = 96, 64, 2        # k latent pixels = 16 image pixels = one adapter pixel
    axes = TileAxes(x=True, y=False)
    noise = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(2))
    depth = _depth_tensor(width, height)

    def generate(latents: torch.Tensor, image: torch.Tensor, adapter_axes: TileAxes) -> torch.Tensor:
        guide = adapter_guide(adapter, image, pipe.unet, 8, ControlSettings(), adapter_axes, "tiny-adapter")
        with wrapped_convolutions([pipe.unet, pipe.vae], axes), \
                adapter_residuals(pipe.unet, guide, lambda: (0, 2)):
            return pipe("a stone wall", latents=latents, num_inference_steps=2, width=width,
                        height=height, output_type="pt").images

    def roll_error(adapter_axes: TileAxes) -> float:
        image = generate(noise, depth, adapter_axes)
        rolled = generate(torch.roll(noise, k, dims=3), torch.roll(depth, 8 * k, dims=3), adapter_axes)
        return (torch.roll(image, 8 * k, dims=3) - rolled).abs().max().item()

    assert roll_error(axes) < 1e-4
    assert roll_error(NO_TILING) > 1e-3


# ------------------------------------------------------------------ what does not fit

def test_an_adapter_for_another_unet_or_a_non_adapter_is_refused_by_field(sd15, tmp_path):
    store, generator = sd15
    depth = _depth_frame()
    narrow = store.home / "models" / f"narrow-adapter-{tmp_path.name}"   # inside a model root
    T2IAdapter(channels=[16, 16], num_res_blocks=1, downscale_factor=8,
               adapter_type="full_adapter").save_pretrained(narrow, safe_serialization=True)
    for name, words in ((str(narrow), "channels"), ("tiny", "neither a ControlNet nor a T2I-Adapter")):
        job = GenerateRequest(**JOB, depth=DepthInput(upload=depth.id, convention="normalized"),
                              control=ControlSettings(model=name))
        with pytest.raises(ProtocolError) as err:
            _run(generator, job, depth)
        assert err.value.field == "control.model" and words in err.value.message
    assert not store.current.pipe.unet._forward_pre_hooks


def test_store_tells_adapters_from_controlnets(sd15, tmp_path):
    store, _ = sd15
    assert store.conditioner_family("tiny-adapter") == "t2i_adapter"
    assert store.conditioner_family("tiny-controlnet") == "controlnet"
    config = json.loads((store.resolve("tiny-adapter").path / "config.json").read_text())
    assert config["_class_name"] == "T2IAdapter"
    with pytest.raises(ProtocolError) as err:
        store.conditioner_family(str(tmp_path / "missing"))
    assert err.value.field == "control.model"


def test_adapter_depth_job_over_the_daemon(daemon):
    """A depth job naming a T2I-Adapter crosses the real websocket; a job naming a model
    that conditions nothing fails by field and the daemon goes on serving."""
    depth_frame = _depth_frame()
    depth = make_upload(PixelFormat.FLOAT32, SIZE, SIZE, depth_frame.data)
    job = GenerateRequest(**JOB, tiling="both", depth=DepthInput(upload=depth.id, convention="normalized"),
                          control=ControlSettings(model="tiny-adapter", scale=0.9, end=0.8))
    with AtelierClient(daemon.url, client_name="test_adapter") as client:
        client.wait_connected()
        done = client.run_job(job, [depth], timeout=120)
        assert isinstance(done, JobDone), done
        assert done.result.params.control == job.control
        assert (done.images[0].width, done.images[0].height) == (SIZE, SIZE)
        wrong = dataclasses.replace(job, control=ControlSettings(model="tiny"))
        with pytest.raises(ProtocolError) as err:
            client.run_job(wrong, [depth], timeout=120)
        assert err.value.field == "job.control.model", err.value
        again = client.run_job(job, [depth], timeout=120)
        assert isinstance(again, JobDone), again


def test_daemon_told_to_use_an_adapter_uses_it_for_jobs_that_name_none(daemon, start_daemon):
    """``serve --depth-control sd15=tiny-adapter``: a depth job naming no model gives the
    pixels of the same job naming the adapter on a default daemon, not its ControlNet's."""
    depth_frame = _depth_frame()
    depth = make_upload(PixelFormat.FLOAT32, SIZE, SIZE, depth_frame.data)
    job = GenerateRequest(**JOB, depth=DepthInput(upload=depth.id, convention="normalized"))

    def pixels(url: str, request: GenerateRequest) -> bytes:
        with AtelierClient(url, client_name="test_adapter") as client:
            client.wait_connected()
            done = client.run_job(request, [depth], timeout=120)
            assert isinstance(done, JobDone), done
            return done.images[0].data

    chosen = start_daemon("--depth-control", "sd15=tiny-adapter")
    named = dataclasses.replace(job, control=ControlSettings(model="tiny-adapter"))
    assert pixels(chosen.url, job) == pixels(daemon.url, named)
    assert pixels(daemon.url, job) != pixels(daemon.url, named)   # the default is the ControlNet


def test_depth_controls_for_unknown_families_are_refused(atelier_home):
    with pytest.raises(ValueError, match="sd9"):
        ModelStore("cpu", torch.float32, atelier_home, [], depth_controls={"sd9": "x"})


def _sd15_type_adapter(store: ModelStore, dest: Path) -> Path:
    """A tiny adapter of SD1.5's own type (``full_adapter``) for the tiny UNet: the built-in
    tiny adapters have SDXL's layout, and an SD1.5 repo must hold an SD1.5 adapter."""
    torch.manual_seed(5)
    widths = store.current.pipe.unet.config.block_out_channels
    T2IAdapter(channels=list(widths), num_res_blocks=1, downscale_factor=8,
               adapter_type="full_adapter").save_pretrained(dest, safe_serialization=True)
    return dest


def test_default_depth_control_is_the_first_family_default_on_this_machine(atelier_home, tmp_path):
    """A model named by path (not the built-in tiny) uses the family's defaults: the
    ControlNet when it was pulled, else the T2I-Adapter, else a clear error saying how to
    get either; a depth job naming nothing then runs on what was found."""
    from backend.models.store import DEFAULT_DEPTH_CONTROLS

    cache = tmp_path / "hf"
    store = ModelStore("cpu", torch.float32, atelier_home, [], hf_cache=cache)
    store.load(str(store.resolve("tiny").path))           # family sd15, not "tiny"
    controlnet, adapter = DEFAULT_DEPTH_CONTROLS["sd15"]
    depth = _depth_frame()
    job = GenerateRequest(**JOB, depth=DepthInput(upload=depth.id, convention="normalized"))

    with pytest.raises(ProtocolError) as err:
        store.default_depth_control()
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND and err.value.field == "control.model"
    assert f"atelier models pull {controlnet}" in err.value.message
    assert f"atelier models pull {adapter}" in err.value.message
    generator = DiffusionGenerator(store)
    with pytest.raises(ProtocolError) as err:
        _run(generator, job, depth)                            # the job fails the same way
    assert err.value.field == "control.model"

    put_in_hf_cache(cache, adapter, _sd15_type_adapter(store, tmp_path / "sd15-adapter"))
    assert store.default_depth_control() == adapter
    by_default = _image(_run(generator, job, depth))
    named = dataclasses.replace(job, control=ControlSettings(model=adapter))
    assert np.array_equal(by_default, _image(_run(generator, named, depth)))

    put_in_hf_cache(cache, controlnet, store.resolve("tiny-controlnet").path)
    assert store.default_depth_control() == controlnet       # preferred once present
    store.depth_controls["sd15"] = adapter                     # the daemon's choice wins
    assert store.default_depth_control() == adapter


def test_low_memory_sdxl_prefers_the_depth_adapter(atelier_home, tmp_path):
    """SDXL's depth ControlNet and UNet do not fit an 8 GB card together: in low-memory
    mode an SDXL model's default is the adapter when both are on the machine. SD1.5's
    ControlNet fits, so it stays first there."""
    from backend.models.accel import AccelOptions
    from backend.models.store import DEFAULT_DEPTH_CONTROLS

    cache = tmp_path / "hf"
    for family, tiny in (("sdxl", "tiny-sdxl"), ("sd15", "tiny")):
        controlnet, adapter = DEFAULT_DEPTH_CONTROLS[family]
        for low_memory, expected in ((False, controlnet), (True, adapter if family == "sdxl" else controlnet)):
            # the options of a daemon on a GPU (offload itself is skipped on this CPU)
            store = ModelStore("cpu", torch.float32, atelier_home, [], hf_cache=cache,
                               accel=AccelOptions.for_device("cuda", low_memory, compile=False))
            if not (cache / ("models--" + adapter.replace("/", "--"))).exists():
                put_in_hf_cache(cache, adapter, store.resolve(f"{tiny}-adapter").path)
                put_in_hf_cache(cache, controlnet, store.resolve(f"{tiny}-controlnet").path)
            store.load(str(store.resolve(tiny).path))
            assert store.current.family == family
            assert store.default_depth_control() == expected, (family, low_memory)
