"""Upscale and texture-set jobs over a real websocket (issue 16): daemon subprocess on the
tiny model, the protocol's own client."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import ErrorCode, JobDone, PixelFormat, PreviewImage, ProtocolError
from protocol.client import AtelierClient, make_upload
from protocol.messages import (Accepted, Cancelled, GenerateRequest, Progress, TextureSettings,
                               UpscaleSettings)


@pytest.fixture
def client(daemon):
    with AtelierClient(daemon.url, client_name="pytest-assets") as c:
        c.wait_connected()
        yield c


def _texture(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 128 + 100 * np.sin(2 * np.pi * 3 * x / width) * np.cos(2 * np.pi * 2 * y / height)
    rgba = np.stack([base, 255 - base, base * 0.5, np.full_like(base, 255)], axis=2)
    return np.clip(rgba, 0, 255).astype(np.uint8)


def _upload(rgba: np.ndarray):
    return make_upload(PixelFormat.RGBA8, rgba.shape[1], rgba.shape[0], rgba.tobytes())


def test_welcome_announces_the_asset_kinds_and_upscale_limits(client):
    welcome = client.welcome
    assert {"upscale", "refine", "texture_set"} <= set(welcome.capabilities)
    assert welcome.limits.max_upscale_side == 8192
    assert welcome.limits.max_upscale_pixels == 8192 * 8192


def test_lanczos_upscale_returns_the_exact_size(client):
    up = _upload(_texture(200, 120))
    done = client.run_job(GenerateRequest(kind="upscale", init_image=up.id, width=504,
                                          height=296), [up], timeout=60)
    assert isinstance(done, JobDone), done
    [image] = done.images
    assert (image.width, image.height) == (504, 296)
    assert done.result.images[0].label == "upscaled" and done.result.model == "lanczos"


def test_upscale_and_refine_1k_to_2k_returns_a_labelled_image_with_progress(client):
    """1024 -> 2048 by a factor, refined in 512 px tiles on the tiny model."""
    up = _upload(_texture(1024, 1024))
    job = GenerateRequest(kind="upscale", init_image=up.id, prompt="mossy stones", steps=4,
                          seed=11, scheduler="euler", tiling="both", preview_every=1,
                          upscale=UpscaleSettings(scale=2.0, refine_strength=0.5, tile=512))
    events = []
    done = client.run_job(job, [up], timeout=600, on_event=events.append)
    assert isinstance(done, JobDone), done
    # 2048 / (512 - 128) rounds up to 6 tiles a side (wrapped), 2 refine steps each.
    steps = [(e.step, e.total) for e in events if isinstance(e, Progress)]
    assert steps[-1] == (72, 72) and [s for s, _ in steps] == list(range(1, 73))
    previews = [e for e in events if isinstance(e, PreviewImage)]
    assert previews and (previews[0].image.width, previews[0].image.height) == (256, 256)
    [image] = done.images
    assert (image.width, image.height) == (2048, 2048)
    info = done.result.images[0]
    assert info.label == "upscaled" and info.seed == 11
    assert done.result.model == "tiny" and done.result.tiling == "both"
    assert (done.result.params.width, done.result.params.height) == (2048, 2048)
    pixels = np.frombuffer(image.data, np.uint8).reshape(2048, 2048, 4)
    assert pixels[..., :3].std() > 5 and (pixels[..., 3] == 255).all()


def test_texture_set_returns_each_map_labelled(client):
    up = _upload(_texture(128, 96))
    job = GenerateRequest(kind="texture_set", init_image=up.id, tiling="both",
                          texture=TextureSettings(maps=["normal", "height", "roughness"]))
    done = client.run_job(job, [up], timeout=60)
    assert isinstance(done, JobDone), done
    assert [i.label for i in done.result.images] == ["normal", "height", "roughness"]
    assert all((i.width, i.height) == (128, 96) for i in done.images)
    normal = np.frombuffer(done.images[0].data, np.uint8).reshape(96, 128, 4)
    assert normal[..., 2].min() > 128     # every normal faces out of the surface


def test_upscale_past_the_limit_is_refused_naming_it(client):
    up = _upload(_texture(64, 64))
    with pytest.raises(ProtocolError) as err:
        client.run_job(GenerateRequest(kind="upscale", init_image=up.id, width=8192,
                                       height=8200), [up], timeout=60)
    assert err.value.code == ErrorCode.LIMIT_EXCEEDED and err.value.field == "job.height"
    assert "over an upscale's limit of 8192" in err.value.message


def test_pth_upscaler_is_refused_over_the_protocol(client):
    up = _upload(_texture(64, 64))
    with pytest.raises(ProtocolError) as err:
        client.run_job(GenerateRequest(kind="upscale", init_image=up.id,
                                       upscale=UpscaleSettings(scale=2.0, upscaler="4x-Ultra.pth")),
                       [up], timeout=60)
    assert err.value.code == ErrorCode.MODEL_LOAD_FAILED
    assert "pickle" in err.value.message and err.value.field == "job.upscale.upscaler"


def test_cancel_stops_a_refine_within_a_tile_and_png_results_carry_the_label(client):
    up = _upload(_texture(256, 256))
    ref = client.submit(GenerateRequest(kind="upscale", init_image=up.id, steps=40, seed=2,
                                        upscale=UpscaleSettings(scale=2.0, refine_strength=1.0,
                                                                tile=64)), [up])
    accepted = client.wait_for(lambda e: isinstance(e, Accepted) and e.ref == ref, 30)
    first = client.wait_for(lambda e: isinstance(e, Progress) and e.job_id == accepted.job_id, 60)
    assert first.total == 121 * 40          # 11 x 11 tiles of 64 px over 512, 40 steps
    client.cancel(accepted.job_id)
    after: list[Progress] = []
    end = client.wait_for(lambda e: isinstance(e, (Cancelled, JobDone)), 60,
                          on_other=lambda e: after.append(e) if isinstance(e, Progress) else None)
    assert isinstance(end, Cancelled) and len(after) <= 2
    small = _upload(_texture(64, 48))
    done = client.run_job(GenerateRequest(kind="texture_set", init_image=small.id,
                                          output_format="png"), [small], timeout=60)
    assert [i.format for i in done.result.images] == ["png"] * 3
    assert [i.label for i in done.result.images] == ["normal", "height", "roughness"]


def test_cli_writes_a_texture_set_as_labelled_pngs(daemon, tmp_path):
    from PIL import Image

    from backend.cli import main

    texture = tmp_path / "bricks.png"
    Image.fromarray(_texture(96, 64)).save(texture)
    out = tmp_path / "maps"
    assert main(["generate", "--url", daemon.url, "--kind", "texture_set", "--init",
                 str(texture), "--maps", "normal", "height", "--tiling", "both", "--seed", "4",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["texture_set-4-0-normal.png",
                                                     "texture_set-4-1-height.png"]
    with Image.open(out / "texture_set-4-0-normal.png") as normal:
        assert normal.size == (96, 64)


def test_cli_upscale_options_become_the_request(tmp_path):
    from PIL import Image

    from backend.cli import _parser, request_from_args

    picture = tmp_path / "wall.png"
    Image.fromarray(_texture(64, 48)).save(picture)
    args = _parser().parse_args(["generate", "--kind", "upscale", "--init", str(picture),
                                 "--scale", "4", "--refine", "0.3", "--tile", "512",
                                 "--upscaler", "4x-UltraSharp", "-p", "moss"])
    job, uploads = request_from_args(args)
    assert job.kind == "upscale" and job.init_image == uploads[0].id
    assert job.upscale == UpscaleSettings(scale=4.0, upscaler="4x-UltraSharp",
                                          refine_strength=0.3, tile=512)
