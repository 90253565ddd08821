"""Request -> plan: validation, seeds, sizes and the inpaint context, all without a model."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest

from backend.limits import ServerLimits
from backend.pipelines.plan import (ModelTraits, plan_generation,
                                    working_size)
from backend.pipelines.previews import LatentPalette, PreviewLayout, preview_due
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import GenerateRequest

LIMITS = ServerLimits(max_side=256, max_pixels=128 * 128, max_batch=4, max_steps=30)
TRAITS = ModelTraits(native_side=64)


def frame(fmt: PixelFormat, width: int, height: int, data: bytes) -> ImageFrame:
    return ImageFrame(FrameKind.UPLOAD, fmt, 0, width, height, new_id(), data)


def rgba(width: int = 64, height: int = 64, seed: int = 0) -> ImageFrame:
    rng = np.random.default_rng(seed)
    return frame(PixelFormat.RGBA8, width, height,
                 rng.integers(0, 256, (height, width, 4), dtype=np.uint8).tobytes())


def gray(mask: np.ndarray) -> ImageFrame:
    return frame(PixelFormat.GRAY8, mask.shape[1], mask.shape[0], mask.astype(np.uint8).tobytes())


def plan(job: GenerateRequest, *uploads: ImageFrame, limits: ServerLimits = LIMITS):
    return plan_generation(job, {u.id: u for u in uploads}, limits, TRAITS, fresh_seed=1234)


def refused(job: GenerateRequest, *uploads: ImageFrame, limits: ServerLimits = LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        plan(job, *uploads, limits=limits)
    return info.value


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("changes, code, field, words", [
    ({"width": 60}, ErrorCode.INVALID_FIELD, "job.width", "multiple of 8"),
    ({"height": 100}, ErrorCode.INVALID_FIELD, "job.height", "multiple of 8"),
    ({"width": 264}, ErrorCode.LIMIT_EXCEEDED, "job.width", "256"),
    ({"width": 256, "height": 256}, ErrorCode.LIMIT_EXCEEDED, "job.width", "16384"),
    ({"batch_size": 5}, ErrorCode.LIMIT_EXCEEDED, "job.batch_size", "4"),
    ({"steps": 31}, ErrorCode.LIMIT_EXCEEDED, "job.steps", "30"),
    ({"steps": 20, "seed": -1}, ErrorCode.INVALID_FIELD, "job.seed", ""),
    ({"init_image": "ab" * 16}, ErrorCode.INVALID_FIELD, "job.init_image", "txt2img"),
])
def test_bad_requests_name_the_field_and_the_limit(changes, code, field, words):
    error = refused(GenerateRequest(**{"width": 64, "height": 64, "steps": 4, **changes}))
    assert (error.code, error.field) == (code, field)
    assert words in error.message


def test_lcm_has_its_own_step_limit():
    error = refused(GenerateRequest(width=64, height=64, steps=60, scheduler="lcm"),
                    limits=ServerLimits(max_steps=100))
    assert (error.code, error.field) == (ErrorCode.LIMIT_EXCEEDED, "job.steps")
    assert "lcm" in error.message and "50" in error.message


def test_img2img_needs_an_uploaded_init_image():
    missing = refused(GenerateRequest(kind="img2img", width=64, height=64))
    assert (missing.code, missing.field) == (ErrorCode.INVALID_FIELD, "job.init_image")
    unknown = refused(GenerateRequest(kind="img2img", width=64, height=64, init_image="cd" * 16),
                      rgba())
    assert (unknown.code, unknown.field) == (ErrorCode.UNKNOWN_UPLOAD, "job.init_image")


def test_init_image_must_be_a_colour_image():
    mask = gray(np.zeros((64, 64)))
    error = refused(GenerateRequest(kind="img2img", width=64, height=64, init_image=mask.id), mask)
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "job.init_image")
    assert "gray8" in error.message


def test_strength_too_low_for_the_steps_is_refused():
    init = rgba()
    error = refused(GenerateRequest(kind="img2img", width=64, height=64, steps=4, strength=0.2,
                                    init_image=init.id), init)
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "job.strength")
    assert "0.25" in error.message


def test_inpaint_mask_must_exist_match_and_be_non_empty():
    init = rgba()
    job = GenerateRequest(kind="inpaint", width=64, height=64, init_image=init.id)
    assert refused(job, init).field == "job.mask"
    unknown = refused(GenerateRequest(**{**job.__dict__, "mask": "ef" * 16}), init)
    assert (unknown.code, unknown.field) == (ErrorCode.UNKNOWN_UPLOAD, "job.mask")
    small = gray(np.full((32, 32), 255))
    mismatch = refused(GenerateRequest(**{**job.__dict__, "mask": small.id}), init, small)
    assert (mismatch.field, mismatch.code) == ("job.mask", ErrorCode.INVALID_FIELD)
    assert "32x32" in mismatch.message and "64x64" in mismatch.message
    empty = gray(np.zeros((64, 64)))
    error = refused(GenerateRequest(**{**job.__dict__, "mask": empty.id}), init, empty)
    assert error.field == "job.mask" and "empty" in error.message


def test_mask_only_goes_with_inpaint():
    init, mask = rgba(), gray(np.full((64, 64), 255))
    error = refused(GenerateRequest(kind="img2img", width=64, height=64, init_image=init.id,
                                    mask=mask.id), init, mask)
    assert error.field == "job.mask" and "inpaint" in error.message


def test_png_upload_claiming_another_size_is_refused():
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    png = frame(PixelFormat.PNG, 64, 64, buffer.getvalue())
    error = refused(GenerateRequest(kind="img2img", width=64, height=64, init_image=png.id), png)
    assert error.field == "job.init_image" and "32x32" in error.message


# ------------------------------------------------------------------ resolution

def test_seed_is_resolved_and_batch_items_count_up():
    p = plan(GenerateRequest(width=64, height=64, batch_size=3))
    assert p.request.seed == 1234 and p.seeds == (1234, 1235, 1236)
    wrapped = plan(GenerateRequest(width=64, height=64, batch_size=2, seed=2 ** 32 - 1))
    assert wrapped.seeds == (2 ** 32 - 1, 0)


def test_same_request_same_plan():
    init, mask = rgba(), gray(np.pad(np.full((8, 8), 255), 28))
    job = GenerateRequest(kind="inpaint", width=64, height=64, seed=5, init_image=init.id,
                          mask=mask.id, mask_grow=2, mask_feather=3)
    first, second = plan(job, init, mask), plan(job, init, mask)
    assert first == second
    assert np.array_equal(first.mask, second.mask)


def test_img2img_resamples_the_init_to_the_requested_size():
    init = rgba(64, 64)
    p = plan(GenerateRequest(kind="img2img", width=32, height=48, init_image=init.id, steps=10,
                             strength=0.5), init)
    assert p.init.shape == (48, 32, 4)
    assert (p.work_width, p.work_height, p.denoise_steps) == (32, 48, 5)


def test_png_and_rgb8_uploads_decode_to_rgba():
    pixels = np.random.default_rng(3).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    for upload in (frame(PixelFormat.PNG, 24, 16, buffer.getvalue()),
                   frame(PixelFormat.RGB8, 24, 16, pixels.tobytes())):
        p = plan(GenerateRequest(kind="img2img", width=24, height=16, init_image=upload.id), upload)
        assert np.array_equal(p.init[..., :3], pixels) and np.all(p.init[..., 3] == 255)


def test_inpaint_context_region_is_cropped_and_scaled_to_the_model():
    init = rgba(128, 128)
    mask = np.zeros((128, 128), np.uint8)
    mask[100:110, 20:26] = 255
    upload = gray(mask)
    p = plan(GenerateRequest(kind="inpaint", width=128, height=128, init_image=init.id,
                             mask=upload.id, mask_grow=2, context_padding=8), init, upload)
    crop = p.crop
    assert crop.width % 8 == 0 and crop.height % 8 == 0
    assert crop.x <= 20 - 10 and crop.right >= 26 + 10 and crop.bottom >= 110 + 10
    assert crop.width < 128 and crop.height < 128
    # the small context is scaled up towards the model's native 64x64, aspect kept
    assert p.work_width >= crop.width and p.work_height >= crop.height
    assert p.work_width * p.work_height >= 0.7 * 64 * 64
    assert p.work_width % 8 == 0 and p.work_height % 8 == 0


def test_working_size_never_passes_the_limits():
    limits = ServerLimits(max_side=512, max_pixels=256 * 256)
    assert working_size(16, 16, 1024, limits) == (256, 256)
    assert working_size(64, 16, 1024, limits) == (512, 128)
    assert working_size(200, 200, 64, limits) == (200, 200)


# ------------------------------------------------------------------ previews

def test_previews_come_every_n_steps_but_not_with_the_result():
    assert [s for s in range(1, 8) if preview_due(s, 2, 7)] == [2, 4, 6]
    assert [s for s in range(1, 7) if preview_due(s, 3, 6)] == [3]
    assert not any(preview_due(s, 0, 5) for s in range(1, 6))


def test_preview_is_the_latent_at_one_to_one():
    import torch

    latents = torch.zeros(2, 4, 6, 8)
    latents[0, 0] = 2.0
    image = PreviewLayout((8, 6)).render(latents, LatentPalette.for_family("sd15"))
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8
    # channel 0 of SD latents maps to warm white: all colours above mid-grey
    assert np.all(image > 128)
    xl = PreviewLayout((8, 6)).render(torch.zeros(1, 4, 6, 8), LatentPalette.for_family("sdxl"))
    assert not np.array_equal(xl, PreviewLayout((8, 6)).render(
        torch.zeros(1, 4, 6, 8), LatentPalette.for_family("sd15")))
