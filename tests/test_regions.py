"""Regions (per-area prompts, PROTOCOL.md 4.7): the blend weights, jobs on the tiny SD1.5
and SDXL models through the generator, the tiling wrap, the errors that name a region's
field, the extra cost per region, and a job over the websocket."""

from __future__ import annotations

import copy
import dataclasses
from typing import Optional

import numpy as np
import pytest
import torch

from backend.generation import GenerationOutput
from backend.limits import ServerLimits
from backend.models.accel import CPU_OFFLOAD
from backend.models.store import ModelStore
from backend.pipelines.asset_plan import plan_upscale
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.plan import ModelTraits, plan_generation
from backend.pipelines.regions import (PlannedRegion, RegionalUNet, fit_mask, region_passes,
                                       region_weights, with_regions)
from backend.pipelines.tiling import TileAxes, wrapped_convolutions
from benchmarks.regions import tiny_step_costs
from protocol.client import AtelierClient, make_upload
from protocol.errors import ErrorCode, ProtocolError
from protocol.events import JobDone
from protocol.frames import ImageFrame, PixelFormat
from protocol.messages import (REGIONS_MAX, ControlLayer, GenerateRequest, ReferenceImage, Region,
                               UpscaleSettings)

WIDTH, HEIGHT = 128, 64           # latents 16 x 8: room for two regions side by side
JOB = dict(prompt="a stone wall", width=WIDTH, height=HEIGHT, steps=4, seed=3, scheduler="euler")
APPLES, OCEAN = "red apples on a wooden table", "a blue ocean under white clouds"
NONE, X = TileAxes(False, False), TileAxes(True, False)


def _gray(mask: np.ndarray) -> ImageFrame:
    return make_upload(PixelFormat.GRAY8, mask.shape[1], mask.shape[0],
                       np.ascontiguousarray(mask, np.uint8).tobytes())


def _halves() -> tuple[np.ndarray, np.ndarray]:
    left = np.zeros((HEIGHT, WIDTH), np.uint8)
    left[:, :WIDTH // 2] = 255
    return left, 255 - left


def _run(generator: DiffusionGenerator, job: GenerateRequest, *uploads: ImageFrame,
         index: int = 0) -> np.ndarray:
    output: GenerationOutput = generator.generate(job, {u.id: u for u in uploads},
                                                  lambda *a: None, lambda: False)
    pixels = output.images[index].pixels
    return np.frombuffer(pixels.rgba, np.uint8).reshape(pixels.height, pixels.width, 4).astype(int)


def _regions(*pairs: tuple[ImageFrame, str], **extra) -> list[Region]:
    return [Region(mask=frame.id, prompt=prompt, **extra) for frame, prompt in pairs]


def _differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b)[..., :3].mean())


@pytest.fixture(scope="module")
def sd15(atelier_home):
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny")
    return store, DiffusionGenerator(store)


@pytest.fixture(scope="module")
def masks() -> dict[str, ImageFrame]:
    left, right = _halves()
    square = np.zeros((HEIGHT, WIDTH), np.uint8)
    square[16:48, 40:88] = 255
    return {"left": _gray(left), "right": _gray(right), "square": _gray(square),
            "full": _gray(np.full((HEIGHT, WIDTH), 255, np.uint8)),
            "empty": _gray(np.zeros((HEIGHT, WIDTH), np.uint8))}


# ------------------------------------------------------------------ weights

def test_weights_are_soft_at_borders_and_share_each_latent_pixel():
    left, right = (m.astype(np.float32) / 255 for m in _halves())
    weights = region_weights([left], (HEIGHT // 8, WIDTH // 8), NONE)
    base, region = weights
    assert weights.shape == (2, 8, 16) and np.array_equal(base + region, np.ones((8, 16)))
    row = region[4]
    # full strength far inside, none far outside, a ramp of four soft steps across the border
    assert np.all(row[:6] == 1.0) and np.all(row[10:] == 0.0)
    ramp = row[5:11]
    assert np.all(np.diff(ramp) < 0) and np.all((ramp[1:-1] > 0) & (ramp[1:-1] < 1))
    assert np.allclose(row[6:10], [15 / 16, 11 / 16, 5 / 16, 1 / 16])
    # two regions that tile the canvas leave the base nothing; overlapping ones share
    both = region_weights([left, right], (8, 16), NONE)
    assert np.all(both[0] == 0.0) and np.allclose(both[1] + both[2], 1.0)
    full = np.ones((HEIGHT, WIDTH), np.float32)
    shared = region_weights([full, full], (8, 16), NONE)
    assert np.all(shared[0] == 0.0) and np.all(shared[1:] == 0.5)
    # a soft mask value is a soft weight, the base takes the rest; full is exactly 1
    half = region_weights([np.full((HEIGHT, WIDTH), 128 / 255, np.float32)], (8, 16), NONE)
    assert np.allclose(half[1], 128 / 255) and np.allclose(half[0], 127 / 255)
    alone = region_weights([full], (8, 16), NONE)
    assert np.all(alone[0] == 0.0) and np.all(alone[1] == 1.0)


def test_weights_and_resized_masks_wrap_on_tiled_axes():
    mask = np.zeros((HEIGHT, WIDTH), np.float32)
    mask[:, :16] = 1.0                                 # against the left edge
    for axes, wraps in ((NONE, False), (X, True)):
        weights = region_weights([mask], (8, 16), axes)[1]
        assert (weights[:, -1] > 0).all() == wraps      # reaches round to the right edge
        rolled = region_weights([np.roll(mask, 24, axis=1)], (8, 16), axes)[1]
        assert np.allclose(np.roll(weights, 3, axis=1), rolled) == wraps
    # a mask of another size is resized as a tile of a wrapping texture
    small = np.zeros((32, 64), np.uint8)
    small[8:20, 0:10] = 255
    for axes, wraps in ((NONE, False), (X, True)):
        big = fit_mask(small, WIDTH, HEIGHT, axes)
        assert big.shape == (HEIGHT, WIDTH) and (big[:, -1] > 0).any() == wraps
        rolled = fit_mask(np.roll(small, 4, axis=1), WIDTH, HEIGHT, axes)
        assert np.array_equal(np.roll(big, 8, axis=1), rolled) == wraps
    assert fit_mask(np.full((32, 64), 255, np.uint8), WIDTH, HEIGHT, X).min() == 1.0


# ------------------------------------------------------------------ jobs

def test_an_empty_region_is_no_region_and_a_full_one_is_its_prompt(sd15, masks):
    _, generator = sd15
    plain = _run(generator, GenerateRequest(**JOB))
    empty = masks["empty"]
    assert np.array_equal(_run(generator, GenerateRequest(**JOB, regions=_regions((empty, APPLES))),
                               empty), plain)
    full = masks["full"]
    apples = _run(generator, GenerateRequest(**{**JOB, "prompt": APPLES}))
    assert np.array_equal(
        _run(generator, GenerateRequest(**JOB, regions=_regions((full, APPLES))), full), apples)
    # in a batch, image by image
    batch = dict(JOB, batch_size=2, seed=2)
    assert np.array_equal(
        _run(generator, GenerateRequest(**batch, regions=_regions((full, APPLES))), full, index=1),
        _run(generator, GenerateRequest(**{**batch, "prompt": APPLES}), index=1))
    # a region's own negative prompt is its unconditional pass
    negative = dict(negative_prompt="blurry")
    assert np.array_equal(
        _run(generator, GenerateRequest(**JOB, regions=_regions((full, APPLES), **negative)), full),
        _run(generator, GenerateRequest(**{**JOB, "prompt": APPLES, **negative})))


def test_a_region_changes_the_pixels_inside_its_mask(sd15, masks):
    _, generator = sd15
    plain = _run(generator, GenerateRequest(**JOB))
    square = masks["square"]
    job = GenerateRequest(**JOB, regions=_regions((square, APPLES)))
    with_region = _run(generator, job, square)
    inside, outside = np.s_[16:48, 40:88], np.s_[:, :16]
    assert _differs(with_region[inside], plain[inside]) > 1.0
    # the far side of the canvas sees the region only through the UNet's receptive field
    assert _differs(with_region[outside], plain[outside]) < \
        _differs(with_region[inside], plain[inside]) / 4


def test_each_region_matches_its_prompt_where_the_other_has_no_weight(sd15, masks):
    """Left half apples, right half ocean. Where the other region's weight is 0 (six latent
    columns from the far edge: pixels 0-47 and 80-127) each step's prediction is exactly
    that region's, but the UNet sees the whole canvas, so the pixels differ a little from
    the job with that prompt alone: on the tiny model, seed 3, a mean of 0.39 / 0.33 levels
    (max 7 / 4, 99% within 2), a tenth of the difference the other prompt makes there
    (3.85 / 3.17); over seeds 3-6 the ratio is 0.09-0.14."""
    _, generator = sd15
    left, right = masks["left"], masks["right"]
    two = _run(generator, GenerateRequest(**JOB, regions=_regions((left, APPLES), (right, OCEAN))),
               left, right)
    apples = _run(generator, GenerateRequest(**{**JOB, "prompt": APPLES}))
    ocean = _run(generator, GenerateRequest(**{**JOB, "prompt": OCEAN}))
    weights = region_weights([m.astype(np.float32) / 255 for m in _halves()], (8, 16), NONE)
    assert np.all(weights[2][:, :6] == 0) and np.all(weights[1][:, 10:] == 0)
    for zone, own, other in ((np.s_[:, :48], apples, ocean), (np.s_[:, 80:], ocean, apples)):
        error, contrast = _differs(two[zone], own[zone]), _differs(other[zone], own[zone])
        assert contrast > 1.0
        assert error < contrast / 4, (error, contrast)


def test_regions_with_img2img_inpaint_controls_adapters_tiling_and_step_cache(sd15, masks):
    _, generator = sd15
    full, square = masks["full"], masks["square"]
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    init = make_upload(PixelFormat.RGBA8, WIDTH, HEIGHT, rgba.tobytes())
    img2img = dict(JOB, kind="img2img", init_image=init.id, strength=0.75)
    assert np.array_equal(
        _run(generator, GenerateRequest(**img2img, regions=_regions((full, APPLES))), init, full),
        _run(generator, GenerateRequest(**{**img2img, "prompt": APPLES}), init))
    # inpaint: pixels the inpaint mask leaves alone stay as they were
    hole = np.zeros((HEIGHT, WIDTH), np.uint8)
    hole[8:56, 24:104] = 255
    hole_frame = _gray(hole)
    inpaint = GenerateRequest(**JOB, kind="inpaint", init_image=init.id, mask=hole_frame.id,
                              regions=_regions((square, APPLES)))
    after = _run(generator, inpaint, init, hole_frame, square)
    assert np.array_equal(after[hole == 0], rgba[hole == 0].astype(int))
    plain_inpaint = _run(generator, dataclasses.replace(inpaint, regions=[]), init, hole_frame)
    assert _differs(after[16:48, 40:88], plain_inpaint[16:48, 40:88]) > 1.0
    # a ControlNet's residuals steer every region's pass
    control = ControlLayer(kind="canny", image=init.id, preprocess=True)
    regional = GenerateRequest(**JOB, regions=_regions((square, APPLES)))
    controlled = _run(generator, dataclasses.replace(regional, controls=[control]), square, init)
    assert _differs(controlled, _run(generator, regional, square)) > 1.0
    # a T2I-Adapter's features reach every pass: a full region is still its prompt
    adapter = [ControlLayer(kind="depth", image=init.id, model="tiny-adapter")]
    assert np.array_equal(
        _run(generator, GenerateRequest(**JOB, controls=adapter, regions=_regions((full, APPLES))),
             init, full),
        _run(generator, GenerateRequest(**{**JOB, "prompt": APPLES}, controls=adapter), init))
    # tiled jobs run with wrapped regions; step caching keeps full regions exact
    tiled = _run(generator, dataclasses.replace(regional, tiling="x"), square)
    assert tiled.shape == (HEIGHT, WIDTH, 4)
    cached = dict(JOB, cache_interval=2, steps=6)
    assert np.array_equal(
        _run(generator, GenerateRequest(**cached, regions=_regions((full, APPLES))), full),
        _run(generator, GenerateRequest(**{**cached, "prompt": APPLES})))


def test_make_seamless_rolls_region_masks_with_the_texture(sd15):
    """make_seamless repaints the wrap edge of the texture rolled by half: a region against
    the left edge is rolled with it and steers the repainted seam."""
    _, generator = sd15
    rgba = np.random.default_rng(6).integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    init = make_upload(PixelFormat.RGBA8, WIDTH, HEIGHT, rgba.tobytes())
    edge = np.zeros((HEIGHT, WIDTH), np.uint8)
    edge[:, :24] = 255
    mask = _gray(edge)
    job = GenerateRequest(**{**JOB, "kind": "make_seamless", "tiling": "x"}, init_image=init.id,
                          regions=_regions((mask, APPLES)))
    uploads = {init.id: init, mask.id: mask}
    plan = plan_generation(job, uploads, ServerLimits(), ModelTraits(), fresh_seed=0)
    assert plan.offset == (WIDTH // 2, 0)
    assert np.array_equal(plan.regions[0].mask, np.roll(edge, WIDTH // 2, axis=1) / np.float32(255))
    seam = np.s_[:, list(range(0, 8)) + list(range(WIDTH - 8, WIDTH))]
    steered = _run(generator, job, init, mask)
    plain = _run(generator, dataclasses.replace(job, regions=[]), init)
    assert _differs(steered[seam], plain[seam]) > 1.0
    middle = np.s_[:, 40:88]                     # far from the seam: the texture as it was
    assert np.array_equal(steered[middle], plain[middle])


def test_rolled_noise_and_rolled_masks_give_the_rolled_image_on_tiled_axes(sd15):
    """The regional UNet in a real pipeline, as test_tiling checks the plain one: with
    the region's mask rolled along with the noise, the image rolls exactly when the
    weights wrap, and not when they are made as for an untiled job."""
    store, _ = sd15
    pipe = store.current.pipe
    job = GenerateRequest(**JOB)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[8:40, 96:128] = 255                     # against the right edge
    noise = torch.randn(1, 4, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(2))
    k = 2                                         # latent pixels: a multiple of the UNet's stride

    def image(latents: torch.Tensor, region_mask: np.ndarray, weight_axes: TileAxes):
        region = PlannedRegion("job.regions[0]", APPLES, None, region_mask.astype(np.float32) / 255)
        weights = region_weights([region.mask], (HEIGHT // 8, WIDTH // 8), weight_axes)
        job_pipe = copy.copy(pipe)
        passes = region_passes(pipe, job, [region], weights, guided=True)
        job_pipe.unet = RegionalUNet(pipe.unet, passes, guided=True)
        with wrapped_convolutions([job_pipe.unet, job_pipe.vae], X):
            return job_pipe(job.prompt, latents=latents, num_inference_steps=3, width=WIDTH,
                            height=HEIGHT, output_type="pt").images

    def roll_error(weight_axes: TileAxes) -> float:
        first = image(noise, mask, weight_axes)
        rolled = image(torch.roll(noise, k, dims=3), np.roll(mask, 8 * k, axis=1), weight_axes)
        return (torch.roll(first, 8 * k, dims=3) - rolled).abs().max().item()

    assert roll_error(X) < 1e-4
    assert roll_error(NONE) > 1e-3


def test_reference_images_reach_every_region_pass(atelier_home, reference_models_dir):
    """An IP-Adapter's image embeddings ride with each pass: a full region with a
    reference is the job with the region's prompt and that reference, byte for byte."""
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[reference_models_dir],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny")
    generator = DiffusionGenerator(store)
    rgba = np.random.default_rng(1).integers(0, 256, (40, 48, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    picture = make_upload(PixelFormat.RGBA8, 48, 40, rgba.tobytes())
    full = _gray(np.full((HEIGHT, WIDTH), 255, np.uint8))
    with_reference = dict(JOB, references=[ReferenceImage(image=picture.id, weight=0.8,
                                                          model="tiny-ip-adapter_sd15")])
    regional = _run(generator, GenerateRequest(**with_reference, regions=_regions((full, APPLES))),
                    picture, full)
    assert np.array_equal(regional, _run(generator, GenerateRequest(
        **{**with_reference, "prompt": APPLES}), picture))
    unreferenced = _run(generator, GenerateRequest(**JOB, regions=_regions((full, APPLES))), full)
    assert _differs(regional, unreferenced) > 1.0


def test_sdxl_regions_use_each_prompts_pooled_embedding(atelier_home):
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny-sdxl")
    generator = DiffusionGenerator(store)
    left, right = (_gray(m) for m in _halves())
    full = _gray(np.full((HEIGHT, WIDTH), 255, np.uint8))
    apples = _run(generator, GenerateRequest(**{**JOB, "prompt": APPLES}))
    assert np.array_equal(
        _run(generator, GenerateRequest(**JOB, regions=_regions((full, APPLES))), full), apples)
    ocean = _run(generator, GenerateRequest(**{**JOB, "prompt": OCEAN}))
    two = _run(generator, GenerateRequest(**JOB, regions=_regions((left, APPLES), (right, OCEAN))),
               left, right)
    zone = np.s_[:, :48]
    assert _differs(two[zone], apples[zone]) < _differs(ocean[zone], apples[zone]) / 4


# ------------------------------------------------------------------ errors and cost

def test_region_errors_name_the_field(sd15, masks):
    _, generator = sd15
    left = masks["left"]
    rgba = make_upload(PixelFormat.RGBA8, WIDTH, HEIGHT, bytes(WIDTH * HEIGHT * 4))
    uploads = {left.id: left, rgba.id: rgba}

    def refused(job: GenerateRequest) -> ProtocolError:
        with pytest.raises(ProtocolError) as err:
            generator.check(job, uploads)
        return err.value

    err = refused(GenerateRequest(**JOB, regions=[Region(mask=left.id), Region(mask="0" * 32)]))
    assert (err.code, err.field) == (ErrorCode.UNKNOWN_UPLOAD, "job.regions[1].mask")
    err = refused(GenerateRequest(**JOB, regions=[Region(mask=rgba.id)]))
    assert (err.code, err.field) == (ErrorCode.INVALID_FIELD, "job.regions[0].mask")
    assert "gray8 or png" in err.message
    tagged = Region(mask=left.id, prompt="<lora:ink:0.5> a sky")
    err = refused(GenerateRequest(**JOB, regions=[tagged]))
    assert (err.code, err.field) == (ErrorCode.INVALID_FIELD, "job.regions[0].prompt")
    err = refused(GenerateRequest(**JOB, regions=[Region(mask=left.id)] * (REGIONS_MAX + 1)))
    assert (err.code, err.field) == (ErrorCode.LIMIT_EXCEEDED, "job.regions")
    assert str(REGIONS_MAX) in err.message
    err = refused(GenerateRequest(kind="preprocess", width=WIDTH, height=HEIGHT,
                                  controls=[ControlLayer(kind="canny", image=left.id,
                                                         preprocess=True)],
                                  regions=[Region(mask=left.id)]))
    assert (err.code, err.field) == (ErrorCode.INVALID_FIELD, "job.regions")
    with pytest.raises(ProtocolError) as upscale:     # the asset kinds take none
        plan_upscale(GenerateRequest(kind="upscale", init_image=left.id, width=WIDTH, height=HEIGHT,
                                     upscale=UpscaleSettings(), regions=[Region(mask=left.id)]),
                     uploads, ServerLimits(), ModelTraits(), fresh_seed=0)
    assert (upscale.value.code, upscale.value.field) == (ErrorCode.INVALID_FIELD, "job.regions")


def test_each_region_adds_one_conditional_pass_per_step(sd15, atelier_home):
    """The FLOPs of a step (counted as benchmarks/controls.py counts them): under
    classifier-free guidance a plain step is two UNet passes and each region adds one
    (benchmarks/regions.py, run briefly here). A region with a negative prompt of its own
    adds an unconditional pass too; without guidance there are only conditional ones."""
    costs = tiny_step_costs(atelier_home, repeat=1, side=64, steps=2)
    assert {row: round(f["flop_relative"], 2) for row, f in costs.items()} == {
        "0 regions": 1.0, "1 regions": 1.5, "2 regions": 2.0, "4 regions": 3.0}
    store, _ = sd15
    pipe, job = store.current.pipe, GenerateRequest(**JOB)
    square = np.zeros((HEIGHT, WIDTH), np.float32)
    square[16:48, 40:88] = 1.0

    def halves(negative: Optional[str], guided: bool = True) -> list[str]:
        region = PlannedRegion("job.regions[0]", APPLES, negative, square)
        weights = region_weights([square], (HEIGHT // 8, WIDTH // 8), NONE)
        return [p.half for p in region_passes(pipe, job, [region], weights, guided)]

    assert halves(None) == halves("") == ["uncond", "cond", "cond"]     # "" is the job's
    assert halves("blurry") == ["uncond", "uncond", "cond", "cond"]
    assert halves(None, guided=False) == ["cond", "cond"]


def test_low_memory_mode_runs_a_guided_steps_worth_of_passes_per_call(sd15, masks):
    """With CPU offload (a GPU's low-memory mode, given here as the model's applied
    levers) four passes go through the UNet two at a time, with the same predictions;
    step caching is refused there, naming the field."""
    store, _ = sd15
    model = store.current
    low = dataclasses.replace(model, accel=dataclasses.replace(
        model.accel, applied=(*model.accel.applied, CPU_OFFLOAD)))
    left, square = masks["left"], masks["square"]
    job = GenerateRequest(**JOB, regions=_regions((left, APPLES), (square, OCEAN)))
    uploads = {left.id: left, square.id: square}
    plan = plan_generation(job, uploads, ServerLimits(), ModelTraits(), fresh_seed=0)
    work = [region.mask for region in plan.regions]
    unet = model.pipe.unet
    chunked = with_regions(unet, model.pipe, low, plan, work)
    whole = with_regions(unet, model.pipe, model, plan, work)
    assert len(whole.passes) == 4 and whole.passes_per_call == 4 and chunked.passes_per_call == 2
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, HEIGHT // 8, WIDTH // 8, generator=generator)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    rows: list[int] = []
    hook = unet.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            a = chunked(sample, torch.tensor(500.0), encoder_hidden_states=text).sample
            b = whole(sample, torch.tensor(500.0), encoder_hidden_states=text).sample
    finally:
        hook.remove()
    assert rows == [2, 2, 4]
    assert torch.allclose(a, b, atol=1e-5)
    cached = plan_generation(dataclasses.replace(job, cache_interval=2), uploads, ServerLimits(),
                             ModelTraits(), fresh_seed=0)
    with pytest.raises(ProtocolError) as err:
        with_regions(unet, model.pipe, low, cached, work)
    assert (err.value.code, err.value.field) == (ErrorCode.UNSUPPORTED, "job.cache_interval")


# ------------------------------------------------------------------ over the websocket

def test_a_job_with_regions_over_the_websocket(daemon):
    left, right = _halves()
    # one GRAY8 mask at the job's size, one at half the size (resized by the daemon)
    left_frame = make_upload(PixelFormat.GRAY8, WIDTH, HEIGHT, left.tobytes())
    small = np.ascontiguousarray(right[::2, ::2])
    right_frame = make_upload(PixelFormat.GRAY8, WIDTH // 2, HEIGHT // 2, small.tobytes())
    job = GenerateRequest(**JOB, regions=[Region(mask=left_frame.id, prompt=APPLES),
                                          Region(mask=right_frame.id, prompt=OCEAN,
                                                 negative_prompt="blurry")])
    with AtelierClient(daemon.url, client_name="test_regions") as client:
        client.wait_connected()
        assert "regions" in client.welcome.capabilities
        done = client.run_job(job, [left_frame, right_frame], timeout=120)
        assert isinstance(done, JobDone), done
        assert done.result.params.regions == job.regions
        assert (done.images[0].width, done.images[0].height) == (WIDTH, HEIGHT)
        with pytest.raises(ProtocolError) as err:
            client.run_job(job, [left_frame], timeout=120)     # the second mask not sent
        assert (err.value.code, err.value.field) == ("unknown_upload", "job.regions[1].mask")
