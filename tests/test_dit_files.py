"""Flux.1, Chroma, SD3 and Z-Image as ComfyUI users keep them (dit_files.py): a transformer-only file in
``models/unet`` or ``models/diffusion_models`` (diffusers' or the original tensor names),
text encoders in ``models/text_encoders``, the VAE in ``models/vae``. The files are the
tiny models' own weights exported by ``tiny_dit_files.py`` and loaded through the same
store, resolver and catalog as a user's files; a job on them gives the very pixels the
diffusers-folder model gives.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (ChromaTransformer2DModel, FluxTransformer2DModel, SD3Transformer2DModel,
                       ZImageTransformer2DModel)
from diffusers.loaders.single_file_utils import (convert_chroma_transformer_checkpoint_to_diffusers,
                                                 convert_flux_transformer_checkpoint_to_diffusers,
                                                 convert_sd3_transformer_checkpoint_to_diffusers,
                                                 convert_z_image_transformer_checkpoint_to_diffusers)
from safetensors.torch import load_file

from backend.models import dit_keys, families
from backend.models.dit_files import config_folder
from backend.models.file_kinds import TensorHeader
from backend.models.single_file import CONFIGS
from backend.models.sources import ensure_tiny
from backend.models.store import ModelStore
from backend.models.tiny_dit_files import (TRANSFORMER_FILE, export_gguf, export_parts,
                                          export_transformer)
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.pixels import pixels_to_array
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import GenerateRequest

JOB = dict(prompt="a red stone wall", width=64, height=64, steps=2, guidance=3.5, seed=7)
# (tiny model, file name the job names, naming)
LAYOUTS = [("tiny-flux", "unet/flux-tiny.safetensors", "diffusers"),
           ("tiny-flux", "diffusion_models/flux-tiny-bfl.safetensors", "original"),
           ("tiny-sd3", "diffusion_models/sd3-tiny.safetensors", "diffusers"),
           ("tiny-sd3", "unet/sd3-tiny-sai.safetensors", "original"),
           ("tiny-chroma", "unet/chroma-tiny.safetensors", "diffusers"),
           ("tiny-chroma", "diffusion_models/chroma-tiny-original.safetensors", "original"),
           ("tiny-zimage", "unet/zimage-tiny.safetensors", "diffusers"),
           ("tiny-zimage", "diffusion_models/zimage-tiny-original.safetensors", "original")]
FAMILY = {"tiny-flux": families.FLUX, "tiny-sd3": families.SD3, "tiny-chroma": families.CHROMA,
          "tiny-zimage": families.ZIMAGE}
# city96's layout: the original names, Q8_0 weights
GGUF = {"tiny-flux": "unet/flux-tiny-Q8_0.gguf", "tiny-sd3": "unet/sd3-tiny-Q8_0.gguf",
        "tiny-chroma": "unet/chroma-tiny-Q8_0.gguf", "tiny-zimage": "unet/zimage-tiny-Q8_0.gguf"}
COMPONENTS = {families.FLUX: ("transformer", "vae", "text_encoder", "text_encoder_2"),
              families.SD3: ("transformer", "vae", "text_encoder", "text_encoder_2",
                             "text_encoder_3"),
              families.CHROMA: ("transformer", "vae", "text_encoder"),
              families.ZIMAGE: ("transformer", "vae", "text_encoder")}


@pytest.fixture(scope="module")
def comfy(atelier_home: Path, tmp_path_factory) -> dict[str, Path]:
    """One ComfyUI models folder per family, built once: tiny name -> models folder."""
    folders = {}
    for tiny, family in FAMILY.items():
        models = tmp_path_factory.mktemp(f"comfy-{tiny}") / "models"
        source = ensure_tiny(tiny, atelier_home / "models")
        for name, file, naming in LAYOUTS:
            if name == tiny:
                export_transformer(source, family, models / file, naming)
        export_parts(source, family, models)
        export_gguf(source, family, models / GGUF[tiny])
        folders[tiny] = models
    return folders


def _store(home: Path, models: Path, **extra) -> ModelStore:
    return ModelStore("cpu", torch.float32, home, search_dirs=[models],
                      hf_cache=home / "no-hf-cache", **extra)


def _pixels(generator: DiffusionGenerator, **job) -> bytes:
    out = generator.generate(GenerateRequest(**{**JOB, **job}), {}, lambda *_: None, lambda: False)
    return pixels_to_array(out.images[0].pixels).tobytes()


# ------------------------------------------------------------------ tensor names

@pytest.mark.parametrize("family, tiny, full, converter", [
    (families.FLUX, "tiny-flux", lambda: FluxTransformer2DModel(
        num_layers=1, num_single_layers=1, guidance_embeds=True),
     convert_flux_transformer_checkpoint_to_diffusers),
    # SD3.5 medium's shape: RMS q/k norms and a second attention in the first block
    (families.SD3, "tiny-sd3", lambda: SD3Transformer2DModel(
        num_layers=2, num_attention_heads=24, caption_projection_dim=1536,
        qk_norm="rms_norm", dual_attention_layers=(0,), pos_embed_max_size=96),
     convert_sd3_transformer_checkpoint_to_diffusers),
    (families.CHROMA, "tiny-chroma", lambda: ChromaTransformer2DModel(
        num_layers=1, num_single_layers=1, approximator_layers=2),
     convert_chroma_transformer_checkpoint_to_diffusers),
    (families.ZIMAGE, "tiny-zimage", lambda: ZImageTransformer2DModel(n_layers=1, n_refiner_layers=1),
     convert_z_image_transformer_checkpoint_to_diffusers)])
def test_original_names_round_trip_and_agree_with_diffusers_converters(
        atelier_home, family, tiny, full, converter):
    folder = ensure_tiny(tiny, atelier_home / "models")
    state = load_file(str(folder / "transformer" / TRANSFORMER_FILE))
    original = dit_keys.to_original(family, state)
    assert dit_keys.is_original(list(original)) and not dit_keys.is_original(list(state))
    back = dit_keys.to_diffusers(family, original)
    assert set(back) == set(state) and all(back[k].equal(state[k]) for k in state)
    # At full width (which diffusers' Flux converter assumes) both converters give the
    # same names and shapes; on the meta device, so nothing is allocated.
    with torch.device("meta"):
        model = full()
    full_original = dit_keys.to_original(family, model.state_dict())
    theirs = converter(dict(full_original))
    ours = dit_keys.to_diffusers(family, full_original)
    assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant, cls, billions", [
    ("flux_dev", FluxTransformer2DModel, (11.8, 12.0)),
    ("flux_schnell", FluxTransformer2DModel, (11.8, 12.0)),
    ("sd3_medium", SD3Transformer2DModel, (2.0, 2.1)),
    ("sd35_medium", SD3Transformer2DModel, (2.2, 2.5)),
    ("sd35_large", SD3Transformer2DModel, (8.0, 8.2)),
    ("chroma", ChromaTransformer2DModel, (8.8, 9.0)),
    ("zimage_turbo", ZImageTransformer2DModel, (6.1, 6.2))])
def test_full_size_transformer_files_pick_their_shipped_config(variant, cls, billions, tmp_path):
    """A header shaped like each published transformer (built on the meta device from the
    shipped config, with the published parameter count) picks that config, in diffusers'
    names and in the original ones."""
    config = cls.load_config(str(CONFIGS / variant), subfolder="transformer")
    with torch.device("meta"):
        model = cls.from_config(config)
    low, high = billions
    assert low < sum(p.numel() for p in model.parameters()) / 1e9 < high
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    family = {FluxTransformer2DModel: families.FLUX, SD3Transformer2DModel: families.SD3,
              ChromaTransformer2DModel: families.CHROMA, ZImageTransformer2DModel: families.ZIMAGE}[cls]
    headers = [shapes, {k: tuple(v.shape) for k, v in
                        dit_keys.to_original(family, model.state_dict()).items()}]
    for header in headers:
        assert families.family_of_checkpoint_keys(header, None) == family
        never = lambda name: pytest.fail(f"a full-size file asked for {name}")  # noqa: E731
        picked = config_folder(tmp_path / "x.safetensors", family, TensorHeader(header, {}), never)
        assert picked == CONFIGS / variant


def test_shipped_text_encoder_configs_are_the_published_models():
    """CLIP-L 123 M, CLIP-G 695 M and T5-XXL's encoder 4.76 B parameters (meta device)."""
    from transformers import AutoConfig, CLIPTextModelWithProjection, T5EncoderModel

    for folder, cls, (low, high) in (
            ("sd35_large/text_encoder", CLIPTextModelWithProjection, (0.12, 0.13)),
            ("sd35_large/text_encoder_2", CLIPTextModelWithProjection, (0.69, 0.70)),
            ("flux_dev/text_encoder_2", T5EncoderModel, (4.7, 4.8))):
        with torch.device("meta"):
            model = cls(AutoConfig.from_pretrained(str(CONFIGS / folder)))
        assert low < sum(p.numel() for p in model.parameters()) / 1e9 < high, folder


# ------------------------------------------------------------------ loading and jobs

@pytest.mark.parametrize("tiny, name, naming", LAYOUTS)
def test_split_files_load_listed_with_their_family_and_run_like_the_folder(
        atelier_home, comfy, tiny, name, naming):
    store = _store(atelier_home, comfy[tiny])
    listed = {info.name: (info.family, info.kind) for info in store.available()}
    family = FAMILY[tiny]
    assert listed[name] == (family, "checkpoint")
    # the text encoders and the VAE are parts, not models a job could name
    assert not [n for n in listed if n.startswith(("text_encoders/", "vae/"))]
    generator = DiffusionGenerator(store)
    split = store.use(name)
    assert split.family == family and split.source.kind == "single_file"
    folder = store.use(tiny)
    for component in COMPONENTS[family]:
        mine, theirs = (getattr(m.pipe, component).state_dict() for m in (split, folder))
        assert set(mine) == set(theirs) and all(mine[k].equal(theirs[k]) for k in mine), component
    first = _pixels(generator, model=name)
    assert first == _pixels(generator, model=name) == _pixels(generator, model=tiny)
    assert first != _pixels(generator, model=name, seed=8)


@pytest.mark.parametrize("tiny, family, config, file", [
    ("tiny-flux-fill", families.FLUX_FILL, "flux_fill", "flux1-fill-tiny.safetensors"),
    ("tiny-flux-control", families.FLUX_CONTROL, "flux_control", "flux1-depth-tiny.safetensors")])
def test_flux_fill_and_depth_dev_files_are_families_of_their_own_and_run_like_their_folders(
        atelier_home, comfy, tmp_path, tiny, family, config, file):
    """ComfyUI's flux1-fill-dev and flux1-depth-dev (or -canny-dev) transformer files: a
    Flux transformer whose input also takes the mask (Fill: 384 channels at full size) or a
    control image's latents (Depth/Canny-dev: 128) is that family, listed so, loaded with
    its shipped config (the published 11.9 B parameters) or the tiny one, and a job on it
    (Fill: inpaint; Depth-dev: with its depth image) gives the folder model's pixels."""
    from backend.models.dit_files import shipped_variant
    from backend.models.tiny_dit_files import export_transformer
    from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
    from protocol.messages import ControlLayer

    shipped = FluxTransformer2DModel.load_config(str(CONFIGS / config), subfolder="transformer")
    with torch.device("meta"):
        full = FluxTransformer2DModel.from_config(shipped)
    assert 11.8 < sum(p.numel() for p in full.parameters()) / 1e9 < 12.0
    header = TensorHeader({k: tuple(v.shape) for k, v in
                           dit_keys.to_original(family, full.state_dict()).items()}, {})
    assert shipped_variant(family, header) == config
    models = tmp_path / "models"
    shutil.copytree(comfy["tiny-flux"], models)
    source = ensure_tiny(tiny, atelier_home / "models")
    name = f"diffusion_models/{file}"
    export_transformer(source, family, models / name, "original")
    # these take Flux's text encoders and VAE: the tiny model's own, named on the command line
    parts = export_parts(source, family, tmp_path / "parts")
    store = _store(atelier_home, models, companion_files=list(parts.values()))
    listed = {info.name: info.family for info in store.available()}
    assert listed[name] == family
    assert listed["diffusion_models/flux-tiny-bfl.safetensors"] == families.FLUX
    rgba = np.random.default_rng(3).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 16:48] = 255
    init = ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, 64, 64, new_id(), rgba.tobytes())
    frame = ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, 64, 64, new_id(), mask.tobytes())
    job = dict(kind="inpaint", init_image=init.id, mask=frame.id, strength=1.0,
               context_padding=8) if family == families.FLUX_FILL else \
        dict(controls=[ControlLayer(kind="depth", image=frame.id)])
    generator = DiffusionGenerator(store)

    def run(model: str) -> bytes:
        request = GenerateRequest(**{**JOB, "guidance": 10.0}, **job, model=model)
        out = generator.generate(request, {init.id: init, frame.id: frame}, lambda *_: None,
                                 lambda: False)
        return pixels_to_array(out.images[0].pixels).tobytes()

    assert run(name) == run(tiny)
    assert store.use(name).family == family


def test_a_missing_text_encoder_names_the_file_and_where_it_goes(atelier_home, comfy, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(comfy["tiny-flux"], models)
    (models / "text_encoders" / "t5xxl.safetensors").unlink()
    store = _store(atelier_home, models)
    with pytest.raises(ProtocolError) as err:
        store.load("unet/flux-tiny.safetensors")
    assert (err.value.code, err.value.field) == (ErrorCode.MODEL_NOT_FOUND, "model")
    assert "T5-XXL" in err.value.message and "text_encoders/" in err.value.message
    assert "t5xxl" in err.value.message
    # a T5 of the wrong width (SD3's tiny one) is not taken for it
    shutil.copy(comfy["tiny-sd3"] / "text_encoders" / "t5xxl.safetensors",
                models / "text_encoders" / "t5xxl.safetensors")
    with pytest.raises(ProtocolError) as err:
        store.load("unet/flux-tiny.safetensors")
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND
    # the operator may name it instead, kept anywhere
    elsewhere = tmp_path / "elsewhere" / "my-t5.safetensors"
    elsewhere.parent.mkdir()
    shutil.copy(comfy["tiny-flux"] / "text_encoders" / "t5xxl.safetensors", elsewhere)
    named = _store(atelier_home, models, companion_files=[elsewhere])
    assert named.load("unet/flux-tiny.safetensors").family == families.FLUX


def test_sd3_runs_without_its_t5_when_none_is_found(atelier_home, comfy, tmp_path, caplog):
    """Stability's SD3 "incl_clips" files come without T5, and the SD3 pipeline runs on
    its CLIPs alone: with no T5 file found, the model loads without it (a warning says
    so) and its jobs reproduce; Flux, which cannot, still names the missing file."""
    models = tmp_path / "models"
    shutil.copytree(comfy["tiny-sd3"], models)
    (models / "text_encoders" / "t5xxl.safetensors").unlink()
    store = _store(atelier_home, models)
    with caplog.at_level("WARNING", logger="backend.models.dit_files"):
        loaded = store.use("diffusion_models/sd3-tiny.safetensors")
    assert loaded.pipe.text_encoder_3 is None and loaded.pipe.tokenizer_3 is None
    assert any("T5-XXL" in r.getMessage() and "without it" in r.getMessage() for r in caplog.records)
    generator = DiffusionGenerator(store)
    name = "diffusion_models/sd3-tiny.safetensors"
    first = _pixels(generator, model=name)
    assert first == _pixels(generator, model=name) != _pixels(generator, model="tiny-sd3")


def test_clip_l_and_clip_g_of_the_same_shape_are_told_apart_by_name(atelier_home, comfy, tmp_path):
    """The tiny SD3's two CLIPs have the same shapes (the real ones differ in width): the
    file name breaks the tie, so swapping the names swaps what loads."""
    models = tmp_path / "models"
    shutil.copytree(comfy["tiny-sd3"], models)
    encoders = models / "text_encoders"
    (encoders / "clip_l.safetensors").rename(encoders / "tmp.safetensors")
    (encoders / "clip_g.safetensors").rename(encoders / "clip_l.safetensors")
    (encoders / "tmp.safetensors").rename(encoders / "clip_g.safetensors")
    swapped = _store(atelier_home, models).load("diffusion_models/sd3-tiny.safetensors").pipe
    folder = _store(atelier_home, models).load("tiny-sd3").pipe
    assert swapped.text_encoder.state_dict().keys() == folder.text_encoder_2.state_dict().keys()
    assert all(a.equal(b) for a, b in zip(swapped.text_encoder.state_dict().values(),
                                          folder.text_encoder_2.state_dict().values()))


@pytest.mark.parametrize("tiny, embedded", [
    ("tiny-flux", ("clip_l", "t5xxl", "vae")),     # everything in one file
    ("tiny-sd3", ("clip_l", "clip_g", "vae")),     # SD3.5's files without T5: it is beside
    ("tiny-chroma", ("t5xxl", "vae")),
    ("tiny-zimage", ("qwen_3_4b", "vae"))])
def test_whole_checkpoints_load_with_what_they_hold_and_find_the_rest(
        atelier_home, comfy, tmp_path, tiny, embedded):
    from backend.models.tiny_dit_files import export_checkpoint

    family = FAMILY[tiny]
    models = tmp_path / "models"
    source = ensure_tiny(tiny, atelier_home / "models")
    export_checkpoint(source, family, models / "checkpoints" / "all-in-one.safetensors", embedded)
    for role in {"clip_l", "clip_g", "t5xxl", "qwen_3_4b"} - set(embedded):
        beside = comfy[tiny] / "text_encoders" / f"{role}.safetensors"
        if beside.is_file():      # a text encoder of the family's, kept as a file of its own
            (models / "text_encoders").mkdir(exist_ok=True)
            shutil.copy(beside, models / "text_encoders")
    store = _store(atelier_home, models)
    name = "checkpoints/all-in-one.safetensors"
    assert {i.name: i.family for i in store.available()}[name] == family
    whole = store.use(name)
    folder = store.use(tiny)
    for component in COMPONENTS[family]:
        mine, theirs = (getattr(m.pipe, component).state_dict() for m in (whole, folder))
        assert set(mine) == set(theirs) and all(mine[k].equal(theirs[k]) for k in mine), component
    generator = DiffusionGenerator(store)
    assert _pixels(generator, model=name) == _pixels(generator, model=tiny)


def test_a_whole_checkpoint_without_its_text_encoders_says_which_is_missing(atelier_home, tmp_path):
    from backend.models.tiny_dit_files import export_checkpoint

    export_checkpoint(ensure_tiny("tiny-flux", atelier_home / "models"), families.FLUX,
                      tmp_path / "models" / "checkpoints" / "bare.safetensors", parts=("vae",))
    with pytest.raises(ProtocolError) as err:
        _store(atelier_home, tmp_path / "models").load("checkpoints/bare.safetensors")
    assert (err.value.code, err.value.field) == (ErrorCode.MODEL_NOT_FOUND, "model")
    assert "CLIP-L" in err.value.message and "text_encoders/" in err.value.message


def test_tokenizers_for_full_size_files_are_looked_for_and_their_absence_explained(
        atelier_home, tmp_path):
    from backend.models.dit_files import _tokenizers

    def missing() -> str:
        with pytest.raises(ProtocolError) as err:
            _tokenizers(CONFIGS / "flux_dev", families.FLUX, tmp_path, tmp_path / "no-hf-cache")
        assert err.value.code == ErrorCode.MODEL_LOAD_FAILED
        assert "atelier models pull" in err.value.message
        return err.value.message

    assert "CLIP tokenizer" in missing()
    tiny = ensure_tiny("tiny-flux", atelier_home / "models")
    shutil.copytree(tiny / "tokenizer", tmp_path / "tokenizers" / "clip")
    assert "T5 tokenizer" in missing()
    shutil.copytree(tiny / "tokenizer_2", tmp_path / "tokenizers" / "t5")
    found = _tokenizers(CONFIGS / "flux_dev", families.FLUX, tmp_path, tmp_path / "no-hf-cache")
    t5 = found["tokenizer_2"]
    assert t5("a red stone wall").input_ids[-1] == t5.eos_token_id == 1    # T5 appends </s>


def test_z_images_qwen_tokenizer_is_looked_for_and_takes_qwens_chat_template(atelier_home, tmp_path):
    """Z-Image's files need the Qwen tokenizer: from Atelier's home, a ComfyUI installation
    or the HF cache; a folder with only its tokenizer.json (no chat template) encodes a
    prompt as the model's own tokenizer does."""
    from backend.models.dit_files import _tokenizers

    with pytest.raises(ProtocolError) as err:
        _tokenizers(CONFIGS / "zimage_turbo", families.ZIMAGE, tmp_path, tmp_path / "no-hf-cache")
    assert err.value.code == ErrorCode.MODEL_LOAD_FAILED
    assert "Qwen tokenizer" in err.value.message
    assert "atelier models pull Qwen/Qwen3-4B" in err.value.message
    tiny = ensure_tiny("tiny-zimage", atelier_home / "models") / "tokenizer"
    prompt = [{"role": "user", "content": "a red stone wall"}]

    def encoded(tokenizer) -> list[int]:
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]

    own = _tokenizers(ensure_tiny("tiny-zimage", atelier_home / "models"), families.ZIMAGE,
                      tmp_path, tmp_path / "no-hf-cache")["tokenizer"]
    for folder, installs in ((tmp_path / "tokenizers" / "qwen", []),
                             (tmp_path / "ComfyUI" / "comfy" / "text_encoders" / "qwen25_tokenizer",
                              [tmp_path / "ComfyUI"])):
        folder.mkdir(parents=True)
        shutil.copy(tiny / "tokenizer.json", folder)
        found = _tokenizers(CONFIGS / "zimage_turbo", families.ZIMAGE, tmp_path / "home"
                            if installs else tmp_path, tmp_path / "no-hf-cache", installs)
        assert encoded(found["tokenizer"]) == encoded(own)
        shutil.rmtree(folder)


def test_a_comfyui_installations_own_tokenizers_are_used(atelier_home, tmp_path):
    """ComfyUI ships the CLIP and T5 tokenizers in its code (comfy/sd1_tokenizer,
    comfy/text_encoders/t5_tokenizer): a models folder inside a ComfyUI installation
    needs nothing fetched."""
    from backend.models.dit_files import _tokenizers, comfy_installs

    comfy = tmp_path / "ComfyUI"
    tiny = ensure_tiny("tiny-flux", atelier_home / "models")
    shutil.copytree(tiny / "tokenizer", comfy / "comfy" / "sd1_tokenizer")
    shutil.copytree(tiny / "tokenizer_2", comfy / "comfy" / "text_encoders" / "t5_tokenizer")
    transformer = comfy / "models" / "unet" / "flux1-dev.safetensors"
    for search_dirs in ([], [comfy / "models"]):     # beside the file, or the folder named
        assert comfy_installs(transformer, search_dirs) == [comfy]
    assert comfy_installs(tmp_path / "elsewhere" / "flux.safetensors", []) == []
    found = _tokenizers(CONFIGS / "flux_dev", families.FLUX, tmp_path / "home",
                        tmp_path / "no-hf-cache", [comfy])
    assert found["tokenizer"].model_max_length == 77
    assert found["tokenizer_2"]("a red stone wall").input_ids[-1] == 1
    assert found["tokenizer"].model_max_length == 77


def test_a_daemon_serves_a_split_flux_file_with_a_text_encoder_named_on_its_command_line(
        comfy, start_daemon, tmp_path):
    """``serve --models-dir <ComfyUI models> --model diffusion_models/...
    --model-part <t5 kept elsewhere>``: listed with its family, and jobs naming it run."""
    from protocol.client import AtelierClient
    from protocol.events import JobDone
    from protocol.messages import Models

    models = tmp_path / "models"
    shutil.copytree(comfy["tiny-flux"], models)
    t5 = tmp_path / "elsewhere" / "t5xxl_fp16.safetensors"
    t5.parent.mkdir()
    (models / "text_encoders" / "t5xxl.safetensors").rename(t5)
    name = "diffusion_models/flux-tiny-bfl.safetensors"
    daemon = start_daemon("--models-dir", str(models), "--model-part", str(t5))
    with AtelierClient(daemon.url, client_name="test_dit_files") as client:
        client.wait_connected()
        listed = {m.name: m.family for m in client.call(Models, client.list_models, timeout=60).models}
        assert listed[name] == "flux" and "text_encoders/clip_l.safetensors" not in listed
        done = client.run_job(GenerateRequest(**JOB, model=name), timeout=120)
        assert isinstance(done, JobDone), done
        assert done.result.model == name


# ------------------------------------------------------------------ GGUF

@pytest.mark.parametrize("tiny", sorted(GGUF))
def test_a_gguf_transformer_loads_quantized_and_its_jobs_reproduce(atelier_home, comfy, tiny):
    """Flux and Chroma through our converter, SD3 and Z-Image through diffusers' (on
    quantized rows all)."""
    from diffusers.quantizers.gguf.utils import GGUFParameter
    from gguf import GGMLQuantizationType

    name = GGUF[tiny]
    family = FAMILY[tiny]
    store = _store(atelier_home, comfy[tiny])
    assert {i.name: i.family for i in store.available()}[name] == family
    generator = DiffusionGenerator(store)
    quantized = store.use(name)
    assert quantized.family == family
    def blocks(transformer: torch.nn.Module) -> torch.nn.ModuleList:
        return getattr(transformer, "transformer_blocks", None) or transformer.layers   # Z-Image's

    first_block = blocks(quantized.pipe.transformer)[0]
    weight = getattr(first_block, "attn", None) or first_block.attention
    assert isinstance(weight.to_q.weight, GGUFParameter)
    assert weight.to_q.weight.quant_type == GGMLQuantizationType.Q8_0
    full = store.use(tiny)
    # the blocks' weights (where a full-size model's are): Q8_0 keeps 34 bytes per 32, not 128
    sizes = [sum(p.numel() * p.element_size() for p in blocks(m.pipe.transformer).parameters())
             for m in (quantized, full)]
    assert sizes[0] < 0.5 * sizes[1]
    first = _pixels(generator, model=name)
    assert first == _pixels(generator, model=name) != _pixels(generator, model=name, seed=8)
    # 8-bit weights move the picture by a few levels at most (Z-Image's by 3, the others' by
    # up to 2), and most pixels not at all
    difference = np.abs(np.frombuffer(first, np.uint8).astype(int)
                        - np.frombuffer(_pixels(generator, model=tiny), np.uint8))
    assert difference.max() <= 4 and difference.mean() < 0.5, (difference.max(), difference.mean())


@pytest.mark.parametrize("tiny, encoder, component", [
    ("tiny-flux", "t5xxl", "text_encoder_2"), ("tiny-zimage", "qwen_3_4b", "text_encoder")])
def test_a_gguf_text_encoder_beside_the_transformer_is_found_and_dequantized(
        atelier_home, comfy, tmp_path, tiny, encoder, component):
    """city96's T5-XXL and the Qwen3 GGUF files (llama.cpp's tensor names, Q8_0) in
    models/text_encoders serve as the text encoder: not listed as models, dequantized to
    the pipeline's dtype within Q8_0's rounding, and the job's pixels a level or so from
    the full-precision encoder's."""
    from backend.models.tiny_dit_files import export_encoder_gguf

    models = tmp_path / "models"
    shutil.copytree(comfy[tiny], models)
    (models / "text_encoders" / f"{encoder}.safetensors").unlink()
    source = ensure_tiny(tiny, atelier_home / "models")
    export_encoder_gguf(source, FAMILY[tiny], models / "text_encoders" / f"{encoder}-Q8_0.gguf")
    store = _store(atelier_home, models)
    name = next(n for t, n, naming in LAYOUTS if t == tiny and naming == "original")
    assert not [i.name for i in store.available() if i.name.startswith("text_encoders/")]
    quantized = getattr(store.use(name).pipe, component).state_dict()
    full = getattr(store.use(tiny).pipe, component).state_dict()
    assert set(quantized) == set(full)
    for key, tensor in full.items():
        scale = tensor.abs().max().item() or 1.0
        assert quantized[key].dtype == torch.float32
        assert (quantized[key] - tensor).abs().max().item() <= scale / 100, key
    generator = DiffusionGenerator(store)
    first = _pixels(generator, model=name)
    assert first == _pixels(generator, model=name)
    difference = np.abs(np.frombuffer(first, np.uint8).astype(int)
                        - np.frombuffer(_pixels(generator, model=tiny), np.uint8))
    assert difference.max() <= 4 and difference.mean() < 0.5, (difference.max(), difference.mean())


def test_gguf_files_that_are_not_transformers_are_not_listed_and_refused(atelier_home, tmp_path):
    import gguf

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "not-really.gguf").write_bytes(b"PK\x03\x04" + bytes(64))
    writer = gguf.GGUFWriter(str(tmp_path / "unet" / "llm.gguf"), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    store = _store(atelier_home, tmp_path)
    catalog = store.catalog()
    assert not [m for m in catalog.models if m.name.endswith(".gguf")]
    assert [p.path for p in catalog.problems] == [str(tmp_path / "unet" / "not-really.gguf")]
    for name, code, words in (("unet/llm.gguf", ErrorCode.UNSUPPORTED, "no Flux or SD3"),
                              ("unet/not-really.gguf", ErrorCode.MODEL_LOAD_FAILED, "GGUF magic")):
        with pytest.raises(ProtocolError) as err:
            store.load(name)
        assert (err.value.code, err.value.field) == (code, "model")
        assert words in err.value.message


# ------------------------------------------------------------------ wrong combinations

@pytest.mark.parametrize("keys, metadata, family", [
    # kohya's Flux names, Black Forest Labs'/ComfyUI's, diffusers' (single blocks)
    ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (16, 3072)}, {}, "flux"),
    ({"diffusion_model.single_blocks.0.linear1.lora_A.weight": (16, 3072)}, {}, "flux"),
    ({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (16, 3072)}, {}, "flux"),
    # diffusers' names of a double-blocks-only Flux LoRA: Flux's width tells it from SD3's
    ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (16, 3072)}, {}, "flux"),
    ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (16, 1536),
      "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (16, 1280)},
     {}, "sd3"),
    ({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (16, 1536)}, {}, "sd3"),
    ({"lora_unet_a.lora_down.weight": (4, 8)}, {"modelspec.architecture": "flux-1-dev/lora"}, "flux"),
    ({"lora_unet_a.lora_down.weight": (4, 8)}, {"ss_base_model_version": "sd3"}, "sd3"),
])
def test_transformer_loras_are_told_from_their_names_widths_or_metadata(keys, metadata, family):
    from backend.models.file_kinds import is_lora, lora_family

    header = TensorHeader(keys, metadata)
    assert is_lora(header) and lora_family(header) == family


def test_loras_of_another_family_fail_the_job_on_their_field(atelier_home, tmp_path):
    """A Flux LoRA on an SD1.5 or SDXL model, and an SDXL LoRA on Flux, fail that job on
    ``loras[0].name``; the catalog lists each LoRA with the family it was made for."""
    from backend.models.tiny_dit_files import build_tiny_transformer_lora
    from backend.models.tiny_extras import build_tiny_lora
    from protocol.messages import LoraWeight

    loras = tmp_path / "models" / "loras"
    build_tiny_transformer_lora(ensure_tiny("tiny-flux", atelier_home / "models"), families.FLUX,
                                loras / "flux_style.safetensors")
    build_tiny_transformer_lora(ensure_tiny("tiny-sd3", atelier_home / "models"), families.SD3,
                                loras / "sd3_style.safetensors")
    build_tiny_lora(loras / "xl_style.safetensors", ensure_tiny("tiny-sdxl", atelier_home / "models"))
    store = _store(atelier_home, tmp_path / "models")
    listed = {i.name: (i.family, i.kind) for i in store.available() if i.kind == "lora"}
    assert listed == {"flux_style": ("flux", "lora"), "sd3_style": ("sd3", "lora"),
                      "xl_style": ("sdxl", "lora")}
    generator = DiffusionGenerator(store)
    for model, lora, code, words in (
            ("tiny", "flux_style", ErrorCode.INVALID_FIELD, "made for flux models"),
            ("tiny-sdxl", "flux_style", ErrorCode.INVALID_FIELD, "made for flux models"),
            ("tiny-sdxl", "sd3_style", ErrorCode.INVALID_FIELD, "made for sd3 models"),
            ("tiny-flux", "xl_style", ErrorCode.INVALID_FIELD, "made for sdxl models")):
        with pytest.raises(ProtocolError) as err:
            _pixels(generator, model=model, loras=[LoraWeight(lora)])
        assert (err.value.code, err.value.field) == (code, "loras[0].name"), (model, lora)
        assert words in err.value.message


# ------------------------------------------------------------------ fp8 files

def _recast(src: Path, dest: Path, dtype: torch.dtype, scaled: bool = False) -> None:
    """``src``'s tensors stored as ``dtype`` at ``dest`` (layerwise casting stores a
    layer's bias in fp8 too, so the reference rounds every tensor through fp8);
    ``scaled`` adds a ComfyUI scaled-fp8 marker."""
    from safetensors.torch import save_file

    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(src)).items()}
    if scaled:
        state["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    save_file(state, str(dest))


def test_fp8_files_stay_fp8_in_memory_and_give_the_pixels_of_their_upcast_weights(
        atelier_home, comfy, tmp_path):
    """A transformer and a T5 stored in fp8 keep their matrices fp8 on the device and
    compute in the pipeline's dtype: the same pixels as the same weights stored upcast."""
    folders = {}
    for name, dtype in (("fp8", torch.float8_e4m3fn), ("upcast", torch.float32)):
        models = tmp_path / name / "models"
        shutil.copytree(comfy["tiny-flux"], models)
        for file in ("unet/flux-tiny.safetensors", "text_encoders/t5xxl.safetensors"):
            _recast(models / file, models / file, torch.float8_e4m3fn)
            if dtype != torch.float8_e4m3fn:
                _recast(models / file, models / file, dtype)
        folders[name] = models
    loaded = {}
    for name, models in folders.items():
        store = _store(atelier_home, models)
        pipe = store.load("unet/flux-tiny.safetensors").pipe
        loaded[name] = (pipe, _pixels(DiffusionGenerator(store), model="unet/flux-tiny.safetensors"))
    (fp8, fp8_pixels), (upcast, upcast_pixels) = loaded["fp8"], loaded["upcast"]
    assert fp8.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert fp8.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == \
        torch.float8_e4m3fn
    assert upcast.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float32
    assert fp8.transformer.get_memory_footprint() < 0.6 * upcast.transformer.get_memory_footprint()
    assert fp8_pixels == upcast_pixels


def test_scaled_fp8_files_are_refused_naming_them(atelier_home, comfy, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(comfy["tiny-flux"], models)
    t5 = models / "text_encoders" / "t5xxl.safetensors"
    _recast(t5, t5, torch.float8_e4m3fn, scaled=True)
    with pytest.raises(ProtocolError) as err:
        _store(atelier_home, models).load("unet/flux-tiny.safetensors")
    assert (err.value.code, err.value.field) == (ErrorCode.UNSUPPORTED, "model")
    assert "t5xxl.safetensors" in err.value.message and "scaled fp8" in err.value.message


def test_a_flux_controlnet_file_is_listed_as_a_controlnet_and_refused_on_sd(atelier_home, tmp_path):
    """A Flux ControlNet (diffusers' and InstantX's ``controlnet_blocks``) is not taken for
    a Flux model: listed as a ControlNet, and one on an SD1.5 job fails that job naming
    what it is made for."""
    from diffusers import FluxControlNetModel
    from safetensors.torch import save_file

    from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
    from protocol.messages import ControlLayer

    config = FluxTransformer2DModel.load_config(
        str(ensure_tiny("tiny-flux", atelier_home / "models") / "transformer"))
    shape = ("patch_size", "in_channels", "num_layers", "num_single_layers", "attention_head_dim",
             "num_attention_heads", "joint_attention_dim", "pooled_projection_dim",
             "guidance_embeds", "axes_dims_rope")
    controlnet = FluxControlNetModel(**{k: config[k] for k in shape})
    dest = tmp_path / "models" / "controlnet" / "flux-canny.safetensors"
    dest.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(dest))
    store = _store(atelier_home, tmp_path / "models")
    listed = {i.name: i for i in store.available()}["controlnet/flux-canny.safetensors"]
    assert (listed.kind, listed.control_kind) == ("controlnet", "canny")
    edges = ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, 64, 64, new_id(), bytes(64 * 64))
    job = GenerateRequest(**{**JOB, "model": "tiny"}, controls=[ControlLayer(
        kind="canny", image=edges.id, model="controlnet/flux-canny.safetensors")])
    with pytest.raises(ProtocolError) as err:
        DiffusionGenerator(store).generate(job, {edges.id: edges}, lambda *_: None, lambda: False)
    assert err.value.field == "job.controls[0].model" and "Flux or SD3" in err.value.message
