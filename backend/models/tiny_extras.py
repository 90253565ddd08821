"""Tiny random LoRAs and textual-inversion embeddings for the built-in tiny models, built
by our own code and written as safetensors in the layouts users' files have:

- LoRAs in diffusers/peft keys (``unet.<module>.lora_A.weight``, as ``save_lora_weights``
  writes them) or kohya/A1111 keys (``lora_unet_<module_with_underscores>.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``; ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` for the text
  encoders), the names diffusers' converter reads (``_convert_non_diffusers_lora_to_diffusers``);
- embeddings in A1111's ``emb_params`` form, or SDXL's ``clip_l`` + ``clip_g``.

The adapters are made with peft (``inject_adapter_in_model(LoraConfig)``, ``get_peft_model_state_dict``)
on the tiny model's own modules, then given random weights large enough to change a
picture. Deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from .tiny import SEED, TEXT_HIDDEN

LoraLayout = Literal["diffusers", "kohya"]
RANK = 4
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _lora_tensors(module: torch.nn.Module, targets: list[str], seed: int) -> dict[str, torch.Tensor]:
    """peft LoRA weights for ``module`` at ``targets``, randomised (peft starts B at zero)."""
    # peft's own injection (transformers' add_adapter insists on a newer peft than PyPI has)
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets), module)
    generator = torch.Generator().manual_seed(seed)
    tensors = get_peft_model_state_dict(module)
    return {key: torch.randn(value.shape, generator=generator) * 0.5
            for key, value in sorted(tensors.items())}


def _kohya(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        module, _, part = key.rpartition(".lora_")
        if prefix.startswith("lora_te") and not module.startswith("text_model."):
            module = "text_model." + module   # kohya names CLIP's modules from text_model
        name = prefix + module.replace(".", "_")
        out[f"{name}.{'lora_down' if part == 'A.weight' else 'lora_up'}.weight"] = value
        out[f"{name}.alpha"] = torch.tensor(float(RANK))
    return out


def build_tiny_lora(dest: Path, model_folder: Path, layout: LoraLayout = "diffusers",
                    seed: int = SEED + 10, text_encoder: bool = True) -> Path:
    """Write a LoRA for the tiny pipeline in ``model_folder`` (SD1.5- or SDXL-shaped) to
    the file ``dest``: its UNet's attention projections, and with ``text_encoder`` its
    text encoders' too."""
    model_folder = Path(model_folder)
    sdxl = (model_folder / "text_encoder_2").is_dir()
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unet = UNet2DConditionModel.from_pretrained(str(model_folder / "unet"))
    parts["unet"] = _lora_tensors(unet, UNET_TARGETS, seed)
    if text_encoder:
        encoder = CLIPTextModel.from_pretrained(str(model_folder / "text_encoder"))
        parts["text_encoder"] = _lora_tensors(encoder, TEXT_TARGETS, seed + 1)
        if sdxl:
            encoder_2 = CLIPTextModelWithProjection.from_pretrained(str(model_folder / "text_encoder_2"))
            parts["text_encoder_2"] = _lora_tensors(encoder_2, TEXT_TARGETS, seed + 2)
    tensors: dict[str, torch.Tensor] = {}
    if layout == "diffusers":
        for component, values in parts.items():
            tensors.update({f"{component}.{key}": value for key, value in values.items()})
    else:
        prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if sdxl else "lora_te_",
                    "text_encoder_2": "lora_te2_"}
        for component, values in parts.items():
            tensors.update(_kohya(values, prefixes[component]))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest))
    return dest


def build_tiny_embedding(dest: Path, vectors: int = 2, sdxl: bool = False,
                         seed: int = SEED + 20) -> Path:
    """Write a textual-inversion embedding of ``vectors`` token vectors for the tiny text
    encoders (width ``TEXT_HIDDEN``) to the file ``dest``."""
    generator = torch.Generator().manual_seed(seed)

    def vectors_of() -> torch.Tensor:
        return torch.randn((vectors, TEXT_HIDDEN), generator=generator)

    tensors = ({"clip_l": vectors_of(), "clip_g": vectors_of()} if sdxl
               else {"emb_params": vectors_of()})
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest))
    return dest
