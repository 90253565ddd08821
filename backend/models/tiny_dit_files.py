"""Export a tiny Flux, Chroma, SD3 or Z-Image model (tiny_flux.py, tiny_chroma.py,
tiny_sd3.py, tiny_zimage.py) as the split files a ComfyUI user keeps: the transformer alone
in ``unet/`` (diffusers' tensor names) or in ``diffusion_models/`` (the original names),
the text encoders in ``text_encoders/`` with transformers' names as ComfyUI's
``clip_l``/``clip_g``/``t5xxl``/``qwen_3_4b`` files carry them, and the VAE in ``vae/``
(for Flux, Chroma and Z-Image as ``ae.safetensors`` in the original LDM names, for SD3 with
diffusers' names). So the split-file loader (dit_files.py) is tested on real files of both layouts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from . import dit_keys, families
from .dit_parts import PARTS, embedded_prefix
from .gguf_files import ENCODER_ARCHITECTURES, encoder_gguf_names
from .ldm_keys import VAE_PREFIX, vae_key

Naming = Literal["diffusers", "original"]
TRANSFORMER_FILE = "diffusion_pytorch_model.safetensors"


def _save(tensors: dict[str, torch.Tensor], dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest),
              metadata={"format": "pt", "atelier": "exported from a tiny model"})
    return dest


def _ldm_vae(state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        name, to_conv = vae_key(key, blocks)
        out[name.removeprefix(VAE_PREFIX)] = tensor[:, :, None, None] if to_conv else tensor
    return out


def export_transformer(folder: Path, family: str, dest: Path, naming: Naming = "diffusers") -> Path:
    """The tiny pipeline ``folder``'s transformer as one file at ``dest``."""
    state = load_file(str(folder / "transformer" / TRANSFORMER_FILE))
    if naming == "original":
        state = dit_keys.to_original(family, state)
    return _save(state, dest)


def export_parts(folder: Path, family: str, models: Path) -> dict[str, Path]:
    """The tiny pipeline ``folder``'s text encoders and VAE as ComfyUI's files under the
    ``models`` folder; returns them by component."""
    written = {}
    for part in PARTS[family]:
        weights = sorted((folder / part.component).glob("*.safetensors"))[0]
        state = load_file(str(weights))
        if part.role == "vae":
            flux_vae = family in (families.FLUX, families.FLUX_FILL, families.FLUX_CONTROL,
                                  families.CHROMA, families.ZIMAGE)
            if flux_vae:
                config = json.loads((folder / "vae" / "config.json").read_text("utf-8"))
                state = _ldm_vae(state, len(config["block_out_channels"]))
            dest = models / "vae" / ("ae.safetensors" if flux_vae else "sd3_vae.safetensors")
        else:
            if part.role.startswith("clip"):
                state = {k if k.startswith("text_model.") else f"text_model.{k}": v
                         for k, v in state.items()}
            elif part.role.startswith("qwen"):     # as the causal LM's file holds it
                state = {f"model.{k}": v for k, v in state.items()}
            dest = models / "text_encoders" / f"{part.role}.safetensors"
        written[part.component] = _save(state, dest)
    return written


def _write_gguf(dest: Path, architecture: str, state: dict[str, torch.Tensor]) -> Path:
    """``state`` as a GGUF file as city96's converter writes them: 2-D weights whose rows
    are whole Q8_0 blocks (32 values) quantized to Q8_0, the rest (biases, norms, Z-Image's
    pad tokens) kept as F32."""
    import gguf
    from gguf.quants import quantize

    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(dest), architecture)
    q8 = gguf.GGMLQuantizationType.Q8_0
    block = gguf.GGML_QUANT_SIZES[q8][0]
    for name, tensor in state.items():
        values = tensor.float().numpy()
        if values.ndim == 2 and values.shape[1] % block == 0 and name.endswith(".weight"):
            writer.add_tensor(name, quantize(values, q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def export_gguf(folder: Path, family: str, dest: Path, naming: Naming = "original") -> Path:
    """The tiny pipeline ``folder``'s transformer as a GGUF file (Q8_0 weights)."""
    state = load_file(str(folder / "transformer" / TRANSFORMER_FILE))
    if naming == "original":
        state = dit_keys.to_original(family, state)
    return _write_gguf(dest, family, state)


def export_encoder_gguf(folder: Path, family: str, dest: Path) -> Path:
    """The tiny pipeline ``folder``'s T5 or Qwen3 text encoder as a GGUF file in
    llama.cpp's tensor names (as city96's T5 and the Qwen3 GGUF files carry them), Q8_0."""
    import gguf

    from transformers import AutoConfig

    part = next(p for p in PARTS[family] if p.role in ("t5xxl", "qwen_3_4b"))
    config = AutoConfig.from_pretrained(str(folder / part.component))
    state = load_file(str(sorted((folder / part.component).glob("*.safetensors"))[0]))
    out = {name: state[key] for key, name in encoder_gguf_names(config, state).items()}
    arch = getattr(gguf.MODEL_ARCH, ENCODER_ARCHITECTURES[config.model_type][0])
    return _write_gguf(dest, gguf.MODEL_ARCH_NAMES[arch], out)


def build_tiny_transformer_lora(folder: Path, family: str, dest: Path, seed: int = 11) -> Path:
    """A LoRA for the tiny pipeline ``folder``'s transformer (its attention's q, k, v) in
    diffusers' names (``transformer.<module>.lora_A.weight``), as ``save_lora_weights``
    writes Flux and SD3 LoRAs."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from .tiny_extras import _lora_tensors

    cls = FluxTransformer2DModel if family == families.FLUX else SD3Transformer2DModel
    transformer = cls.from_pretrained(str(folder / "transformer"))
    tensors = _lora_tensors(transformer, ["to_q", "to_k", "to_v"], seed)
    return _save({f"transformer.{key}": value for key, value in tensors.items()}, dest)


def export_checkpoint(folder: Path, family: str, dest: Path,
                      parts: tuple[str, ...] = ("clip_l", "clip_g", "t5xxl", "vae")) -> Path:
    """The tiny pipeline ``folder`` as one whole checkpoint as ComfyUI saves one: the
    transformer in the original names under ``model.diffusion_model.``, and of ``parts``
    those the family has, the text encoders under ``text_encoders.<role>.transformer.`` and
    the VAE in LDM names under ``first_stage_model.``."""
    state = load_file(str(folder / "transformer" / TRANSFORMER_FILE))
    tensors = {dit_keys.PREFIX + k: v for k, v in dit_keys.to_original(family, state).items()}
    for part in PARTS[family]:
        if part.role not in parts:
            continue
        weights = sorted((folder / part.component).glob("*.safetensors"))[0]
        values = load_file(str(weights))
        if part.role == "vae":
            config = json.loads((folder / "vae" / "config.json").read_text("utf-8"))
            values = _ldm_vae(values, len(config["block_out_channels"]))
        elif part.role.startswith("clip"):
            values = {k if k.startswith("text_model.") else f"text_model.{k}": v
                      for k, v in values.items()}
        tensors.update({embedded_prefix(part) + k: v for k, v in values.items()})
    return _save(tensors, dest)
