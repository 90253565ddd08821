"""The diffusion-transformer families, Flux.1 and SD3, on their tiny random-weight models
(backend/models/tiny_flux.py, tiny_sd3.py), loaded through the same store, resolver and
catalog as a user's folders. Job tests run on both families.

64x64 images and 2-3 steps: each job takes a few tenths of a second on a CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.generation import GenerationOutput
from backend.models import families
from backend.models.store import ModelStore
from backend.pipelines.dit import RolledTransformer
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.latents import decode_rgb
from backend.pipelines.pixels import pixels_to_array
from backend.pipelines.tiling import TileAxes, wrapped_convolutions
from protocol.client import AtelierClient, make_upload
from protocol.errors import ErrorCode, ProtocolError
from protocol.events import JobDone
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import ControlLayer, GenerateRequest, Models

SIZE = 64
JOB = dict(prompt="a red stone wall", width=SIZE, height=SIZE, steps=3, guidance=3.5, seed=7)


@pytest.fixture(scope="module")
def store(atelier_home: Path) -> ModelStore:
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny-flux")
    return store


@pytest.fixture(scope="module")
def generator(store: ModelStore) -> DiffusionGenerator:
    return DiffusionGenerator(store)


@pytest.fixture(params=["tiny-flux", "tiny-sd3"])
def model(request) -> str:
    return request.param


def _run(generator: DiffusionGenerator, uploads: list[ImageFrame] = (), **job) -> GenerationOutput:
    request = GenerateRequest(**{**JOB, **job})
    return generator.generate(request, {u.id: u for u in uploads}, lambda *_: None, lambda: False)


def store_family(name: str) -> str:
    return {"tiny-flux": families.FLUX, "tiny-sd3": families.SD3}[name]


def _rgba(output: GenerationOutput, index: int = 0) -> np.ndarray:
    return pixels_to_array(output.images[index].pixels)


def _upload_rgba(seed: int = 0) -> ImageFrame:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, SIZE, SIZE, new_id(), pixels.tobytes())


def _upload_mask(mask: np.ndarray) -> ImageFrame:
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, mask.shape[1], mask.shape[0],
                      new_id(), mask.astype(np.uint8).tobytes())


# ------------------------------------------------------------------ loading

@pytest.mark.parametrize("name, family, pipeline", [
    ("tiny-flux", families.FLUX, "FluxPipeline"), ("tiny-sd3", families.SD3, "StableDiffusion3Pipeline")])
def test_tiny_models_load_by_name_and_are_listed_with_their_family(store, name, family, pipeline):
    loaded = store.use(name)
    assert (loaded.name, loaded.family) == (name, family)
    assert type(loaded.pipe).__name__ == pipeline
    assert loaded.pipe.vae.config.latent_channels == 16
    listed = {info.name: info for info in store.available()}
    assert listed[name].family == family and listed[name].kind == "checkpoint"
    # only safetensors on disk, as a user's diffusers folder would hold
    weights = list(loaded.source.path.rglob("*.safetensors"))
    assert weights and not list(loaded.source.path.rglob("*.bin"))
    store.use_default()


@pytest.mark.parametrize("name, family", [("tiny-flux", families.FLUX), ("tiny-sd3", families.SD3)])
def test_a_folder_named_by_path_is_detected_from_model_index(store, tmp_path, name, family):
    folder = tmp_path / "my-model"
    shutil.copytree(store.resolve(name).path, folder)
    assert families.family_of_folder(folder) == family
    other = ModelStore("cpu", torch.float32, tmp_path, search_dirs=[tmp_path],
                       hf_cache=tmp_path / "no-hf-cache")
    assert other.load("my-model").family == family
    names = {info.name: info.family for info in other.available()}
    assert family in names.values()
    # A Flux pipeline of another kind has another transformer: Fill's is a family of its
    # own, Kontext's is not taken as Flux.
    index = json.loads((folder / "model_index.json").read_text())
    for pipeline, detected in (("FluxFillPipeline", families.FLUX_FILL),
                               ("FluxKontextPipeline", families.UNKNOWN)):
        (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": pipeline}))
        assert families.family_of_folder(folder) == detected


def test_single_transformer_files_are_listed_with_their_family(store, tmp_path):
    """ComfyUI keeps Flux and SD3 transformers as single files (models/unet, original or
    diffusers tensor names); they are recognised and listed, and loading one without its
    text encoders says which file is missing (test_dit_files.py loads them whole)."""
    from safetensors.torch import save_file

    models = tmp_path / "models"
    (models / "unet").mkdir(parents=True)
    for name in ("tiny-flux", "tiny-sd3"):
        shutil.copy(store.resolve(name).path / "transformer" / "diffusion_pytorch_model.safetensors",
                    models / "unet" / f"{name}-transformer.safetensors")
    blocks = {"flux": ("double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight",
                       "img_in.weight"),
              "sd3": ("joint_blocks.0.x_block.attn.qkv.weight", "x_embedder.proj.weight",
                      "final_layer.linear.weight")}
    for family, keys in blocks.items():     # a whole checkpoint, original names under LDM's prefix
        save_file({f"model.diffusion_model.{k}": torch.zeros(2, 2) for k in keys},
                  str(models / f"{family}-checkpoint.safetensors"))
    user = ModelStore("cpu", torch.float32, tmp_path, search_dirs=[models],
                      hf_cache=tmp_path / "no-hf-cache")
    listed = {info.name: info.family for info in user.available()}
    assert listed["unet/tiny-flux-transformer.safetensors"] == "flux"
    assert listed["unet/tiny-sd3-transformer.safetensors"] == "sd3"
    assert (listed["flux-checkpoint.safetensors"], listed["sd3-checkpoint.safetensors"]) == (
        "flux", "sd3")
    with pytest.raises(ProtocolError) as err:
        user.load("unet/tiny-flux-transformer.safetensors")
    assert (err.value.code, err.value.field) == (ErrorCode.MODEL_NOT_FOUND, "model")
    assert "CLIP-L text encoder" in err.value.message


# ------------------------------------------------------------------ job kinds

# the job tests every diffusion-transformer family shares (Chroma and Z-Image have the rest
# of theirs in test_dit_families.py)
EVERY_FAMILY = ("tiny-flux", "tiny-sd3", "tiny-chroma", "tiny-zimage")


@pytest.mark.parametrize("model", EVERY_FAMILY)
def test_txt2img_same_seed_same_bytes_other_seed_differs(generator, model):
    first, again, other = (_run(generator, model=model), _run(generator, model=model),
                           _run(generator, model=model, seed=8))
    assert first.model == model
    assert _rgba(first).shape == (SIZE, SIZE, 4)
    assert _rgba(first).tobytes() == _rgba(again).tobytes()
    assert _rgba(first).tobytes() != _rgba(other).tobytes()


def test_guidance_steers_the_distilled_guidance_embedding(generator):
    assert _rgba(_run(generator)).tobytes() != _rgba(_run(generator, guidance=1.0)).tobytes()


def test_sd3_takes_a_negative_prompt_and_flux_has_no_use_for_one(generator):
    for name, steers in (("tiny-sd3", True), ("tiny-flux", False)):
        plain = _rgba(_run(generator, model=name))
        negative = _rgba(_run(generator, model=name, negative_prompt="blue sky"))
        assert (plain.tobytes() != negative.tobytes()) == steers, name


def test_img2img_starts_from_the_init_image(generator, model):
    init = _upload_rgba(1)
    job = dict(kind="img2img", init_image=init.id, model=model)
    low = _rgba(_run(generator, [init], **job, strength=0.34))
    again = _rgba(_run(generator, [init], **job, strength=0.34))
    full = _rgba(_run(generator, [init], **job, strength=1.0))
    assert low.tobytes() == again.tobytes()
    original = np.frombuffer(init.data, np.uint8).reshape(SIZE, SIZE, 4)[..., :3].astype(int)
    # less strength keeps more of the picture
    assert np.abs(low[..., :3] - original).mean() < np.abs(full[..., :3] - original).mean()


@pytest.mark.parametrize("model", EVERY_FAMILY)
def test_inpaint_keeps_every_unmasked_pixel_byte_identical(generator, model):
    init = _upload_rgba(2)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:40, 20:44] = 255
    frame = _upload_mask(mask)
    out = _rgba(_run(generator, [init, frame], kind="inpaint", init_image=init.id,
                     mask=frame.id, strength=1.0, context_padding=8, model=model))
    original = np.frombuffer(init.data, np.uint8).reshape(SIZE, SIZE, 4)
    outside = mask == 0
    assert out[outside].tobytes() == original[outside].tobytes()
    assert (out[~outside] != original[~outside]).any()


def test_previews_show_the_unpacked_latents(generator):
    previews = []
    request = GenerateRequest(**JOB, preview_every=1)
    generator.generate(request, {}, lambda step, total, preview: previews.append(preview),
                       lambda: False)
    shown = [p for p in previews if p is not None]
    assert len(shown) == JOB["steps"] - 1      # none at the last step: the result follows
    assert (shown[0].width, shown[0].height) == (SIZE // 8, SIZE // 8)


# ------------------------------------------------------------------ refusals

DEPTH = _upload_mask(np.full((SIZE, SIZE), 128))


@pytest.mark.parametrize("job, field", [
    (dict(cache_interval=2), "job.cache_interval"),
    (dict(scheduler="dpmpp_2m"), "job.scheduler"),
    (dict(sampler_preset="lcm_4"), "job.sampler_preset"),
])
def test_what_transformers_cannot_do_fails_the_job_naming_the_field(generator, model, job, field):
    with pytest.raises(ProtocolError) as err:
        _run(generator, [DEPTH], model=model, **job)
    assert err.value.code == ErrorCode.UNSUPPORTED
    assert err.value.field == field
    assert f"({store_family(model)})" in err.value.message


def test_the_refused_fields_are_the_protocol_family_table(generator):
    """Add-ons leave out what protocol.families lists; the daemon refuses those fields and
    runs Flux's own sampler under both Euler names."""
    from protocol.families import SAMPLERS, unsupported_fields

    # Flux and SD3 run their ControlNets and LoRAs (test_flux_controls.py)
    assert set(unsupported_fields("flux")) == {"regions", "references", "cache_interval"}
    assert unsupported_fields("sd3") == unsupported_fields("flux")
    assert unsupported_fields("sd15") == () and "sd15" not in SAMPLERS
    euler = _rgba(_run(generator, scheduler="euler"))
    assert euler.tobytes() == _rgba(_run(generator, scheduler="euler_a")).tobytes()


def test_four_step_presets_without_guidance_run_as_schnell_and_turbo_sample(generator, model):
    """lightning_4 (Euler, 4 steps, no guidance) is FLUX.1-schnell's and SD3.5-turbo's
    recipe too; the settled request shows what ran."""
    out = _run(generator, model=model, sampler_preset="lightning_4")
    assert (out.params.steps, out.params.guidance, out.params.scheduler) == (4, 1.0, "euler")
    again = _run(generator, model=model, steps=4, guidance=1.0, scheduler="euler")
    assert _rgba(out).tobytes() == _rgba(again).tobytes()


@pytest.mark.parametrize("preset", ["schnell_4", "turbo_4"])
def test_schnell_and_turbo_presets_sample_four_flow_steps_without_guidance(generator, model, preset):
    out = _run(generator, model=model, sampler_preset=preset)
    assert (out.params.steps, out.params.guidance, out.params.scheduler) == (4, 0.0, "euler")
    again = _run(generator, model=model, steps=4, guidance=0.0, scheduler="euler")
    assert _rgba(out).tobytes() == _rgba(again).tobytes()


@pytest.mark.parametrize("name, steps, guidance", [
    ("tiny-flux", 28, 3.5), ("tiny-sd3", 28, 4.5), ("tiny-chroma", 40, 3.0),
    ("tiny-zimage", 9, 0.0), ("tiny", 20, 7.0)])
def test_a_job_leaving_steps_and_guidance_out_runs_the_models_recommended(
        generator, name, steps, guidance):
    job = {**JOB, "steps": None, "guidance": None, "width": 32, "height": 32}
    out = _run(generator, model=name, **job)
    assert (out.params.steps, out.params.guidance) == (steps, guidance)
    explicit = _run(generator, model=name, **{**job, "steps": steps, "guidance": guidance})
    assert _rgba(out).tobytes() == _rgba(explicit).tobytes()


def test_a_flux_model_without_guidance_embedding_defaults_to_schnells_four_steps(store, tmp_path):
    """FLUX.1-schnell is a Flux transformer without the guidance embedding: jobs leaving
    steps and guidance out run its 4 steps without guidance."""
    folder = tmp_path / "schnell"
    shutil.copytree(store.resolve("tiny-flux").path, folder)
    config = folder / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "guidance_embeds": False}))
    schnell = ModelStore("cpu", torch.float32, tmp_path, search_dirs=[tmp_path],
                         hf_cache=tmp_path / "no-hf-cache")
    out = _run(DiffusionGenerator(schnell), model="schnell", steps=None, guidance=None)
    assert (out.params.steps, out.params.guidance) == (4, 0.0)


# ------------------------------------------------------------------ seamless tiling

@pytest.mark.parametrize("model", EVERY_FAMILY)
def test_tiled_jobs_reproduce_and_differ_from_untiled(generator, model):
    tiled = _rgba(_run(generator, tiling="x", model=model))
    assert tiled.tobytes() == _rgba(_run(generator, tiling="x", model=model)).tobytes()
    assert tiled.tobytes() != _rgba(_run(generator, model=model)).tobytes()


class _PositionStamp(torch.nn.Module):
    """Stands in for a transformer whose prediction depends on position: adds a fixed
    pattern, so where the wrapper put the latent shows in what comes back."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.pattern = torch.randn(shape, generator=torch.Generator().manual_seed(1))

    def forward(self, hidden_states, **_):
        return (hidden_states + self.pattern,)


@pytest.mark.parametrize("packed", [True, False])
def test_rolled_transformer_moves_the_seam_every_call_and_predicts_in_place(packed):
    rows, cols = 4, 6                                   # tokens of a 96x64 image
    latents = torch.randn(1, rows * cols, 64) if packed else torch.randn(1, 16, 2 * rows, 2 * cols)
    for axes in (TileAxes(True, False), TileAxes(False, True), TileAxes(True, True)):
        stamp = _PositionStamp(tuple(latents.shape))
        rolled = RolledTransformer(stamp, axes, width=96, height=64, packed=packed, seed=3)
        for _ in range(6):
            out = rolled(latents)[0]
            dx, dy = rolled.offsets[-1]
            # the latent comes back where it was; the position pattern moved by the offset
            assert torch.allclose(out - latents, rolled.roll(stamp.pattern, -dx, -dy), atol=1e-6)
        dxs, dys = zip(*rolled.offsets)
        assert (len(set(dxs)) > 1) == axes.x and (len(set(dys)) > 1) == axes.y
        assert (set(dxs) == {0}) == (not axes.x) and (set(dys) == {0}) == (not axes.y)
    assert rolled.roll(rolled.roll(latents, 2, 1), -2, -1).equal(latents)


@pytest.mark.parametrize("model", EVERY_FAMILY)
def test_tiled_inpaint_and_make_seamless_keep_what_they_do_not_repaint(generator, model):
    init = _upload_rgba(4)
    original = np.frombuffer(init.data, np.uint8).reshape(SIZE, SIZE, 4)
    seamless = _rgba(_run(generator, [init], kind="make_seamless", init_image=init.id,
                          tiling="x", seam_width=16, model=model))
    # the 16 px band around the wrap edge is repainted; the columns between stay as they were
    assert seamless[:, 8:SIZE - 8].tobytes() == original[:, 8:SIZE - 8].tobytes()
    assert (seamless[:, :8] != original[:, :8]).any()
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, :12] = 255
    frame = _upload_mask(mask)
    tiled = _rgba(_run(generator, [init, frame], kind="inpaint", init_image=init.id,
                       mask=frame.id, tiling="both", model=model))
    assert tiled[:, 12:].tobytes() == original[:, 12:].tobytes()


def test_flux_vae_decode_wraps_on_the_tiled_axis(store):
    """The last stage of a tiled Flux job: its 16-channel VAE decodes with circular padding,
    so a rolled latent decodes to the rolled image on the tiled axis (not on the other)."""
    vae = store.use("tiny-flux").pipe.vae
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with wrapped_convolutions([vae], TileAxes(True, False)):
        image = torch.tensor(decode_rgb(vae, latents)).int()
        rolled_x = torch.tensor(decode_rgb(vae, torch.roll(latents, 2, dims=-1))).int()
        rolled_y = torch.tensor(decode_rgb(vae, torch.roll(latents, 2, dims=-2))).int()
    assert (torch.roll(image, 16, dims=2) - rolled_x).abs().max() <= 1    # uint8 rounding
    assert (torch.roll(image, 16, dims=1) - rolled_y).abs().max() > 8


def test_gpu_levers_leave_out_what_a_transformer_lacks_and_jobs_still_run(atelier_home):
    """A GPU daemon compiles the UNet and the VAE decoder and warms them up; a transformer
    model has no UNet: that lever is skipped, the decoder is compiled (eager backend here)
    and warmed up through Flux jobs, and jobs run."""
    from backend.models.accel import COMPILE_UNET, COMPILE_VAE_DECODE, AccelOptions

    options = AccelOptions(compile_unet=True, compile_vae_decode=True, fuse_qkv=True,
                           compile_backend="eager")
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache", accel=options)
    generator = DiffusionGenerator(store)
    model = store.load("tiny-flux")
    assert COMPILE_UNET in model.accel.skipped and COMPILE_VAE_DECODE in model.accel.applied
    assert _rgba(_run(generator, tiling="both")).shape == (SIZE, SIZE, 4)


# ------------------------------------------------------------------ over the websocket

def test_a_flux_job_over_the_daemon_and_a_wrong_combination_failing(start_daemon):
    daemon = start_daemon("--model", "tiny-flux")
    with AtelierClient(daemon.url, client_name="test_flux") as client:
        client.wait_connected()
        assert {"family:flux", "family:flux_fill", "family:flux_control",
                "family:sd3"} <= set(client.welcome.capabilities)
        listed = client.call(Models, client.list_models, timeout=60)
        families_listed = {m.name: m.family for m in listed.models}
        assert (families_listed["tiny-flux"], families_listed["tiny-sd3"]) == ("flux", "sd3")
        done = client.run_job(GenerateRequest(**JOB), timeout=120)
        assert isinstance(done, JobDone), done
        assert done.result.model == "tiny-flux"
        assert (done.images[0].width, done.images[0].height) == (SIZE, SIZE)
        # an SD1.5 ControlNet on Flux fails that job, naming the field; the daemon goes on
        depth = make_upload(PixelFormat.GRAY8, SIZE, SIZE, bytes(SIZE * SIZE))
        wrong = GenerateRequest(**JOB, controls=[ControlLayer(kind="depth", image=depth.id,
                                                              model="tiny-controlnet")])
        with pytest.raises(ProtocolError) as err:
            client.run_job(wrong, [depth], timeout=120)
        assert (err.value.code, err.value.field) == (ErrorCode.INVALID_FIELD,
                                                     "job.controls[0].model")
        assert "SD1.5/SDXL" in err.value.message
        assert isinstance(client.run_job(GenerateRequest(**JOB), timeout=120), JobDone)


# ------------------------------------------------------------------ FLUX.1-Fill

def _fill_job(**job) -> tuple[list[ImageFrame], dict]:
    init = _upload_rgba(2)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:40, 20:44] = 255
    frame = _upload_mask(mask)
    return [init, frame], dict(kind="inpaint", init_image=init.id, mask=frame.id, strength=1.0,
                               context_padding=8, model="tiny-flux-fill", **job)


def test_flux_fill_inpaints_with_its_own_pipeline_and_keeps_every_unmasked_pixel(store, generator):
    """FLUX.1-Fill (its transformer reads the masked image and the mask) is its own family,
    run through FluxFillPipeline: its inpaint reproduces, follows the seed, and keeps every
    pixel outside the mask byte-identical; a job leaving steps and guidance out runs its
    card's 50 steps at guidance 30."""
    uploads, job = _fill_job()
    listed = {info.name: info.family for info in store.available()}
    assert listed["tiny-flux-fill"] == families.FLUX_FILL
    first = _run(generator, uploads, **job)
    assert store.active.family == families.FLUX_FILL
    assert type(store.pipeline("inpaint")).__name__ == "FluxFillPipeline"
    out = _rgba(first)
    assert out.tobytes() == _rgba(_run(generator, uploads, **job)).tobytes()
    assert out.tobytes() != _rgba(_run(generator, uploads, **{**job, "seed": 8})).tobytes()
    original = np.frombuffer(uploads[0].data, np.uint8).reshape(SIZE, SIZE, 4)
    outside = np.frombuffer(uploads[1].data, np.uint8).reshape(SIZE, SIZE) == 0
    assert out[outside].tobytes() == original[outside].tobytes()
    assert (out[~outside] != original[~outside]).any()
    # Fill's transformer is not Flux's: the same job on tiny-flux is another picture
    assert out.tobytes() != _rgba(_run(generator, uploads, **{**job, "model": "tiny-flux"})).tobytes()
    defaults = _run(generator, uploads, **{**job, "steps": None, "guidance": None})
    assert (defaults.params.steps, defaults.params.guidance) == (50, 30.0)
    store.use_default()


@pytest.mark.parametrize("change, field", [
    (dict(kind="txt2img", init_image=None, mask=None), "kind"),
    (dict(kind="img2img", mask=None), "kind"),
    (dict(controls=[ControlLayer(kind="depth", image=DEPTH.id)]), "job.controls"),
])
def test_flux_fill_refuses_what_it_cannot_run_naming_the_field(store, generator, change, field):
    uploads, job = _fill_job()
    with pytest.raises(ProtocolError) as err:
        _run(generator, [*uploads, DEPTH], **{**job, **change})
    assert (err.value.code, err.value.field) == (ErrorCode.UNSUPPORTED, field), err.value.message
    store.use_default()
