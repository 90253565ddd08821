"""The model layer on the tiny models: building, loading, sharing between pipeline kinds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Model tests never reach the network; huggingface_hub reads this once at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from backend.models import tiny
from backend.models.store import ModelStore


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("atelier-home")


@pytest.fixture(scope="module")
def store(home) -> ModelStore:
    return ModelStore("cpu", torch.float32, home, search_dirs=[], hf_cache=home / "no-hf-cache")


def test_tiny_build_is_deterministic_safetensors(tmp_path):
    first = tiny.build_tiny_model(tmp_path / "a")
    second = tiny.build_tiny_model(tmp_path / "b")
    digests = _tree_digest(first)
    assert digests == _tree_digest(second)
    assert "unet/diffusion_pytorch_model.safetensors" in digests
    assert "text_encoder/model.safetensors" in digests
    assert not any(name.endswith((".bin", ".ckpt")) for name in digests)
    assert "produces noise" in (first / tiny.MARKER_FILE).read_text().lower()


def test_tiny_tokenizer_is_handmade_and_sd_length(store):
    model = store.load("tiny")
    tokenizer = model.pipe.tokenizer
    assert tokenizer.model_max_length == 77
    ids = tokenizer("a photo of a seamless stone wall").input_ids
    # whole-word merges exist for these words: 7 words + start and end tokens
    assert len(ids) == 9
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id


def test_load_tiny_is_cached_and_built_under_home(store, home):
    model = store.load("tiny")
    assert store.load("tiny") is model
    assert store.current is model
    assert model.family == "sd15"
    assert (home / "models" / "tiny" / tiny.MARKER_FILE).is_file()
    assert model.source.kind == "tiny"


def test_pipeline_kinds_share_components(store):
    model = store.load("tiny")
    base = store.pipeline("txt2img")
    img2img = store.pipeline("img2img")
    inpaint = store.pipeline("inpaint")
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    for pipe in (img2img, inpaint):
        for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            assert getattr(pipe, name) is getattr(base, name), name
    assert store.pipeline("img2img") is img2img
    assert base is model.pipe


def test_tiny_txt2img_runs_64px(store):
    store.load("tiny")
    pipe = store.pipeline("txt2img")
    image = pipe("a red cat", height=64, width=64, num_inference_steps=4,
                 generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert image.shape == (64, 64, 3)
