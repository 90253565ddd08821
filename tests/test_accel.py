"""The speed levers change how the arithmetic runs, never the pixels (within float tolerance).

Real tiny pipelines loaded through the model store; one copy plain, one accelerated.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from backend.models.store import ModelStore
from backend.models.accel import (CHANNELS_LAST, CPU_OFFLOAD, FUSE_QKV, PROMPT_CACHE, SDPA,
                                     VAE_TILING, AccelOptions, Acceleration,
                                     accelerate_controlnet, apply_accel)
from backend.pipelines.job_unet import JobUNet
from backend.pipelines.tiling import tile_axes, wrapped_convolutions
from models_support import CompileCounter

TOLERANCE = 1e-4          # on pixels in [0, 1]; the levers reorder float sums, nothing more
SIZE, STEPS, BATCH = 64, 3, 2
PROMPT, NEGATIVE = "a red brick wall", "blurry"

EAGER_LEVERS = AccelOptions(sdpa=True, channels_last=True, fuse_qkv=True, prompt_cache_size=4)


def _store(home: Path, model: str = "tiny") -> ModelStore:
    store = ModelStore("cpu", torch.float32, home, [])
    store.load(model)
    return store


def _generate(store: ModelStore, accel: Optional[Acceleration], tiling: str = "none",
              kind: str = "txt2img", seed: int = 7, steps: int = STEPS,
              batch: int = BATCH) -> np.ndarray:
    # As a job calls it: a copy of the shared pipeline with the job's view of the UNet.
    pipe = copy.copy(store.pipeline(kind))
    pipe.unet = JobUNet(pipe.unet)
    if accel is None:
        prompt = {"prompt": PROMPT, "negative_prompt": NEGATIVE}
    else:
        prompt = accel.prompt_kwargs(pipe, PROMPT, NEGATIVE, guidance=True)
    if kind == "img2img":
        extra = {"image": torch.full((1, 3, SIZE, SIZE), 0.25), "strength": 0.6}
    else:
        extra = {"height": SIZE, "width": SIZE}
    with wrapped_convolutions([pipe.unet, pipe.vae], tile_axes(tiling)):
        out = pipe(**prompt, **extra, num_inference_steps=steps, guidance_scale=7.0,
                   num_images_per_prompt=batch, output_type="np",
                   generator=torch.Generator().manual_seed(seed))
    return out.images


@pytest.fixture(scope="module")
def plain(atelier_home: Path) -> ModelStore:
    return _store(atelier_home)


@pytest.fixture(scope="module")
def accelerated(atelier_home: Path) -> tuple[ModelStore, Acceleration]:
    store = _store(atelier_home)
    return store, apply_accel(store.current.pipe, EAGER_LEVERS, model_name="tiny")


@pytest.mark.parametrize("tiling", ["none", "both"])
def test_levers_give_the_plain_pixels(plain, accelerated, tiling):
    store, accel = accelerated
    assert set(accel.applied) >= {SDPA, FUSE_QKV, CHANNELS_LAST, PROMPT_CACHE}
    unet = store.current.pipe.unet
    assert all(m.fused_projections for m in unet.modules() if isinstance(m, Attention))
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

    expected = _generate(plain, None, tiling)
    got = _generate(store, accel, tiling)
    assert got.shape == (BATCH, SIZE, SIZE, 3)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
    # the comparison means something: another seed gives other pixels
    assert np.abs(_generate(store, accel, tiling, seed=8) - expected).max() > 0.05


def test_tiling_still_wraps_with_levers_on(accelerated):
    store, accel = accelerated
    untiled = _generate(store, accel, "none")
    tiled = _generate(store, accel, "both")
    assert np.abs(untiled - tiled).max() > 0.01


def test_other_pipeline_kinds_share_the_levers(plain, accelerated):
    store, accel = accelerated
    img2img = store.pipeline("img2img")
    assert img2img.unet is store.current.pipe.unet
    np.testing.assert_allclose(_generate(store, accel, kind="img2img"),
                               _generate(plain, None, kind="img2img"), atol=TOLERANCE, rtol=0)


def test_compiled_modules_warm_up_and_match_plain_as_tiling_switches(plain, atelier_home):
    from backend.pipelines.generator import DiffusionGenerator

    compiled = CompileCounter()      # dynamo's capture and guards; shows each compile
    options = AccelOptions(fuse_qkv=True, compile_unet=True, compile_vae_decode=True,
                           compile_backend=compiled)
    store = ModelStore("cpu", torch.float32, atelier_home, [], accel=options)
    generator = DiffusionGenerator(store)
    accel = store.load("tiny").accel                  # the load runs the warm-up jobs
    assert {"compile_unet", "compile_vae_decode"} <= set(accel.applied)
    after_warm_up = len(compiled)
    assert after_warm_up > 0
    for tiling in ("none", "both", "none"):
        np.testing.assert_allclose(_generate(store, accel, tiling, steps=2, batch=1),
                                   _generate(plain, None, tiling, steps=2, batch=1),
                                   atol=TOLERANCE, rtol=0, err_msg=f"tiling={tiling}")
    assert len(compiled) == after_warm_up   # jobs reuse the graphs compiled at load
    assert generator.warm_up(store.current) == 2                  # untiled and tiled
    assert DiffusionGenerator(plain).warm_up(plain.current) == 0   # nothing compiled


def test_controlnet_levers_give_the_plain_pixels(plain, accelerated):
    store, accel = accelerated
    controlnet = store.controlnet("tiny-controlnet")
    assert accelerate_controlnet(controlnet, EAGER_LEVERS) == (SDPA, CHANNELS_LAST)
    assert controlnet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    depth = torch.linspace(0, 1, SIZE).repeat(1, 3, SIZE, 1)

    def run(s: ModelStore, prompt: dict) -> np.ndarray:
        pipe = s.pipeline("txt2img", controlnet="tiny-controlnet")
        return pipe(**prompt, image=depth, height=SIZE, width=SIZE, num_inference_steps=2,
                    guidance_scale=7.0, output_type="np",
                    generator=torch.Generator().manual_seed(3)).images

    fast_pipe = store.pipeline("txt2img", controlnet="tiny-controlnet")
    got = run(store, accel.prompt_kwargs(fast_pipe, PROMPT, NEGATIVE, guidance=True))
    expected = run(plain, {"prompt": PROMPT, "negative_prompt": NEGATIVE})
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_prompt_cache_reuses_and_evicts(accelerated):
    store, _ = accelerated
    accel = apply_accel(store.current.pipe, AccelOptions(sdpa=False, prompt_cache_size=2),
                        model_name="tiny")
    cache = accel.prompt_cache
    pipe = store.pipeline("txt2img")
    first = accel.prompt_kwargs(pipe, "a cat", None, guidance=True)
    again = accel.prompt_kwargs(pipe, "a cat", None, guidance=True)
    assert (cache.hits, cache.misses) == (1, 1)
    assert again["prompt_embeds"] is first["prompt_embeds"]
    assert set(first) == {"prompt_embeds", "negative_prompt_embeds"}
    # a different negative prompt or guidance setting is a different entry
    other = accel.prompt_kwargs(pipe, "a cat", "a dog", guidance=True)
    assert not torch.equal(other["negative_prompt_embeds"], first["negative_prompt_embeds"])
    assert set(accel.prompt_kwargs(pipe, "a cat", None, guidance=False)) == {"prompt_embeds"}
    assert len(cache) == 2 and cache.misses == 3
    accel.prompt_kwargs(pipe, "a cat", None, guidance=True)   # evicted: encoded again
    assert cache.misses == 4


def test_prompt_cache_on_sdxl_gives_the_plain_pixels(atelier_home):
    plain_store, fast_store = _store(atelier_home, "tiny-sdxl"), _store(atelier_home, "tiny-sdxl")
    accel = apply_accel(fast_store.current.pipe, EAGER_LEVERS, model_name="tiny-sdxl")
    kwargs = accel.prompt_kwargs(fast_store.current.pipe, PROMPT, NEGATIVE, guidance=True)
    assert {"pooled_prompt_embeds", "negative_pooled_prompt_embeds"} <= set(kwargs)
    np.testing.assert_allclose(_generate(fast_store, accel), _generate(plain_store, None),
                               atol=TOLERANCE, rtol=0)


def test_plain_options_change_nothing_and_gpu_levers_say_why_not(atelier_home):
    store = _store(atelier_home)
    assert apply_accel(store.current.pipe, AccelOptions.plain(), model_name="tiny").applied == ()
    cpu = AccelOptions.for_device("cpu")
    assert not (cpu.compile_unet or cpu.channels_last or cpu.cpu_offload)
    gpu = AccelOptions.for_device("cuda")
    assert gpu.compile_unet and gpu.channels_last and gpu.fuse_qkv
    low = AccelOptions.for_device("cuda", low_memory=True)
    assert low.cpu_offload and low.vae_tiling and not (low.fuse_qkv or low.compile_unet)

    accel = apply_accel(store.current.pipe, AccelOptions(cpu_offload=True, vae_tiling=True),
                        model_name="tiny", device="cpu")
    assert "GPU" in accel.skipped[CPU_OFFLOAD]
    assert VAE_TILING in accel.applied and store.current.pipe.vae.use_tiling


def test_bad_cache_size_is_refused():
    with pytest.raises(ValueError, match="prompt_cache_size"):
        AccelOptions(prompt_cache_size=-1)


def test_serve_compile_choices_map_to_the_levers():
    from backend.cli import _parser
    from backend.models.accel import _compile_settings

    assert not AccelOptions.for_choice("cpu").compile_unet            # auto: GPUs only
    auto = AccelOptions.for_choice("cuda")
    assert auto.compile_unet and auto.compile_vae_decode and auto.compile_mode == "default"
    assert not AccelOptions.for_choice("cuda", "off").compile_unet
    graphs = AccelOptions.for_choice("cpu", "reduce-overhead")          # a mode: any device
    assert graphs.compile_unet and graphs.compile_vae_decode
    assert _compile_settings(graphs) == {"mode": "reduce-overhead", "backend": "inductor"}
    # the VAE decoder, once per job, gets the mode without CUDA graphs
    assert _compile_settings(graphs, graphs=False) == {"mode": "default", "backend": "inductor"}
    autotuned = AccelOptions.for_choice("cuda", "max-autotune")
    assert _compile_settings(autotuned, graphs=False)["mode"] == "max-autotune-no-cudagraphs"
    assert _compile_settings(auto, graphs=False)["mode"] == "default"
    low = AccelOptions.for_choice("cuda", "max-autotune", low_memory=True)
    assert low.cpu_offload and not low.compile_unet                     # offload moves weights
    with pytest.raises(ValueError, match="compile_mode 'fastest'"):
        AccelOptions(compile_mode="fastest")

    assert _parser().parse_args(["serve"]).compile == "auto"
    assert _parser().parse_args(["serve", "--compile", "reduce-overhead"]).compile == "reduce-overhead"
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--compile", "fastest"])


def test_compiled_unet_gives_the_plain_pixels_with_an_adapter_and_step_caching(atelier_home):
    """Jobs on a compiled UNet give the uncompiled pixels and run the graphs compiled at
    load, whatever their sampler (integer or float timesteps), tiled or not, and with step
    caching (the deep-feature tap is part of those graphs). Only a T2I-Adapter's residuals,
    new inputs of the UNet, make one new variant, compiled once and not once per step."""
    from backend.pipelines.generator import DiffusionGenerator
    from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
    from protocol.messages import ControlSettings, DepthInput, GenerateRequest

    compiled = CompileCounter()
    options = AccelOptions(fuse_qkv=True, compile_unet=True, compile_backend=compiled)
    fast = ModelStore("cpu", torch.float32, atelier_home, [], accel=options)
    DiffusionGenerator(fast)          # serving the store, it warms up what the store loads
    fast.load("tiny")
    slow = ModelStore("cpu", torch.float32, atelier_home, [])
    slow.load("tiny")
    near = np.tile(np.linspace(0, 1, SIZE, dtype="<f4"), (SIZE, 1))
    depth = ImageFrame(FrameKind.UPLOAD, PixelFormat.FLOAT32, 0, SIZE, SIZE, new_id(), near.tobytes())
    base = GenerateRequest(prompt=PROMPT, width=SIZE, height=SIZE, steps=4, seed=3, scheduler="euler")
    adapted = dict(depth=DepthInput(upload=depth.id, convention="normalized"),
                   control=ControlSettings(model="tiny-adapter"))
    jobs = [dataclasses.replace(base, **changes) for changes in (
        dict(), dict(scheduler="euler_a"), dict(scheduler="ddim"),
        dict(scheduler="dpmpp_2m", tiling="both"),
        adapted, dict(adapted, seed=4, scheduler="ddim"),
        dict(cache_interval=2),
        dict(cache_interval=2, tiling="both"))]
    assert len(compiled) > 0          # the load warmed up
    for job in jobs:
        def run(store: ModelStore) -> np.ndarray:
            out = DiffusionGenerator(store).generate(job, {depth.id: depth}, lambda *a: None,
                                                     lambda: False)
            pixels = out.images[0].pixels
            return np.frombuffer(pixels.rgba, np.uint8).astype(int)

        before = len(compiled)
        got, expected = run(fast), run(slow)
        if job is jobs[4]:
            assert len(compiled) == before + 1, job    # the adapter's variant, once
        else:
            assert len(compiled) == before, job        # graphs compiled earlier
        assert np.abs(got - expected).max() <= 1, job        # 8-bit pixels: rounding at most


@pytest.mark.parametrize("sampler", ["ddim", "euler"])    # integer and float timesteps
def test_the_jobs_view_of_the_unet_changes_no_pixel(plain, sampler):
    """Jobs call the UNet through ``JobUNet`` (float32 timesteps of their own): exactly the
    latents of calling the UNet itself."""
    from backend.pipelines.schedulers import make_scheduler

    pipe = copy.copy(plain.pipeline("txt2img"))

    def latents() -> torch.Tensor:
        pipe.scheduler = make_scheduler(sampler, plain.current.pipe.scheduler.config)
        return pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=3, output_type="latent",
                    generator=torch.Generator().manual_seed(5)).images

    direct = latents()
    pipe.unet = JobUNet(plain.current.pipe.unet)
    assert torch.equal(latents(), direct)


def test_every_kind_of_job_runs_under_model_cpu_offload(atelier_home):
    """``--low-memory``'s model CPU offload: diffusers' accelerate hooks on the shared
    modules, which diffusers arms again on each job's copy of the pipeline after every call.
    Every kind of job (step caching's UNet view included) runs under them and gives the
    pixels it gives without. The execution device is the CPU here, so nothing moves, but
    the hooks run as on a GPU."""
    from backend.pipelines.generator import DiffusionGenerator
    from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
    from protocol.messages import ControlSettings, DepthInput, GenerateRequest

    plain, low = _store(atelier_home), _store(atelier_home)
    low.current.pipe.enable_model_cpu_offload(device="cpu")
    assert low.current.pipe._all_hooks

    def upload(fmt: PixelFormat, data: bytes) -> ImageFrame:
        return ImageFrame(FrameKind.UPLOAD, fmt, 0, SIZE, SIZE, new_id(), data)

    depth = upload(PixelFormat.FLOAT32, np.tile(np.linspace(0, 1, SIZE, dtype="<f4"), (SIZE, 1)).tobytes())
    init = upload(PixelFormat.RGBA8, bytes([90, 120, 60, 255]) * SIZE * SIZE)
    square = np.zeros((SIZE, SIZE), np.uint8)
    square[16:48, 16:48] = 255
    mask = upload(PixelFormat.GRAY8, square.tobytes())
    uploads = {frame.id: frame for frame in (depth, init, mask)}
    near = DepthInput(upload=depth.id, convention="normalized")
    base = GenerateRequest(prompt=PROMPT, width=SIZE, height=SIZE, steps=4, seed=3, scheduler="euler")
    jobs = [base, dataclasses.replace(base, cache_interval=2, tiling="both"),
            dataclasses.replace(base, depth=near, control=ControlSettings(model="tiny-adapter")),
            dataclasses.replace(base, depth=near),                           # the ControlNet
            dataclasses.replace(base, kind="img2img", init_image=init.id, strength=0.6),
            dataclasses.replace(base, kind="inpaint", init_image=init.id, mask=mask.id,
                                cache_interval=2),
            base]
    for job in jobs:
        images = [DiffusionGenerator(store).generate(job, uploads, lambda *a: None, lambda: False)
                  .images[0].pixels.rgba for store in (low, plain)]
        assert images[0] == images[1], job


def test_fp16_jobs_decode_with_the_vae_graph_compiled_at_load(atelier_home):
    """In fp16 (the GPU default) the SD VAE decodes in fp32 (``force_upcast``); the
    warm-up decodes the way jobs do, so their first decode compiles nothing either."""
    from backend.pipelines.generator import DiffusionGenerator
    from protocol.messages import GenerateRequest

    compiled = CompileCounter()
    options = AccelOptions(compile_unet=True, compile_vae_decode=True,
                           compile_backend=compiled)
    store = ModelStore("cpu", torch.float16, atelier_home, [], accel=options)
    DiffusionGenerator(store)
    assert store.load("tiny").pipe.vae.config.force_upcast
    after_load = len(compiled)
    assert after_load > 0
    for tiling in ("none", "both"):
        job = GenerateRequest(prompt=PROMPT, width=SIZE, height=SIZE, steps=2, seed=1, tiling=tiling)
        out = DiffusionGenerator(store).generate(job, {}, lambda *a: None, lambda: False)
        assert len(out.images) == 1
    assert len(compiled) == after_load
