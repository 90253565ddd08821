"""The model layer on the tiny models: building, loading, sharing between pipeline
kinds, ControlNets, SDXL and SD2-depth shapes, device and dtype choice."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from backend.models import tiny
from backend.models.device import device_memory, pick_device, pick_dtype
from backend.models.store import ModelStore
from protocol.errors import ErrorCode, ProtocolError


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("atelier-home")


@pytest.fixture
def store(home) -> ModelStore:
    return ModelStore("cpu", torch.float32, home, search_dirs=[], hf_cache=home / "no-hf-cache")


def test_tiny_build_is_deterministic_safetensors(tmp_path):
    first = tiny.build_tiny_model(tmp_path / "a")
    second = tiny.build_tiny_model(tmp_path / "b")
    digests = _tree_digest(first)
    assert digests == _tree_digest(second)
    assert "unet/diffusion_pytorch_model.safetensors" in digests
    assert "text_encoder/model.safetensors" in digests
    assert "tokenizer/vocab.json" in digests and "tokenizer/merges.txt" in digests
    assert not any(name.endswith((".bin", ".ckpt")) for name in digests)
    assert "produces noise" in (first / tiny.MARKER_FILE).read_text().lower()


def test_tiny_tokenizer_is_handmade_and_sd_length(store):
    tokenizer = store.load("tiny").pipe.tokenizer
    assert tokenizer.model_max_length == 77
    ids = tokenizer("a photo of a seamless stone wall").input_ids
    # every word has a whole-word merge: 7 words + start and end tokens
    assert len(ids) == 9
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a photo of a seamless stone wall"


def test_load_tiny_is_cached_and_built_under_home(store, home):
    model = store.load("tiny")
    assert store.load("tiny") is model
    assert store.current is model
    assert model.family == "sd15" and model.source.kind == "tiny"
    assert model.source.path == home / "models" / "tiny"
    assert (home / "models" / "tiny" / tiny.MARKER_FILE).is_file()


def test_pipeline_kinds_share_components(store):
    model = store.load("tiny")
    base = store.pipeline("txt2img")
    img2img = store.pipeline("img2img")
    inpaint = store.pipeline("inpaint")
    assert base is model.pipe
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    for pipe in (img2img, inpaint):
        for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            assert getattr(pipe, name) is getattr(base, name), name
    assert store.pipeline("img2img") is img2img
    with pytest.raises(ProtocolError) as err:
        store.pipeline("depth")
    assert err.value.code == ErrorCode.UNSUPPORTED and err.value.field == "kind"
    assert "txt2img, img2img, inpaint" in err.value.message


def test_switching_kinds_keeps_the_store_dtype(home):
    # from_pipe casts the shared modules to fp32 unless told otherwise: a half-precision
    # model on a GPU would silently double its memory on the first img2img job.
    store = ModelStore("cpu", torch.bfloat16, home, search_dirs=[], hf_cache=home / "no-hf-cache")
    model = store.load("tiny")
    assert model.pipe.unet.dtype == torch.bfloat16
    store.pipeline("img2img")
    store.pipeline("inpaint")
    assert model.pipe.unet.dtype == torch.bfloat16 and model.pipe.vae.dtype == torch.bfloat16


def test_tiny_txt2img_and_img2img_run_64px(store):
    store.load("tiny")
    image = store.pipeline("txt2img")(
        "a red cat", height=64, width=64, num_inference_steps=4,
        generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert image.shape == (64, 64, 3)
    again = store.pipeline("img2img")(
        "a red cat", image=Image.new("RGB", (64, 64), "gray"), strength=0.5,
        num_inference_steps=4, generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert again.shape == (64, 64, 3)


def test_controlnet_pipeline_shares_the_base_and_checks_the_family(store):
    model = store.load("tiny")
    assert store.default_depth_control() == "tiny-controlnet"
    pipe = store.pipeline("txt2img", controlnet="tiny-controlnet")
    assert type(pipe).__name__ == "StableDiffusionControlNetPipeline"
    assert pipe.unet is model.pipe.unet and pipe.vae is model.pipe.vae
    assert pipe.controlnet is store.controlnet("tiny-controlnet")
    assert store.pipeline("txt2img", controlnet="tiny-controlnet") is pipe
    out = pipe("a stone wall", image=Image.new("RGB", (64, 64), "white"), height=64, width=64,
               num_inference_steps=2, output_type="np").images[0]
    assert out.shape == (64, 64, 3)
    with pytest.raises(ProtocolError) as err:
        store.controlnet("tiny-sdxl-controlnet")   # built for the SDXL UNet's 64-wide text embeddings
    assert err.value.code == ErrorCode.UNSUPPORTED and err.value.field == "control.model"


def test_tiny_sdxl_loads_and_shares_across_kinds(store):
    model = store.load("tiny-sdxl")
    assert model.family == "sdxl"
    assert type(model.pipe).__name__ == "StableDiffusionXLPipeline"
    assert model.pipe.tokenizer_2.pad_token == "!"
    inpaint = store.pipeline("inpaint")
    assert type(inpaint).__name__ == "StableDiffusionXLInpaintPipeline"
    assert inpaint.text_encoder_2 is model.pipe.text_encoder_2 and inpaint.unet is model.pipe.unet
    image = model.pipe("a cat", height=64, width=64, num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_tiny_depth_runs_from_a_given_depth_map(store):
    model = store.load("tiny-depth")
    assert model.family == "sd2_depth" and model.pipe.unet.config.in_channels == 5
    assert model.kinds == ("depth",)
    image = store.pipeline("depth")(
        "a house", image=Image.new("RGB", (64, 64), "gray"), depth_map=torch.rand(1, 64, 64),
        strength=0.8, num_inference_steps=4, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_loading_another_model_releases_the_previous(home):
    # With no room for a parked model; within a budget it stays (test_store_residency.py).
    store = ModelStore("cpu", torch.float32, home, search_dirs=[], hf_cache=home / "no-hf-cache",
                       resident_bytes=0)
    first = store.load("tiny")
    store.pipeline("img2img")
    second = store.load("tiny-depth")
    assert store.current is second and first.pipe is None
    with pytest.raises(RuntimeError, match="released"):
        first.pipeline("img2img")


def test_unknown_name_is_a_clear_model_not_found(store):
    with pytest.raises(ProtocolError) as err:
        store.load("no-such-model")
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND and err.value.field == "model"
    assert "no model named 'no-such-model'" in err.value.message


def test_device_and_dtype_choice():
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") in ("cuda", "mps", "cpu")
    assert pick_dtype("cpu") == torch.float32
    assert pick_dtype("cuda") == torch.float16
    assert pick_dtype("cuda", "bf16") == torch.bfloat16
    with pytest.raises(ProtocolError) as err:
        pick_dtype("cpu", "fp16")
    assert err.value.field == "dtype" and "use fp32" in err.value.message
    with pytest.raises(ProtocolError) as err:
        pick_device("tpu")
    assert err.value.field == "device" and "auto, cuda, mps, cpu" in err.value.message
    allocated, total = device_memory("cpu")
    assert 0 < allocated < total


def test_tiny_controlnet_is_not_a_no_op(tmp_path):
    """Its zero-initialised output convolutions get weights, so depth changes the picture."""
    from diffusers import ControlNetModel


    unet = tiny.build_tiny_model(tmp_path / "tiny")
    controlnet = ControlNetModel.from_pretrained(str(tiny.build_tiny_controlnet(tmp_path / "cn", unet)))
    for conv in (controlnet.controlnet_cond_embedding.conv_out, controlnet.controlnet_mid_block,
                 *controlnet.controlnet_down_blocks):
        assert conv.weight.abs().max() > 0.1
