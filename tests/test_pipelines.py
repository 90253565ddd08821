"""DiffusionGenerator on the tiny random-weight models, loaded through the real model store.

64x64 images and 2-5 steps keep each job well under a second on a CPU.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from backend.generation import GenerationOutput, JobCancelled, Pixels
from backend.models.store import ModelStore
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.masks import prepare_mask
from backend.pipelines.pixels import pixels_to_array
from models_support import CompileCounter
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import SCHEDULERS, DepthInput, GenerateRequest

SIZE = 64


def _store(home: Path) -> ModelStore:
    return ModelStore("cpu", torch.float32, home, search_dirs=[], hf_cache=home / "no-hf-cache")


@pytest.fixture(scope="module")
def store(atelier_home: Path) -> ModelStore:
    store = _store(atelier_home)
    store.load("tiny")
    return store


@pytest.fixture(scope="module")
def generator(store: ModelStore) -> DiffusionGenerator:
    return DiffusionGenerator(store)


def upload_rgba(width: int = SIZE, height: int = SIZE, seed: int = 0, alpha: bool = False) -> ImageFrame:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    if not alpha:
        pixels[..., 3] = 255
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, width, height, new_id(), pixels.tobytes())


def upload_mask(mask: np.ndarray) -> ImageFrame:
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, mask.shape[1], mask.shape[0],
                      new_id(), mask.astype(np.uint8).tobytes())


class Recorder:
    """A progress sink that remembers every call, and a cancel switch for after step k."""

    def __init__(self, cancel_after: Optional[int] = None):
        self.steps: list[tuple[int, int]] = []
        self.previews: list[tuple[int, Pixels]] = []
        self.cancel_after = cancel_after

    def __call__(self, step: int, total: int, preview: Optional[Pixels]) -> None:
        self.steps.append((step, total))
        if preview is not None:
            self.previews.append((step, preview))

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.steps) >= self.cancel_after


def run(generator: DiffusionGenerator, job: GenerateRequest, *uploads: ImageFrame,
        recorder: Optional[Recorder] = None) -> GenerationOutput:
    recorder = recorder or Recorder()
    return generator.generate(job, {u.id: u for u in uploads}, recorder, recorder.cancelled)


def txt2img(**changes) -> GenerateRequest:
    return GenerateRequest(**{"prompt": "a red brick wall", "width": SIZE, "height": SIZE,
                              "steps": 3, "seed": 7, "scheduler": "euler", **changes})


def arrays(output: GenerationOutput) -> list[np.ndarray]:
    return [pixels_to_array(image.pixels) for image in output.images]


def unchanged_outside(result: np.ndarray, init: np.ndarray, mask: np.ndarray, reach: int) -> None:
    """Every pixel farther than ``reach`` (Chebyshev) from the painted mask is byte-identical;
    some pixel inside the mask did change."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
    near = np.zeros(mask.shape, bool)
    for y, x in zip(ys, xs):
        near |= (np.abs(yy - y) <= reach) & (np.abs(xx - x) <= reach)
    assert np.array_equal(result[~near], init[~near])
    assert np.any(result[mask > 0] != init[mask > 0])


# ------------------------------------------------------------------ the three kinds

def test_txt2img_makes_opaque_images_of_the_asked_size(generator):
    output = run(generator, txt2img(width=64, height=48, batch_size=2))
    assert [(i.pixels.width, i.pixels.height, i.seed) for i in output.images] == [(64, 48, 7), (64, 48, 8)]
    first = arrays(output)[0]
    assert np.all(first[..., 3] == 255) and first[..., :3].std() > 1
    assert output.model == "tiny" and output.params.model == "tiny"
    assert (output.params.width, output.params.height, output.params.seed) == (64, 48, 7)
    assert output.tiling == "none"


def test_same_seed_same_bytes_and_other_seeds_differ(generator):
    first, again = arrays(run(generator, txt2img(scheduler="euler_a")))[0], \
        arrays(run(generator, txt2img(scheduler="euler_a")))[0]
    other = arrays(run(generator, txt2img(scheduler="euler_a", seed=8)))[0]
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_random_seed_is_reported_and_reproduces(generator):
    output = run(generator, txt2img(seed=None))
    seed = output.images[0].seed
    assert output.params.seed == seed
    again = run(generator, txt2img(seed=seed))
    assert arrays(output)[0].tobytes() == arrays(again)[0].tobytes()


@pytest.mark.parametrize("kind", ["txt2img", "img2img", "inpaint"])
def test_batch_item_i_equals_a_single_job_with_seed_plus_i(generator, kind):
    init = upload_rgba(seed=3)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[20:40, 24:44] = 255
    mask_frame = upload_mask(mask)
    extra = {"img2img": dict(init_image=init.id, strength=0.7, steps=4),
             "inpaint": dict(init_image=init.id, mask=mask_frame.id, strength=1.0)}.get(kind, {})
    job = txt2img(kind=kind, scheduler="euler_a", seed=100, **extra)
    batch = run(generator, GenerateRequest(**{**job.__dict__, "batch_size": 3}), init, mask_frame)
    assert [image.seed for image in batch.images] == [100, 101, 102]
    for index, image in enumerate(arrays(batch)):
        single = run(generator, GenerateRequest(**{**job.__dict__, "seed": 100 + index}), init, mask_frame)
        diff = np.abs(image.astype(int) - arrays(single)[0])
        # Same noise, same schedule; a batched UNet sums floats in another order, so a rare
        # pixel may round to the neighbouring byte.
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert arrays(batch)[0].tobytes() != arrays(batch)[1].tobytes()


def test_img2img_follows_strength(generator):
    init = upload_rgba(seed=4)
    source = pixels_to_array(Pixels(SIZE, SIZE, init.data))
    light, heavy = Recorder(), Recorder()
    gentle = run(generator, txt2img(kind="img2img", init_image=init.id, steps=10, strength=0.3),
                 init, recorder=light)
    strong = run(generator, txt2img(kind="img2img", init_image=init.id, steps=10, strength=1.0),
                 init, recorder=heavy)
    assert light.steps[-1] == (3, 3) and heavy.steps[-1] == (10, 10)
    gentle_error = np.abs(arrays(gentle)[0].astype(int) - source).mean()
    strong_error = np.abs(arrays(strong)[0].astype(int) - source).mean()
    assert gentle_error < strong_error


def test_img2img_keeps_the_init_size_it_was_given(generator):
    init = upload_rgba(48, 32, seed=5)
    output = run(generator, txt2img(kind="img2img", init_image=init.id, width=48, height=32), init)
    assert (output.images[0].pixels.width, output.images[0].pixels.height) == (48, 32)


# ------------------------------------------------------------------ inpaint

@pytest.mark.parametrize("box, grow, feather, padding", [
    ((20, 40, 24, 44), 0, 0, 8),      # middle of the image, context cropped
    ((20, 40, 24, 44), 3, 6, 4),      # grown and feathered
    ((0, 6, 50, 64), 2, 5, 16),       # touching the top and right edges
    ((30, 34, 30, 34), 0, 3, 4),      # a 4x4 hole, context scaled up to the model's size
])
def test_inpaint_leaves_everything_outside_the_mask_byte_identical(generator, box, grow, feather, padding):
    init = upload_rgba(seed=6, alpha=True)
    source = pixels_to_array(Pixels(SIZE, SIZE, init.data))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    top, bottom, left, right = box
    mask[top:bottom, left:right] = 255
    mask_frame = upload_mask(mask)
    output = run(generator, txt2img(kind="inpaint", init_image=init.id, mask=mask_frame.id,
                                    mask_grow=grow, mask_feather=feather, context_padding=padding,
                                    strength=1.0, batch_size=2), init, mask_frame)
    for result in arrays(output):
        unchanged_outside(result, source, mask, grow + math.ceil(feather / 2))
        full = prepare_mask(mask, grow, feather) == 1.0
        assert np.all(result[full, 3] == 255)        # repainted pixels are opaque


def test_inpaint_with_a_soft_gray_mask_blends(generator):
    init = upload_rgba(seed=8)
    source = pixels_to_array(Pixels(SIZE, SIZE, init.data))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    mask[16:48, 40:48] = 100            # a half-strength band keeps part of the original
    mask_frame = upload_mask(mask)
    result = arrays(run(generator, txt2img(kind="inpaint", init_image=init.id, mask=mask_frame.id,
                                           strength=1.0), init, mask_frame))[0]
    unchanged_outside(result, source, mask, 0)
    band = np.abs(result[16:48, 40:48, :3].astype(int) - source[16:48, 40:48, :3]).mean()
    full = np.abs(result[16:48, 16:40, :3].astype(int) - source[16:48, 16:40, :3]).mean()
    assert 0 < band < full


@pytest.fixture(scope="module")
def inpaint_folder(store: ModelStore, tmp_path_factory) -> Path:
    """The tiny model with a 9-channel (inpaint) UNet, saved as a diffusers folder; the
    real loader, given its path, sees an inpaint model."""
    folder = tmp_path_factory.mktemp("inpaint-model") / "tiny-inpaint"
    shutil.copytree(store.load("tiny").source.path, folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**config, "in_channels": 9})
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def inpaint_generator(atelier_home: Path, inpaint_folder: Path) -> DiffusionGenerator:
    inpaint_store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                               hf_cache=atelier_home / "no-hf-cache",
                               allowed_paths=[inpaint_folder])   # as if named on serve's command line
    model = inpaint_store.load(str(inpaint_folder))
    assert model.family == "sd15_inpaint" and model.pipe.unet.config.in_channels == 9
    return DiffusionGenerator(inpaint_store)


def test_nine_channel_inpaint_model(inpaint_generator):
    init = upload_rgba(seed=9)
    source = pixels_to_array(Pixels(SIZE, SIZE, init.data))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[40:64, 0:20] = 255
    mask_frame = upload_mask(mask)
    job = txt2img(kind="inpaint", init_image=init.id, mask=mask_frame.id, mask_feather=4,
                  strength=1.0, scheduler="dpmpp_2m")
    first, again = (arrays(run(inpaint_generator, job, init, mask_frame))[0] for _ in range(2))
    unchanged_outside(first, source, mask, 2)
    assert first.tobytes() == again.tobytes()
    with pytest.raises(ProtocolError) as info:
        run(inpaint_generator, txt2img())
    assert info.value.code == ErrorCode.UNSUPPORTED



@pytest.mark.parametrize("which", ["inpaint", "tiny-depth"])
def test_compiled_inpaint_and_depth_models_warm_up_with_jobs_of_their_kind(atelier_home,
                                                                          inpaint_folder, which):
    """An inpainting model and SD2-depth only run their own kind of job. A compiled one
    warms up with such jobs at load (txt2img warm-up calls made their load fail), and a
    user's job of that kind then compiles nothing new."""
    from backend.models.accel import AccelOptions

    compiled = CompileCounter()
    options = AccelOptions(compile_unet=True, compile_vae_decode=True,
                           compile_backend=compiled)
    compiled_store = ModelStore("cpu", torch.float32, atelier_home, [],
                                hf_cache=atelier_home / "no-hf-cache", accel=options,
                                allowed_paths=[inpaint_folder])
    generator = DiffusionGenerator(compiled_store)
    model = compiled_store.load(str(inpaint_folder) if which == "inpaint" else which)
    assert model.family == ("sd15_inpaint" if which == "inpaint" else "sd2_depth")
    after_load = len(compiled)
    assert after_load > 0
    init = upload_rgba(seed=4)
    if which == "inpaint":
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[8:40, 8:56] = 255
        mask_frame = upload_mask(mask)
        job = txt2img(kind="inpaint", init_image=init.id, mask=mask_frame.id, strength=1.0)
        uploads = (init, mask_frame)
    else:
        depth = ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, SIZE, SIZE, new_id(),
                           bytes(range(SIZE)) * SIZE)
        job = txt2img(depth=DepthInput(upload=depth.id, convention="normalized"))
        uploads = (depth,)
    assert len(run(generator, job, *uploads).images) == 1
    assert len(compiled) == after_load


# ------------------------------------------------------------------ progress, previews, cancel

class UNetCalls:
    """Counts UNet forward passes through a torch forward hook."""

    def __init__(self, store: ModelStore):
        self.count = 0
        self.handle = store.current.pipe.unet.register_forward_hook(self._seen)

    def _seen(self, *_args) -> None:
        self.count += 1

    def __enter__(self) -> "UNetCalls":
        return self

    def __exit__(self, *_exc) -> None:
        self.handle.remove()


def test_progress_reports_every_step(generator, store):
    recorder = Recorder()
    with UNetCalls(store) as calls:
        run(generator, txt2img(steps=4), recorder=recorder)
    assert recorder.steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert calls.count == 4 and recorder.previews == []


def test_cancel_after_step_k_stops_the_sampler(generator, store):
    recorder = Recorder(cancel_after=2)
    with UNetCalls(store) as calls, pytest.raises(JobCancelled):
        run(generator, txt2img(steps=8), recorder=recorder)
    assert recorder.steps == [(1, 8), (2, 8)]
    assert calls.count == 2    # no UNet call after the step at which cancel came


def test_cancel_before_start_runs_nothing(generator, store):
    recorder = Recorder(cancel_after=0)
    with UNetCalls(store) as calls, pytest.raises(JobCancelled):
        run(generator, txt2img(), recorder=recorder)
    assert calls.count == 0 and recorder.steps == []


def test_cancelled_inpaint_job_does_not_change_the_next_one(generator):
    init = upload_rgba(seed=10)
    mask_frame = upload_mask(np.pad(np.full((16, 16), 255), 24))
    job = txt2img(kind="inpaint", init_image=init.id, mask=mask_frame.id, steps=4, strength=1.0)
    before = arrays(run(generator, job, init, mask_frame))[0]
    with pytest.raises(JobCancelled):
        run(generator, job, init, mask_frame, recorder=Recorder(cancel_after=1))
    assert arrays(run(generator, job, init, mask_frame))[0].tobytes() == before.tobytes()


@pytest.mark.parametrize("kind, width, height", [("txt2img", 64, 48), ("inpaint", 64, 64)])
def test_previews_arrive_every_n_steps_at_latent_size(generator, kind, width, height):
    init = upload_rgba(seed=11)
    mask_frame = upload_mask(np.pad(np.full((8, 8), 255), 28))
    extra = dict(init_image=init.id, mask=mask_frame.id, strength=1.0) if kind == "inpaint" else {}
    recorder = Recorder()
    run(generator, txt2img(kind=kind, width=width, height=height, steps=5, preview_every=2, **extra),
        init, mask_frame, recorder=recorder)
    assert [step for step, _ in recorder.previews] == [2, 4]
    for _, preview in recorder.previews:
        assert (preview.width, preview.height) == (width // 8, height // 8)
        assert len(preview.rgba) == preview.width * preview.height * 4
    assert len(recorder.steps) == 5


# ------------------------------------------------------------------ schedulers

@pytest.mark.parametrize("name", SCHEDULERS)
def test_each_scheduler_runs_on_its_own_instance(generator, store, name):
    shared = store.pipeline("txt2img").scheduler
    recorder = Recorder()
    output = run(generator, txt2img(scheduler=name, steps=2), recorder=recorder)
    assert recorder.steps[-1] == (2, 2)
    assert arrays(output)[0][..., :3].std() > 1
    assert store.pipeline("txt2img").scheduler is shared


def test_schedulers_give_different_pictures(generator):
    pictures = {arrays(run(generator, txt2img(scheduler=name, steps=3)))[0].tobytes()
                for name in ("euler", "euler_a", "ddim", "dpmpp_2m_karras")}
    assert len(pictures) == 4


# ------------------------------------------------------------------ errors reach the caller

def test_bad_request_is_a_protocol_error_before_any_work(generator, store):
    with UNetCalls(store) as calls, pytest.raises(ProtocolError) as info:
        run(generator, txt2img(width=4096))
    assert (info.value.code, info.value.field) == (ErrorCode.LIMIT_EXCEEDED, "job.width")
    assert calls.count == 0


@pytest.fixture(scope="module")
def sdxl_generator(atelier_home: Path) -> DiffusionGenerator:
    sdxl_store = _store(atelier_home)
    sdxl_store.load("tiny-sdxl")
    return DiffusionGenerator(sdxl_store)


@pytest.mark.parametrize("kind", ["txt2img", "img2img", "inpaint"])
def test_sdxl_family_runs_each_kind(sdxl_generator, kind):
    init = upload_rgba(seed=12)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 32:56] = 255
    mask_frame = upload_mask(mask)
    extra = {"img2img": dict(init_image=init.id),
             "inpaint": dict(init_image=init.id, mask=mask_frame.id, strength=1.0)}.get(kind, {})
    recorder = Recorder()
    output = run(sdxl_generator, txt2img(kind=kind, steps=3, preview_every=1, **extra),
                 init, mask_frame, recorder=recorder)
    assert output.model == "tiny-sdxl" and output.images[0].pixels.width == SIZE
    total = recorder.steps[-1][1]         # img2img runs steps x strength
    assert [step for step, _ in recorder.previews] == list(range(1, total))
    if kind == "inpaint":
        unchanged_outside(arrays(output)[0], pixels_to_array(Pixels(SIZE, SIZE, init.data)), mask, 0)
