"""The newer diffusion-transformer families, Chroma and Z-Image, on their tiny
random-weight models (backend/models/tiny_chroma.py, tiny_zimage.py), loaded through the
same store, resolver and catalog as a user's folders, through the code Flux and SD3 run
(pipelines/dit.py). Every job test runs on both families; txt2img's seeds, inpaint's kept
pixels, the recommended steps and guidance, and tiled jobs (txt2img, inpaint, make_seamless)
are tested for every family in test_flux.py.

64x64 images and 3 steps: each job takes a few tenths of a second on a CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.models import families
from backend.models.store import ModelStore
from backend.pipelines.dit import RolledTransformer
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.tiling import TileAxes
from protocol.client import AtelierClient
from protocol.errors import ErrorCode, ProtocolError
from protocol.events import JobDone
from protocol.families import unsupported_fields
from protocol.messages import ControlLayer, GenerateRequest, LoraWeight, Models
from test_flux import JOB, SIZE, _PositionStamp, _rgba, _run, _upload_mask, _upload_rgba

FAMILY = {"tiny-chroma": families.CHROMA, "tiny-zimage": families.ZIMAGE}
PIPELINE = {"tiny-chroma": "ChromaPipeline", "tiny-zimage": "ZImagePipeline"}


@pytest.fixture(scope="module")
def store(atelier_home: Path) -> ModelStore:
    return ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                      hf_cache=atelier_home / "no-hf-cache")


@pytest.fixture(scope="module")
def generator(store: ModelStore) -> DiffusionGenerator:
    return DiffusionGenerator(store)


@pytest.fixture(params=sorted(FAMILY))
def model(request) -> str:
    return request.param


# ------------------------------------------------------------------ loading

def test_tiny_models_load_by_name_and_are_listed_with_their_family(store, model):
    loaded = store.use(model)
    assert (loaded.name, loaded.family) == (model, FAMILY[model])
    assert type(loaded.pipe).__name__ == PIPELINE[model]
    assert families.is_transformer(loaded.family)
    listed = {info.name: info for info in store.available()}
    assert listed[model].family == FAMILY[model] and listed[model].kind == "checkpoint"
    weights = list(loaded.source.path.rglob("*.safetensors"))
    assert weights and not list(loaded.source.path.rglob("*.bin"))


def test_a_folder_named_by_path_is_detected_from_model_index(store, tmp_path, model):
    folder = tmp_path / "my-model"
    shutil.copytree(store.resolve(model).path, folder)
    assert families.family_of_folder(folder) == FAMILY[model]
    other = ModelStore("cpu", torch.float32, tmp_path, search_dirs=[tmp_path],
                       hf_cache=tmp_path / "no-hf-cache")
    assert other.load("my-model").family == FAMILY[model]
    assert {info.name: info.family for info in other.available()}["my-model"] == FAMILY[model]
    # Only the family's text-to-image pipeline names it: an edit pipeline's folder is not taken.
    index = json.loads((folder / "model_index.json").read_text())
    omni = {**index, "_class_name": "ZImageOmniPipeline"}
    (folder / "model_index.json").write_text(json.dumps(omni))
    assert families.family_of_folder(folder) == families.UNKNOWN


# ------------------------------------------------------------------ job kinds

def test_true_guidance_takes_the_negative_prompt_and_the_guidance(generator, model):
    """Chroma and Z-Image guide by classifier-free guidance (no distilled guidance): the
    negative prompt and the guidance scale both change the result."""
    plain = _rgba(_run(generator, model=model)).tobytes()
    assert plain != _rgba(_run(generator, model=model, negative_prompt="blue sky")).tobytes()
    assert plain != _rgba(_run(generator, model=model, guidance=1.5)).tobytes()


def test_img2img_starts_from_the_init_image(generator, model):
    init = _upload_rgba(1)
    job = dict(kind="img2img", init_image=init.id, model=model)
    low = _rgba(_run(generator, [init], **job, strength=0.34))
    assert low.tobytes() == _rgba(_run(generator, [init], **job, strength=0.34)).tobytes()
    # another init image, the same seed: another picture (the tiny random transformers
    # drift far in a few steps, so nearness to the init is no test here)
    other = _upload_rgba(5)
    moved = _rgba(_run(generator, [other], **{**job, "init_image": other.id}, strength=0.34))
    assert low.tobytes() != moved.tobytes()
    assert low.tobytes() != _rgba(_run(generator, model=model)).tobytes()


def test_inpaint_runs_the_familys_own_inpaint_pipeline(generator, store, model):
    """(test_flux.py checks that the unmasked pixels are kept, for every family.)"""
    init = _upload_rgba(2)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:40, 20:44] = 255
    frame = _upload_mask(mask)
    _run(generator, [init, frame], kind="inpaint", init_image=init.id, mask=frame.id,
         strength=1.0, context_padding=8, model=model)
    # the init blended in at every step, on init latents
    runs = {"tiny-chroma": "ChromaInpaintLatents", "tiny-zimage": "ZImageInpaintLatents"}
    assert type(store.pipeline("inpaint")).__name__ == runs[model]


def test_previews_show_the_latents_at_latent_size(generator, model):
    previews = []
    generator.generate(GenerateRequest(**JOB, model=model, preview_every=1), {},
                       lambda step, total, preview: previews.append(preview), lambda: False)
    shown = [p for p in previews if p is not None]
    assert len(shown) == JOB["steps"] - 1
    assert (shown[0].width, shown[0].height) == (SIZE // 8, SIZE // 8)


# ------------------------------------------------------------------ refusals

DEPTH = _upload_mask(np.full((SIZE, SIZE), 128))


@pytest.mark.parametrize("job, field", [
    (dict(controls=[ControlLayer(kind="depth", image=DEPTH.id, model="tiny-controlnet")]),
     "job.controls"),
    (dict(loras=[LoraWeight(name="tiny_style", weight=0.8)]), "loras[0].name"),
    (dict(cache_interval=2), "job.cache_interval"),
    (dict(scheduler="dpmpp_2m"), "job.scheduler"),
    (dict(sampler_preset="lcm_4"), "job.sampler_preset"),
])
def test_what_the_families_cannot_do_fails_the_job_naming_the_field(generator, model, job, field):
    assert {"controls", "loras", "regions", "references"} <= set(unsupported_fields(FAMILY[model]))
    with pytest.raises(ProtocolError) as err:
        _run(generator, [DEPTH], model=model, **job)
    assert (err.value.code, err.value.field) == (ErrorCode.UNSUPPORTED, field)
    assert f"({FAMILY[model]})" in err.value.message


# ------------------------------------------------------------------ seamless tiling

def test_rolled_transformer_rolls_z_images_list_of_latents(generator):
    """Z-Image's transformer takes one ``(C, 1, h, w)`` latent per image in a list and
    returns a list: each is rolled by the call's offset and its prediction rolled back."""
    latents = [torch.randn(16, 1, 8, 12) for _ in range(2)]     # tokens of a 96x64 image
    for axes in (TileAxes(True, False), TileAxes(False, True), TileAxes(True, True)):
        stamp = _PositionStamp((16, 1, 8, 12))

        def listwise(hidden_states, **_):
            return ([one + stamp.pattern for one in hidden_states],)

        rolled = RolledTransformer(listwise, axes, width=96, height=64, packed=False, seed=3)
        for _ in range(6):
            out = rolled(latents)[0]
            dx, dy = rolled.offsets[-1]
            for before, after in zip(latents, out):
                moved = rolled.roll(stamp.pattern, -dx, -dy)
                assert torch.allclose(after - before, moved, atol=1e-6)
        dxs, dys = zip(*rolled.offsets)
        assert (len(set(dxs)) > 1) == axes.x and (len(set(dys)) > 1) == axes.y


def test_a_tiled_job_runs_the_rolled_transformer_at_every_step(generator, model, monkeypatch):
    """In a real tiled job on the family's pipeline (Chroma's batch of packed tokens,
    Z-Image's list of latents) every transformer call goes through the roll, at offsets
    that move on the tiled axis only."""
    seen: list[tuple[int, int]] = []
    forward = RolledTransformer.forward

    def recording(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        seen.append(self.offsets[-1])
        return out

    monkeypatch.setattr(RolledTransformer, "forward", recording)
    _run(generator, tiling="y", model=model, steps=6)
    assert len(seen) >= 6       # one call per step (or two, for guidance, on some families)
    assert {dx for dx, _ in seen} == {0} and len({dy for _, dy in seen}) > 1


# ------------------------------------------------------------------ over the websocket

def test_jobs_over_the_daemon_name_the_new_families(start_daemon):
    daemon = start_daemon("--model", "tiny-chroma")
    with AtelierClient(daemon.url, client_name="test_dit_families") as client:
        client.wait_connected()
        assert {"family:chroma", "family:zimage"} <= set(client.welcome.capabilities)
        models = client.call(Models, client.list_models, timeout=60).models
        listed = {m.name: m.family for m in models}
        assert (listed["tiny-chroma"], listed["tiny-zimage"]) == ("chroma", "zimage")
        for name in ("tiny-chroma", "tiny-zimage"):
            done = client.run_job(GenerateRequest(**{**JOB, "model": name}), timeout=120)
            assert isinstance(done, JobDone), done
            assert done.result.model == name


def test_gpu_levers_apply_and_jobs_still_run(atelier_home, model):
    """A GPU daemon's defaults (fused QKV where the transformer has it, the VAE decoder
    compiled: eager backend here) on these families: the UNet lever is skipped, the
    decoder's applied, and a tiled job runs."""
    from backend.models.accel import COMPILE_UNET, COMPILE_VAE_DECODE, AccelOptions

    options = AccelOptions(compile_unet=True, compile_vae_decode=True, fuse_qkv=True,
                           compile_backend="eager")
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache", accel=options)
    loaded = store.load(model)
    assert COMPILE_UNET in loaded.accel.skipped and COMPILE_VAE_DECODE in loaded.accel.applied
    out = _rgba(_run(DiffusionGenerator(store), model=model, tiling="both"))
    assert out.shape == (SIZE, SIZE, 4)


def test_single_transformer_files_are_listed_with_their_family(store, tmp_path):
    """ComfyUI keeps Chroma and Z-Image transformers as single files too (diffusers' or the
    original tensor names). They are told from Flux (Chroma has Flux's blocks and its own
    modulation network) and listed with their family. They load as Flux's do, with their
    text encoder and VAE files found beside them (test_dit_files.py runs them); here, with
    none beside them, the missing text encoder is named."""
    from safetensors.torch import save_file

    models = tmp_path / "models"
    (models / "unet").mkdir(parents=True)
    for name in FAMILY:
        weights = store.resolve(name).path / "transformer" / "diffusion_pytorch_model.safetensors"
        shutil.copy(weights, models / "unet" / f"{name}.safetensors")
    original = {"chroma": ("distilled_guidance_layer.in_proj.weight",
                           "double_blocks.0.img_attn.qkv.weight", "img_in.weight"),
                "zimage": ("noise_refiner.0.attention.qkv.weight",
                           "context_refiner.0.attention.qkv.weight",
                           "layers.0.attention.qkv.weight", "cap_embedder.1.weight")}
    for family, keys in original.items():      # ComfyUI's files, the original tensor names
        save_file({k: torch.zeros(2, 2) for k in keys},
                  str(models / "unet" / f"{family}-comfy.safetensors"))
    user = ModelStore("cpu", torch.float32, tmp_path, search_dirs=[models],
                      hf_cache=tmp_path / "no-hf-cache")
    listed = {info.name: info.family for info in user.available()}
    assert (listed["unet/tiny-chroma.safetensors"], listed["unet/chroma-comfy.safetensors"]) == (
        "chroma", "chroma")
    assert (listed["unet/tiny-zimage.safetensors"], listed["unet/zimage-comfy.safetensors"]) == (
        "zimage", "zimage")
    for name, encoder in (("unet/tiny-chroma.safetensors", "T5-XXL"),
                          ("unet/tiny-zimage.safetensors", "Qwen3-4B")):
        with pytest.raises(ProtocolError) as err:
            user.load(name)
        assert (err.value.code, err.value.field) == (ErrorCode.MODEL_NOT_FOUND, "model")
        assert encoder in err.value.message and "text_encoders/" in err.value.message
