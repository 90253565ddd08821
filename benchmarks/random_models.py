"""Full-size SD1.5 / SDXL pipelines (and the SD1.5 depth ControlNet) with random weights,
built from the config folders the model layer ships (``backend/models/configs``).

Random weights do exactly the arithmetic of the trained models, so speed and memory are
measured without downloading a checkpoint. The pictures are noise. The tokenizers are the
tiny handmade ones (``backend.models.tiny``): prompts are still padded to 77 tokens, which
is what the text encoders' work depends on, not the vocabulary.

The folders are written once as ordinary diffusers folders (safetensors) and reused, so
both the stock pipeline and Atelier's loader read the same files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, ControlNetModel, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, T2IAdapter, UNet2DConditionModel)
from diffusers import schedulers as diffusers_schedulers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from backend.models import tiny

CONFIGS = Path(tiny.__file__).resolve().parent / "configs"
FAMILIES = ("sd15", "sdxl")
# The depth ControlNet config shipped per family (SDXL has none in the repo yet).
CONTROLNET_CONFIGS = {"sd15": "controlnet_sd15"}
# The published depth T2I-Adapters' architectures (TencentARC's SD1.5 and SDXL adapters).
ADAPTER_CONFIGS = {
    "sd15": dict(channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=8,
                 adapter_type="full_adapter"),
    "sdxl": dict(channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=16,
                 adapter_type="full_adapter_xl"),
}
COMPLETE = "BENCHMARK_RANDOM_MODEL.txt"
NOTE = "Random weights from backend/models/configs, for benchmarks only. Produces noise.\n"


def config_folder(name: str) -> Path:
    folder = CONFIGS / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no config folder {folder}: the model layer ships one per family "
            f"(found: {', '.join(sorted(p.name for p in CONFIGS.iterdir())) if CONFIGS.is_dir() else 'none'})")
    return folder


def _scheduler(folder: Path):
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text("utf-8"))
    return getattr(diffusers_schedulers, config["_class_name"]).from_config(config)


def _tiny_tokenizers(family: str, scratch: Path) -> dict[str, CLIPTokenizer]:
    if family == "sdxl":
        folder = tiny.build_tiny_sdxl_model(scratch / "tiny-sdxl")
        return {"tokenizer": CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
                "tokenizer_2": CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"))}
    folder = tiny.build_tiny_model(scratch / "tiny")
    return {"tokenizer": CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))}


def _write_once(dest: Path, write) -> Path:
    """Write into a sibling scratch folder and rename when complete."""
    if (dest / COMPLETE).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=dest.name + ".building-", dir=dest.parent))
    try:
        write(scratch)
        (scratch / COMPLETE).write_text(NOTE, "utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        scratch.rename(dest)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    return dest


def random_pipeline_folder(family: str, dest: Path, dtype: torch.dtype, device: str) -> Path:
    """A diffusers folder of a full-size ``family`` pipeline with random weights in
    ``dtype``. ``device`` is where the weights are initialised (a GPU does it in seconds)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    configs = config_folder(family)

    def write(out: Path) -> None:
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as scratch:
            tokenizers = _tiny_tokenizers(family, Path(scratch))
        with torch.device(device):
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
            text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
            if family == "sdxl":
                text_encoder_2 = CLIPTextModelWithProjection(
                    CLIPTextConfig.from_pretrained(configs / "text_encoder_2"))
        if family == "sdxl":
            pipe = StableDiffusionXLPipeline(
                vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, unet=unet,
                scheduler=_scheduler(configs), force_zeros_for_empty_prompt=True, **tokenizers)
        else:
            pipe = StableDiffusionPipeline(
                vae=vae, text_encoder=text_encoder, unet=unet, scheduler=_scheduler(configs),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                **tokenizers)
        pipe.to(dtype=dtype)
        pipe.save_pretrained(out, safe_serialization=True)

    return _write_once(dest, write)


def random_controlnet_folder(family: str, dest: Path, dtype: torch.dtype, device: str) -> Path:
    """A diffusers folder of ``family``'s full-size depth ControlNet with random weights."""
    if family not in CONTROLNET_CONFIGS:
        raise FileNotFoundError(f"no ControlNet config for {family} in {CONFIGS}")
    configs = config_folder(CONTROLNET_CONFIGS[family])

    def write(out: Path) -> None:
        torch.manual_seed(1)
        with torch.device(device):
            controlnet = ControlNetModel.from_config(ControlNetModel.load_config(configs))
        controlnet.to(dtype=dtype).save_pretrained(out, safe_serialization=True)

    return _write_once(dest, write)


def random_adapter_folder(family: str, dest: Path, dtype: torch.dtype, device: str) -> Path:
    """A diffusers folder of ``family``'s full-size depth T2I-Adapter with random weights."""
    if family not in ADAPTER_CONFIGS:
        raise FileNotFoundError(f"no T2I-Adapter architecture for {family}")

    def write(out: Path) -> None:
        torch.manual_seed(2)
        with torch.device(device):
            adapter = T2IAdapter(in_channels=3, **ADAPTER_CONFIGS[family])
        adapter.to(dtype=dtype).save_pretrained(out, safe_serialization=True)

    return _write_once(dest, write)
