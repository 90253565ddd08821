"""Seam metric and the "make seamless" job."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from backend.generation import GenerationOutput
from backend.models.store import ModelStore
from backend.pipelines.generator import DiffusionGenerator
from backend.limits import ServerLimits
from backend.pipelines.plan import ModelTraits, plan_generation
from backend.pipelines.seamless import half_offset, roll_image, seam_band, seam_score
from protocol.client import AtelierClient, make_upload
from protocol.errors import ProtocolError
from protocol.events import JobDone
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import GenerateRequest


def _rgba(rgb: np.ndarray) -> bytes:
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    return np.concatenate([rgb.astype(np.uint8), alpha], axis=-1).tobytes()


def _ramp_image(width: int, height: int) -> np.ndarray:
    """Brightness rises left to right: a hard seam where the right edge meets the left."""
    row = np.linspace(0, 250, width)
    return np.broadcast_to(row[None, :, None], (height, width, 3)).copy()


def test_seam_score_of_a_ramp_is_large_across_x_and_flat_across_y():
    image = _ramp_image(64, 32)
    # wrap step 250 against interior steps of 250/63
    assert seam_score(_rgba(image), 64, 32, "x") == pytest.approx(63, rel=0.05)
    # every row is the same: no seam and no texture on y
    assert seam_score(_rgba(image), 64, 32, "y") == 1.0


def test_seam_score_of_a_periodic_pattern_is_about_one():
    # A triangle wave up and down in steps of 10: the wrap step is like every other step.
    wave = np.concatenate([np.arange(0, 240, 10), np.arange(240, 0, -10)])
    image = np.broadcast_to(wave[:, None, None], (48, 40, 3)).copy()   # varies along y
    assert seam_score(_rgba(image), 40, 48, "y") == pytest.approx(1.0)
    shifted = np.roll(image, 5, axis=0)
    assert seam_score(_rgba(shifted), 40, 48, "y") == pytest.approx(1.0)


def test_seam_score_ignores_alpha_and_checks_sizes():
    image = _ramp_image(16, 8)
    rgba = bytearray(_rgba(image))
    rgba[3::4] = bytes(range(len(rgba) // 4))      # wild alpha changes nothing
    assert seam_score(bytes(rgba), 16, 8, "x") == seam_score(_rgba(image), 16, 8, "x")
    with pytest.raises(ValueError, match="needs 512 bytes"):
        seam_score(b"\0" * 10, 16, 8, "x")
    with pytest.raises(ValueError, match="axis"):
        seam_score(_rgba(image), 16, 8, "z")


# ------------------------------------------------------------------ make seamless

SIZE = 64
SEAM = 16


@pytest.fixture(scope="module")
def generator(atelier_home) -> DiffusionGenerator:
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny")
    return DiffusionGenerator(store)


def _texture_upload() -> tuple[ImageFrame, np.ndarray]:
    """A ramp in both directions plus grain: hard seams on both wrap edges."""
    ramp = np.linspace(0, 240, SIZE)
    grain = np.random.default_rng(0).integers(0, 12, (SIZE, SIZE, 3))
    rgb = (ramp[None, :, None] * 0.6 + ramp[:, None, None] * 0.4 + grain).astype(np.uint8)
    rgba = np.frombuffer(_rgba(rgb), np.uint8).reshape(SIZE, SIZE, 4)
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, SIZE, SIZE, new_id(), rgba.tobytes()), rgba


def _make_seamless(generator: DiffusionGenerator, tiling: str,
                   seam_width: int = SEAM) -> tuple[GenerationOutput, np.ndarray]:
    upload, rgba = _texture_upload()
    job = GenerateRequest(kind="make_seamless", prompt="stone texture", width=SIZE, height=SIZE,
                          steps=4, seed=3, scheduler="euler", init_image=upload.id,
                          tiling=tiling, seam_width=seam_width)
    return generator.generate(job, {upload.id: upload}, lambda *a: None, lambda: False), rgba


def _edge_difference(rgba: np.ndarray, axis: str) -> float:
    rgb = rgba[..., :3].astype(float)
    if axis == "y":
        rgb = rgb.transpose(1, 0, 2)
    return float(np.abs(rgb[:, 0] - rgb[:, -1]).mean())


def test_make_seamless_on_x_repaints_the_wrap_edge_only(generator):
    out, before = _make_seamless(generator, "x")
    assert out.tiling == "x" and out.params.kind == "make_seamless"
    after = np.frombuffer(out.images[0].pixels.rgba, np.uint8).reshape(SIZE, SIZE, 4)
    # the band covers SEAM // 2 columns on each side of the old edge; the rest is untouched
    middle = slice(SEAM // 2, SIZE - SEAM // 2)
    assert np.array_equal(after[:, middle], before[:, middle])
    assert not np.array_equal(after[:, :SEAM // 2], before[:, :SEAM // 2])
    assert _edge_difference(after, "x") < 0.5 * _edge_difference(before, "x")
    # y was not asked for: the top and bottom rows keep their seam outside the band
    assert np.array_equal(after[[0, -1], middle], before[[0, -1], middle])


def test_make_seamless_without_tiling_fixes_both_axes_and_says_so(generator):
    out, before = _make_seamless(generator, "none")
    assert out.tiling == "both"
    after = np.frombuffer(out.images[0].pixels.rgba, np.uint8).reshape(SIZE, SIZE, 4)
    inner = slice(SEAM // 2, SIZE - SEAM // 2)
    assert np.array_equal(after[inner, inner], before[inner, inner])
    for axis in ("x", "y"):
        assert _edge_difference(after, axis) < 0.5 * _edge_difference(before, axis)


def test_make_seamless_checks_its_inputs(generator):
    with pytest.raises(ProtocolError) as err:
        _make_seamless(generator, "y", seam_width=SIZE)
    assert err.value.field == "job.seam_width" and "height 64" in err.value.message


def test_seam_band_is_a_cross_centred_on_the_old_edges():
    offset = half_offset(10, 8, True, True)
    assert offset == (5, 4)
    band = seam_band(10, 8, offset, 4)
    assert band[:, 3:7].all() and not band[0, [0, 1, 2, 7, 8, 9]].any()
    assert band[2:6, :].all() and not band[[0, 1, 6, 7]][:, [0, 9]].any()
    image = np.arange(80).reshape(8, 10)
    assert np.array_equal(roll_image(roll_image(image, offset), (-5, -4)), image)
    # the old corner meets in the middle: old (0, 9) sits just left of old (0, 0) at row 4
    rolled = roll_image(image, offset)
    assert rolled[4, 4] == image[0, 9] and rolled[4, 5] == image[0, 0]
    assert rolled[3, 5] == image[7, 0]


def test_make_seamless_over_the_daemon(daemon):
    _, rgba = _texture_upload()
    upload = make_upload(PixelFormat.RGBA8, SIZE, SIZE, rgba.tobytes())
    job = GenerateRequest(kind="make_seamless", prompt="stone texture", width=SIZE, height=SIZE,
                          steps=3, seed=1, init_image=upload.id, tiling="y", seam_width=SEAM)
    with AtelierClient(daemon.url, client_name="test_seamless") as client:
        client.wait_connected()
        done = client.run_job(job, [upload], timeout=120)
    assert isinstance(done, JobDone), done
    assert done.result.tiling == "y"
    after = np.frombuffer(done.images[0].data, np.uint8).reshape(SIZE, SIZE, 4)
    middle = slice(SEAM // 2, SIZE - SEAM // 2)
    assert np.array_equal(after[middle], rgba[middle])
    assert _edge_difference(after, "y") < 0.5 * _edge_difference(rgba, "y")


def test_make_seamless_params_state_the_tiling_run_and_inpaint_context_spans_tiled_axes():
    upload, _ = _texture_upload()
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[30:34, 30:34] = 255
    mask_frame = ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, SIZE, SIZE, new_id(), mask.tobytes())
    uploads = {upload.id: upload, mask_frame.id: mask_frame}
    inpaint = GenerateRequest(kind="inpaint", width=SIZE, height=SIZE, seed=1, init_image=upload.id,
                              mask=mask_frame.id, context_padding=8)

    def plan(job: GenerateRequest):
        return plan_generation(job, uploads, ServerLimits(), ModelTraits(native_side=SIZE), 0)

    assert plan(inpaint).crop.width < SIZE
    tiled = plan(dataclasses.replace(inpaint, tiling="x")).crop
    assert (tiled.x, tiled.width) == (0, SIZE) and tiled.height < SIZE
    seamless = plan(dataclasses.replace(inpaint, kind="make_seamless", mask=None, seam_width=SEAM))
    assert seamless.tiling == "both" and seamless.request.tiling == "both"
    assert seamless.offset == (SIZE // 2, SIZE // 2)
    with pytest.raises(ProtocolError) as err:
        plan(dataclasses.replace(inpaint, kind="make_seamless"))
    assert err.value.field == "job.mask"
