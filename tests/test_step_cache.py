"""Step caching (backend/pipelines/step_cache.py): the shallow path is the UNet's own
arithmetic when the deep features are current, jobs run the whole UNet only every N-th
step, the shared model is never changed, and the field travels the protocol."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from backend.generation import GenerationOutput
from backend.models.deep_tap import DeepFeatureTap, install_deep_tap
from backend.models.store import ModelStore
from backend.pipelines.adapter import residual_shapes
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.step_cache import StepCachedUNet
from backend.pipelines.tiling import TileAxes, wrapped_convolutions
from protocol.client import AtelierClient
from protocol.codec import decode_message
from protocol.errors import ProtocolError
from protocol.events import JobDone
from protocol.messages import GenerateRequest

SIZE = 64
JOB = dict(prompt="a stone wall", width=SIZE, height=SIZE, steps=6, seed=5, scheduler="euler")


def _sd_shaped_unet() -> UNet2DConditionModel:
    """Cross-attention in the first down and last up block, as in SD1.5 (the tiny models'
    outer blocks have none)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32).eval()


def _tiny_unet(atelier_home, name: str) -> tuple[UNet2DConditionModel, DeepFeatureTap]:
    """A tiny model's UNet and the tap the store installed on it."""
    store = ModelStore("cpu", torch.float32, atelier_home, [], hf_cache=atelier_home / "no-hf")
    model = store.load(name)
    assert model.deep_tap is not None
    return model.pipe.unet, model.deep_tap


def _inputs(unet: UNet2DConditionModel, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    inputs = dict(sample=torch.randn(batch, 4, 8, 8, generator=g), timestep=torch.tensor(500),
                  encoder_hidden_states=torch.randn(batch, 7, unet.config.cross_attention_dim, generator=g))
    if unet.config.addition_embed_type == "text_time":      # SDXL's pooled text and size ids
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = dict(text_embeds=torch.randn(batch, pooled, generator=g),
                                           time_ids=torch.tensor([[64, 64, 0, 0, 64, 64]] * batch).float())
    return inputs


def _residuals(unet: UNet2DConditionModel, inputs: dict) -> dict:
    """ControlNet-like residuals for every skip connection and the mid block, shaped by
    running the UNet's own down path on ``inputs``."""
    skips: list[torch.Tensor] = []
    hooks = [unet.conv_in.register_forward_hook(lambda _m, _a, out: skips.append(out))]
    hooks += [block.register_forward_hook(lambda _m, _a, out: skips.extend(out[1]))
              for block in unet.down_blocks]
    try:
        with torch.no_grad():
            unet(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    g = torch.Generator().manual_seed(3)
    return dict(down_block_additional_residuals=tuple(torch.randn(s.shape, generator=g) * 0.5 for s in skips),
                mid_block_additional_residual=torch.randn(skips[-1].shape, generator=g) * 0.5)


@pytest.mark.parametrize("which", ["sd-shaped", "tiny", "tiny-sdxl"])
@pytest.mark.parametrize("conditioning", [None, "controlnet", "adapter"])
def test_the_shallow_path_is_the_unets_own_arithmetic(atelier_home, which, conditioning):
    """A cached step at the same inputs as the full step before it must give the full
    step's output: then the cut is exactly the UNet's forward, only shorter."""
    if which == "sd-shaped":
        unet = _sd_shaped_unet()
        tap = install_deep_tap(unet)
    else:
        unet, tap = _tiny_unet(atelier_home, which)
    step = 0
    cached = StepCachedUNet(unet, 2, lambda: (step, 10), tap)
    inputs = _inputs(unet)
    if conditioning == "controlnet":
        inputs.update(_residuals(unet, inputs))
    features: list[torch.Tensor] = []
    if conditioning == "adapter":
        g = torch.Generator().manual_seed(4)
        features = [torch.randn((1, *shape), generator=g) for shape in residual_shapes(unet.config, 8, 8)]

    def call(module) -> torch.Tensor:
        extra = {"down_intrablock_additional_residuals": list(features)} if features else {}
        with torch.no_grad():
            out = module(**inputs, **extra, return_dict=False)[0]
        return out

    full = call(cached)
    step = 1
    shallow = call(cached)
    reference = call(unet)
    assert (cached.full_steps, cached.cached_steps) == (1, 1)
    assert torch.allclose(full, reference, atol=1e-6)
    assert torch.allclose(shallow, reference, atol=1e-5)
    # and the deep features matter: other ones give another output
    cached._deep = cached._deep + 1.0
    assert not torch.allclose(call(cached), reference, atol=1e-3)


def test_attributes_fall_through_to_the_unet(atelier_home):
    unet, tap = _tiny_unet(atelier_home, "tiny")
    cached = StepCachedUNet(unet, 3, lambda: (0, 1), tap)
    assert cached.config is unet.config and cached.dtype == unet.dtype
    assert cached.conv_in is unet.conv_in
    # private state stays the UNet's own: accelerate looks for its offload hook this way
    unet._hf_hook = object()
    try:
        assert not hasattr(cached, "_hf_hook")
    finally:
        del unet._hf_hook
    with pytest.raises(ValueError, match="2 or more"):
        StepCachedUNet(unet, 1, lambda: (0, 1), tap)


def test_a_unet_without_the_tap_is_refused_on_the_first_full_step():
    unet = _sd_shaped_unet()
    cached = StepCachedUNet(unet, 2, lambda: (0, 10), DeepFeatureTap())   # not installed
    with torch.no_grad(), pytest.raises(RuntimeError, match="install_deep_tap"):
        cached(**_inputs(unet))


@pytest.fixture(scope="module")
def tiny(atelier_home):
    store = ModelStore("cpu", torch.float32, atelier_home, [], hf_cache=atelier_home / "no-hf")
    store.load("tiny")
    return store, DiffusionGenerator(store)


def _run(generator: DiffusionGenerator, job: GenerateRequest) -> GenerationOutput:
    return generator.generate(job, {}, lambda *a: None, lambda: False)


def _image(output: GenerationOutput) -> np.ndarray:
    pixels = output.images[0].pixels
    return np.frombuffer(pixels.rgba, np.uint8).reshape(pixels.height, pixels.width, 4).astype(int)


@pytest.mark.parametrize("interval", [2, 3])
def test_jobs_run_the_deep_blocks_every_nth_step_only(tiny, interval):
    store, generator = tiny
    unet = store.current.pipe.unet
    deep_calls = 0

    def count(*_):
        nonlocal deep_calls
        deep_calls += 1

    hook = unet.mid_block.register_forward_hook(count)
    try:
        cached = _image(_run(generator, GenerateRequest(**JOB, cache_interval=interval)))
    finally:
        hook.remove()
    assert deep_calls == math.ceil(JOB["steps"] / interval)
    plain = _image(_run(generator, GenerateRequest(**JOB)))
    other_seed = _image(_run(generator, GenerateRequest(**{**JOB, "seed": 6})))
    # a small change, far from a different picture
    assert 0 < np.abs(cached - plain).mean() < np.abs(other_seed - plain).mean() / 10
    # the shared pipelines keep the plain UNet
    assert type(store.pipeline("txt2img").unet) is UNet2DConditionModel
    assert store.pipeline("txt2img").unet is unet
    # and no deep features are held once a job is over
    assert store.current.deep_tap is not None and store.current.deep_tap.last is None


def test_cached_jobs_still_wrap_when_tiled(tiny):
    """Rolled noise gives the rolled image with caching on: the shallow path uses the same
    wrapped convolutions as the full one."""
    store, _ = tiny
    pipe = store.pipeline("txt2img")
    width, height, k = 96, 64, 2
    noise = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(2))

    def generate(latents: torch.Tensor) -> torch.Tensor:
        steps_done = 0

        def count(_p, index, _t, _tensors):
            nonlocal steps_done
            steps_done = index + 1
            return {}

        job_pipe = pipe.__class__.from_pipe(pipe)
        job_pipe.unet = StepCachedUNet(pipe.unet, 2, lambda: (steps_done, job_pipe.num_timesteps),
                                       store.current.deep_tap)
        with wrapped_convolutions([pipe.unet, pipe.vae], TileAxes(x=True, y=False)):
            images = job_pipe("a stone wall", latents=latents, num_inference_steps=4, width=width,
                              height=height, output_type="pt", callback_on_step_end=count).images
        assert job_pipe.unet.cached_steps == 2
        return images

    image, rolled = generate(noise), generate(torch.roll(noise, k, dims=3))
    assert (torch.roll(image, 8 * k, dims=3) - rolled).abs().max().item() < 1e-4


def test_cache_interval_is_checked_by_field():
    for bad, limit in ((0, "1"), (11, "10")):
        with pytest.raises(ProtocolError) as err:
            decode_message('{"type":"submit","job":{"cache_interval":%d}}' % bad)
        assert err.value.field == "job.cache_interval" and limit in err.value.message


def test_cached_job_over_the_daemon(daemon):
    job = GenerateRequest(**JOB, cache_interval=3, tiling="both")
    with AtelierClient(daemon.url, client_name="test_step_cache") as client:
        client.wait_connected()
        cached = client.run_job(job, timeout=120)
        plain = client.run_job(dataclasses.replace(job, cache_interval=1), timeout=120)
    assert isinstance(cached, JobDone) and isinstance(plain, JobDone)
    assert cached.result.params.cache_interval == 3
    assert cached.images[0].data != plain.images[0].data
