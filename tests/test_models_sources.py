"""Where models come from: single-file checkpoints with original key names, refused
pickles, the Hugging Face cache, model folders, and the shipped config folders."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from backend.models import families
from backend.models.ldm_keys import export_controlnet_single_file, export_sd15_single_file
from backend.models.single_file import CONFIGS
from backend.models.store import ModelStore
from models_support import put_in_hf_cache, write_shaped_checkpoint
from protocol.errors import ErrorCode, ProtocolError


@pytest.fixture(scope="module")
def a1111(tmp_path_factory, home) -> Path:
    """An A1111-style models/Stable-diffusion folder: a single-file checkpoint exported from
    the tiny model (original key names), a diffusers folder, a subfolder and a pickle."""
    root = tmp_path_factory.mktemp("Stable-diffusion")
    store = ModelStore("cpu", torch.float32, home, [], hf_cache=home / "no-cache")
    export_sd15_single_file(store.load("tiny").pipe, root / "tiny-ldm.safetensors")
    shutil.copytree(home / "models" / "tiny", root / "tiny-diffusers")
    (root / "sub").mkdir()
    shutil.copy(root / "tiny-ldm.safetensors", root / "sub" / "copy.safetensors")
    return root


def _store(home: Path, search_dirs: list[Path], hf_cache: Path) -> ModelStore:
    return ModelStore("cpu", torch.float32, home, search_dirs, hf_cache=hf_cache)


def test_exported_checkpoint_has_original_key_names(a1111):
    with safe_open(str(a1111 / "tiny-ldm.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in keys    # upsampler after attention
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert not any(k.startswith(("unet.", "down_blocks.", "vae.")) for k in keys)


def test_single_file_loads_with_the_same_weights_as_the_folder(home, a1111):
    store = _store(home, [a1111], home / "no-cache")
    folder = store.load("tiny")
    expected = {name: {k: v.clone() for k, v in getattr(folder.pipe, name).state_dict().items()}
                for name in ("unet", "vae", "text_encoder")}
    single = store.load("tiny-ldm.safetensors")
    assert single.source.kind == "single_file" and single.family == "sd15"
    for name, tensors in expected.items():
        loaded = getattr(single.pipe, name).state_dict()
        assert loaded.keys() == tensors.keys(), name
        unequal = [k for k in tensors if not torch.equal(loaded[k], tensors[k])]
        assert unequal == [], f"{name}: {unequal[:3]}"
    assert single.pipe.tokenizer.model_max_length == 77
    image = store.pipeline("img2img")("a cat", image=torch.zeros(1, 3, 64, 64), strength=0.5,
                                      num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_single_file_controlnet_loads_with_the_same_weights(home, tmp_path):
    store = _store(home, [tmp_path], home / "no-cache")
    store.load("tiny")
    folder = store.controlnet("tiny-controlnet")
    export_controlnet_single_file(folder, tmp_path / "control_depth.safetensors")
    with safe_open(str(tmp_path / "control_depth.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"control_model.input_hint_block.14.weight", "control_model.zero_convs.0.0.weight",
            "control_model.middle_block_out.0.weight"} <= keys
    assert {(m.name, m.family) for m in store.available()} >= {("control_depth.safetensors", "controlnet")}
    single = store.controlnet("control_depth.safetensors")
    expected, loaded = folder.state_dict(), single.state_dict()
    assert loaded.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(loaded[k], expected[k])] == []
    assert store.pipeline("txt2img", controlnet="control_depth.safetensors").controlnet is single


def test_pickle_checkpoints_are_refused_unopened(home, tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(pickle.dumps(Payload()))
    store = _store(home, [tmp_path], home / "no-cache")
    for name in (str(ckpt), "model.ckpt", "elsewhere.pt"):
        with pytest.raises(ProtocolError) as err:
            store.load(name)
        assert err.value.code == ErrorCode.MODEL_LOAD_FAILED and err.value.field == "model"
        assert "pickle checkpoint" in err.value.message and "never unpickles" in err.value.message
    assert not marker.exists()


def test_hf_id_not_in_cache_names_the_pull_command(home, tmp_path):
    store = _store(home, [], tmp_path / "empty-cache")
    with pytest.raises(ProtocolError) as err:
        store.load("runwayml/stable-diffusion-v1-5")
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND and err.value.field == "model"
    assert "not in the local cache" in err.value.message
    assert "atelier models pull runwayml/stable-diffusion-v1-5" in err.value.message


def test_hf_cache_hit_loads_the_snapshot(home, tmp_path):
    cache = tmp_path / "hub"
    snapshot = put_in_hf_cache(cache, "atelier-test/tiny-sd", home / "models" / "tiny")
    assert (snapshot / "unet" / "diffusion_pytorch_model.safetensors").is_symlink()
    store = _store(home, [], cache)
    model = store.load("atelier-test/tiny-sd")
    assert model.source.kind == "hf_cache" and model.source.path == snapshot
    assert model.family == "sd15"
    listed = {m.name: m for m in store.available()}
    assert listed["atelier-test/tiny-sd"].source == "hf_cache"
    assert listed["atelier-test/tiny-sd"].family == "sd15"


def test_listing_finds_a1111_and_comfyui_style_folders(home, a1111, tmp_path):
    comfy = tmp_path / "ComfyUI" / "models" / "checkpoints"
    comfy.mkdir(parents=True)
    shutil.copy(a1111 / "tiny-ldm.safetensors", comfy / "comfy.safetensors")
    (comfy / "broken.safetensors").write_bytes(b"not a safetensors file")
    (comfy / "old.ckpt").write_bytes(b"never read")
    store = _store(home, [a1111, comfy], home / "no-cache")
    catalog = store.catalog()
    listed = {(m.name, m.source, m.family) for m in catalog.models}
    assert ("tiny", "tiny", "sd15") in listed
    assert ("tiny-ldm.safetensors", "single_file", "sd15") in listed
    assert ("sub/copy.safetensors", "single_file", "sd15") in listed
    assert ("tiny-diffusers", "diffusers", "sd15") in listed
    assert ("comfy.safetensors", "single_file", "sd15") in listed
    # not a safetensors file: skipped and reported, not listed
    assert [(p.path, "header" in p.message) for p in catalog.problems] == [
        (str(comfy / "broken.safetensors"), True)]
    names = {name for name, _, _ in listed}
    assert "broken.safetensors" not in names
    assert "old.ckpt" not in names
    assert not any(n.startswith("tiny-diffusers/") for n in names)   # component weights
    # listed names load as they are
    assert store.load("sub/copy.safetensors").family == "sd15"
    assert store.load("tiny-diffusers").source.kind == "diffusers"


def test_real_sd15_single_file_without_tokenizer_says_what_is_missing(home, tmp_path):
    ckpt = write_shaped_checkpoint(tmp_path / "v1-5-like.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (1, 1),
    })
    store = _store(home, [tmp_path], tmp_path / "empty-cache")
    serving = store.load("tiny")
    with pytest.raises(ProtocolError) as err:
        store.load(str(ckpt))
    assert err.value.code == ErrorCode.MODEL_LOAD_FAILED
    assert "vocab.json" in err.value.message and "merges.txt" in err.value.message
    assert "atelier models pull openai/clip-vit-large-patch14" in err.value.message
    # found out from the header alone, so the model in service stays loaded
    assert store.current is serving and serving.pipe is not None


def test_checkpoint_family_detection():
    conv = lambda c: (320, c, 3, 3)  # noqa: E731
    sd = ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    sd2 = ["cond_stage_model.model.token_embedding.weight"]
    xl = ["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
          "conditioner.embedders.1.model.token_embedding.weight"]
    assert families.family_of_checkpoint_keys(sd, conv(4)) == "sd15"
    assert families.family_of_checkpoint_keys(sd, conv(9)) == "sd15_inpaint"
    assert families.family_of_checkpoint_keys(sd2, conv(5)) == "sd2_depth"
    assert families.family_of_checkpoint_keys(xl, conv(4)) == "sdxl"
    assert families.family_of_checkpoint_keys(xl, conv(9)) == "sdxl_inpaint"
    assert families.family_of_checkpoint_keys(["control_model.input_hint_block.0.weight"], None) == "controlnet"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_shipped_configs_describe_the_published_architectures():
    """Parameter counts of the shipped configs equal the published models' (built on the
    meta device: no memory, no weights)."""
    with torch.device("meta"):
        for family, unet_params in (("sd15", 859_520_964), ("sdxl", 2_567_463_684)):
            folder = CONFIGS / family
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            assert _count(unet) == unet_params, family
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            assert _count(vae) == 83_653_863
            clip_l = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
            assert _count(clip_l) == 123_060_480
        clip_g = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(CONFIGS / "sdxl" / "text_encoder_2"))
        assert _count(clip_g) == 694_659_840
        controlnet = ControlNetModel.from_config(ControlNetModel.load_config(CONFIGS / "controlnet_sd15"))
        assert _count(controlnet) == 361_279_120
    for family in ("sd15_inpaint", "sdxl_inpaint"):
        assert UNet2DConditionModel.load_config(CONFIGS / family / "unet")["in_channels"] == 9
        assert families.family_of_folder(CONFIGS / family) == family
