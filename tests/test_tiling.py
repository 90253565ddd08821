"""Seamless tiling: circular convolutions per axis, for one job only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from diffusers.models.downsampling import Downsample2D

from backend.generation import GenerationOutput, JobCancelled
from backend.models.store import ModelStore
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.seamless import seam_score
from backend.pipelines.tiling import (
    TileAxes,
    decode_wrapped,
    decodes_in_tiles,
    tile_axes,
    whole_image_vae,
    wrapped_convolutions,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import GenerateRequest

WIDTH, HEIGHT = 96, 64      # not square, so a mix-up of the axes shows


def _store(home: Path) -> ModelStore:
    """A fresh store: loading "tiny" in it gives new module objects, as after a restart."""
    store = ModelStore("cpu", torch.float32, home, search_dirs=[], hf_cache=home / "no-hf-cache")
    store.load("tiny")
    return store


def _load(home: Path) -> StableDiffusionPipeline:
    return _store(home).current.pipe


@pytest.fixture(scope="module")
def pipe(atelier_home) -> StableDiffusionPipeline:
    return _load(atelier_home)


def _noise(pipe: StableDiffusionPipeline, seed: int = 7) -> torch.Tensor:
    scale = pipe.vae_scale_factor
    return torch.randn(1, 4, HEIGHT // scale, WIDTH // scale,
                       generator=torch.Generator().manual_seed(seed))


def _generate(pipe: StableDiffusionPipeline, latents: torch.Tensor, tiling: str,
              **extra) -> torch.Tensor:
    with wrapped_convolutions([pipe.unet, pipe.vae], tile_axes(tiling)):
        return pipe("a stone wall", latents=latents, num_inference_steps=3, width=WIDTH,
                    height=HEIGHT, output_type="pt", **extra).images


def _roll_error(pipe: StableDiffusionPipeline, tiling: str, dim: int) -> float:
    """Max difference between the image of rolled noise and the rolled image."""
    # Rolls must be a multiple of the UNet's total downsampling to commute with stride 2.
    k = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    noise = _noise(pipe)
    image = _generate(pipe, noise, tiling)
    rolled = _generate(pipe, torch.roll(noise, k, dims=dim), tiling)
    return (torch.roll(image, k * pipe.vae_scale_factor, dims=dim) - rolled).abs().max().item()


@pytest.mark.parametrize("tiling", ["none", "x", "y", "both"])
def test_rolled_noise_gives_rolled_image_exactly_on_tiled_axes_only(pipe, tiling):
    axes = tile_axes(tiling)
    for wraps, dim in ((axes.x, 3), (axes.y, 2)):
        error = _roll_error(pipe, tiling, dim)
        if wraps:
            assert error < 1e-4, f"tiling={tiling}: roll on dim {dim} off by {error}"
        else:
            # Zero padding on this axis: the edges are real borders and the roll shows.
            assert error > 0.05, f"tiling={tiling}: dim {dim} wraps but should not ({error})"


def test_untiled_job_after_tiled_job_matches_fresh_model(atelier_home, pipe):
    _generate(pipe, _noise(pipe), "both")
    after_tiled = _generate(pipe, _noise(pipe), "none")
    fresh = _generate(_load(atelier_home), _noise(pipe), "none")
    assert torch.equal(after_tiled, fresh)


def _conv_paddings(pipe: StableDiffusionPipeline) -> list:
    return [m.padding for root in (pipe.unet, pipe.vae) for m in root.modules()
            if isinstance(m, torch.nn.Conv2d)]


def _conv_settings(pipe: StableDiffusionPipeline) -> list:
    return [(m.padding, m.padding_mode, len(m._forward_pre_hooks))
            for root in (pipe.unet, pipe.vae) for m in root.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("tiling", ["x", "both"])     # a hook per conv / the conv's own mode
def test_cancelled_tiled_job_leaves_modules_as_they_were(atelier_home, pipe, tiling):
    before = _conv_settings(pipe)

    def cancel(pipeline, step, timestep, kwargs):
        assert _conv_settings(pipe) != before      # wrapped while the job runs
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        _generate(pipe, _noise(pipe), tiling, callback_on_step_end=cancel)
    assert _conv_settings(pipe) == before
    fresh = _generate(_load(atelier_home), _noise(pipe), "none")
    assert torch.equal(_generate(pipe, _noise(pipe), "none"), fresh)


def test_block_counts_each_padded_conv_once_and_none_changes_nothing(pipe):
    padded = sum(1 for p in _conv_paddings(pipe) if p != (0, 0))
    # The VAE encoder's downsamplers pad by hand before an unpadded conv: wrapped by a hook.
    hand_padded = sum(1 for m in pipe.vae.modules() if isinstance(m, Downsample2D) and m.padding == 0)
    assert hand_padded > 0
    with wrapped_convolutions([pipe.unet, pipe.vae, None], tile_axes("none")) as changed:
        assert changed == 0
    before = _conv_paddings(pipe)
    with wrapped_convolutions([pipe.unet, pipe.vae, pipe.unet], tile_axes("y")) as changed:
        assert changed == padded + hand_padded
        # the wrapped axis is padded by the hook; the conv still zero-pads the other itself
        assert _conv_paddings(pipe) == [(0, x) for _, x in before]
    assert _conv_paddings(pipe) == before


def test_same_padding_wraps_too():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 2, kernel_size=4, padding="same")
    image = torch.randn(1, 2, 6, 10)
    with wrapped_convolutions([conv], TileAxes(x=True, y=False)):
        out = conv(image)
        rolled = conv(torch.roll(image, 3, dims=3))
    assert out.shape == image.shape
    assert torch.allclose(torch.roll(out, 3, dims=3), rolled, atol=1e-6)
    assert conv.padding == "same"


def test_compiled_modules_follow_the_block_in_and_out():
    """accel.py compiles the UNet in place; dynamo must see the hooks and the padding
    change, so a compiled module wraps inside the block and stops wrapping after it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(4, 2, 3, padding=1))
    image = torch.randn(1, 2, 8, 12)
    axes = TileAxes(x=True, y=False)
    plain = net(image)
    with wrapped_convolutions([net], axes):
        wrapped = net(image)
    net.compile(backend="eager")
    assert torch.allclose(net(image), plain, atol=1e-6)
    with wrapped_convolutions([net], axes):
        assert torch.allclose(net(image), wrapped, atol=1e-6)
    assert torch.allclose(net(image), plain, atol=1e-6)
    assert not torch.allclose(wrapped, plain, atol=1e-3)


def test_unknown_tiling_names_the_field():
    with pytest.raises(ProtocolError) as err:
        tile_axes("diagonal")
    assert err.value.code == ErrorCode.INVALID_FIELD
    assert err.value.field == "job.tiling"
    assert tile_axes("both") == TileAxes(x=True, y=True) and tile_axes("x").name == "x"


def _periodic_latent(height: int, width: int, seed: int) -> torch.Tensor:
    """A smooth latent that repeats on both axes, so its decode should tile."""
    gen = torch.Generator().manual_seed(seed)
    xs = torch.arange(width) / width * 2 * math.pi
    ys = torch.arange(height) / height * 2 * math.pi
    latent = torch.zeros(1, 4, height, width)
    for fx in (1, 2, 3):
        for fy in (1, 2):
            phase = torch.rand(1, generator=gen).item() * 2 * math.pi
            amp = torch.randn(1, 4, 1, 1, generator=gen)
            latent += amp * torch.sin(fx * xs + phase)[None, None, None, :] \
                * torch.cos(fy * ys)[None, None, :, None]
    return latent


def _seam_x(image: torch.Tensor) -> float:
    rgb = ((image[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    rgba = torch.cat([rgb, torch.full_like(rgb[..., :1], 255)], dim=-1)
    return seam_score(rgba.numpy().tobytes(), rgba.shape[1], rgba.shape[0], "x")


def test_tiled_vae_decode_keeps_the_wrap(atelier_home):
    vae = AutoencoderKL.from_pretrained(str(_store(atelier_home).resolve("tiny").path / "vae"))
    latent_size = 3 * vae.tile_latent_min_size     # three tiles wide: tiled decode kicks in
    axes = TileAxes(x=True, y=False)
    scores: dict[str, list[float]] = {"whole": [], "wrap_aware": [], "naive": []}
    # One column pair is a noisy sample of the random model's texture: average a few.
    for seed in range(4):
        latent = _periodic_latent(latent_size, latent_size, seed)
        with torch.no_grad():
            vae.disable_tiling()
            with wrapped_convolutions([vae], axes):
                whole = vae.decode(latent).sample
                naive = vae.tiled_decode(latent).sample
            vae.enable_tiling()
            assert decodes_in_tiles(vae, latent)
            wrap_aware = decode_wrapped(vae, latent, axes,
                                        lambda z: vae.decode(z).sample.permute(0, 2, 3, 1))
            wrap_aware = wrap_aware.permute(0, 3, 1, 2)
        assert wrap_aware.shape == whole.shape
        for name, image in (("whole", whole), ("wrap_aware", wrap_aware), ("naive", naive)):
            scores[name].append(_seam_x(image))
    mean = {name: sum(values) / len(values) for name, values in scores.items()}
    # The whole-image circular decode is the reference: it tiles.
    assert mean["whole"] < 1.2, mean
    assert mean["wrap_aware"] < 1.2, mean
    # Circular convs inside each tile wrap every tile onto itself: a visible seam.
    assert mean["naive"] > 2.0, mean
    # So a job never wraps the VAE's convolutions when it will encode in tiles.
    side = vae.tile_sample_min_size
    assert whole_image_vae(vae, side, side) is vae
    assert whole_image_vae(vae, side + 8, side) is None
    vae.disable_tiling()
    assert whole_image_vae(vae, 4 * side, side) is vae


@pytest.mark.parametrize("tiling", ["x", "y", "both"])
def test_vae_encoding_of_a_rolled_image_is_the_rolled_latent_on_tiled_axes(pipe, tiling):
    """The encoder's hand-padded downsamplers wrap too, so an init image's latent tiles."""
    vae, axes = pipe.vae, tile_axes(tiling)
    image = torch.rand(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3)) * 2 - 1
    before = _conv_settings(pipe)

    def encode(x: torch.Tensor) -> torch.Tensor:
        with wrapped_convolutions([vae], axes), torch.no_grad():
            return vae.encode(x).latent_dist.mean

    latent = encode(image)
    for wraps, dim in ((axes.x, 3), (axes.y, 2)):
        rolled = encode(torch.roll(image, 2 * pipe.vae_scale_factor, dims=dim))
        error = (torch.roll(latent, 2, dims=dim) - rolled).abs().max().item()
        if wraps:
            assert error < 1e-4, f"tiling={tiling}: roll on dim {dim} off by {error}"
        else:
            assert error > 1e-3, f"tiling={tiling}: dim {dim} wraps but should not ({error})"
    assert _conv_settings(pipe) == before    # hooks gone after the block

# ------------------------------------------------------- through the generator

def _job(generator: DiffusionGenerator, tiling: str, kind: str = "txt2img") -> GenerationOutput:
    job = GenerateRequest(prompt="a brick wall", width=WIDTH, height=HEIGHT, steps=3, seed=5,
                          tiling=tiling, batch_size=2)
    return generator.generate(job, {}, lambda *a: None, lambda: False)


def _pixels(output: GenerationOutput) -> list[bytes]:
    return [image.pixels.rgba for image in output.images]


def test_generator_reports_tiling_and_untiled_jobs_after_tiled_ones_match_a_fresh_model(atelier_home):
    generator = DiffusionGenerator(_store(atelier_home))
    tiled = _job(generator, "x")
    assert tiled.tiling == "x" and tiled.params.tiling == "x"
    after = _job(generator, "none")
    assert after.tiling == "none"
    fresh = _job(DiffusionGenerator(_store(atelier_home)), "none")
    assert _pixels(after) == _pixels(fresh)
    assert _pixels(tiled) != _pixels(fresh)

