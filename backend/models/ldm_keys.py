"""Export a diffusers SD1.x-shaped pipeline to one original-layout (LDM / A1111 /
ComfyUI) ``.safetensors`` checkpoint.

The renaming is mechanical: diffusers' nested block names map to the flat
``input_blocks`` / ``middle_block`` / ``output_blocks`` numbering of the original
code. Atelier uses it to make single-file checkpoints out of its tiny models, so
the single-file loader is tested on real original key names.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

UNET_PREFIX = "model.diffusion_model."
CONTROLNET_PREFIX = "control_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

_RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet_rest(rest: str) -> str:
    part, _, tail = rest.partition(".")
    return f"{_RESNET_PARTS[part]}.{tail}"


def unet_key(key: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """The original name of one diffusers UNet tensor name."""
    per = layers_per_block + 1
    head, _, tail = key.rpartition(".")          # tail: weight / bias
    for new, old in _UNET_TOP.items():
        if head == new:
            return f"{old}.{tail}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, what, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * per + j
        return (f"input_blocks.{index}.0.{_resnet_rest(rest)}" if what == "resnets"
                else f"input_blocks.{index}.1.{rest}")
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet_rest(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, what, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * per + j
        return (f"output_blocks.{index}.0.{_resnet_rest(rest)}" if what == "resnets"
                else f"output_blocks.{index}.1.{rest}")
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        slot = 2 if up_has_attention[block] else 1
        return f"output_blocks.{block * per + layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"no original name known for UNet tensor {key}")


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key(key: str, num_blocks: int) -> tuple[str, bool]:
    """(original name, whether a linear weight becomes a 1x1 conv) of one VAE tensor name."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}", False
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}", False
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}", False
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.{m[2]}", False
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}", False
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        part = _VAE_ATTN[m[2]]
        return f"{m[1]}.mid.attn_1.{part}.{m[3]}", part != "norm" and m[3] == "weight"
    return key, False


def unet_state_dict_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    config = unet.config
    up_has_attention = ["CrossAttn" in name for name in config.up_block_types]
    return {UNET_PREFIX + unet_key(k, config.layers_per_block, up_has_attention): v
            for k, v in unet.state_dict().items()}


def vae_state_dict_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    out = {}
    num_blocks = len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        name, to_conv = vae_key(k, num_blocks)
        out[VAE_PREFIX + name] = v[:, :, None, None] if to_conv else v
    return out


def text_state_dict_to_ldm(text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in text_encoder.state_dict().items():
        # Newer transformers flatten CLIPTextModel; originals always carry "text_model.".
        name = k if k.startswith("text_model.") else "text_model." + k
        out[TEXT_PREFIX + name] = v
    return out


def controlnet_key(key: str, layers_per_block: int, hint_blocks: int) -> str:
    """The original name of one diffusers ControlNet tensor name."""
    if m := re.fullmatch(r"controlnet_cond_embedding\.conv_in\.(.+)", key):
        return f"input_hint_block.0.{m[1]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key):
        return f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(.+)", key):
        return f"input_hint_block.{2 * (hint_blocks + 1)}.{m[1]}"
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if m := re.fullmatch(r"controlnet_mid_block\.(.+)", key):
        return f"middle_block_out.0.{m[1]}"
    return unet_key(key, layers_per_block, up_has_attention=[])


def export_controlnet_single_file(controlnet: ControlNetModel, dest: Path) -> Path:
    """Write a ControlNet as one original-layout (``control_model.*``) checkpoint."""
    hint_blocks = len(controlnet.controlnet_cond_embedding.blocks)
    tensors = {CONTROLNET_PREFIX + controlnet_key(k, controlnet.config.layers_per_block, hint_blocks): v
               for k, v in controlnet.state_dict().items()}
    return _save(tensors, dest)


def _save(tensors: dict[str, torch.Tensor], dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest),
              metadata={"format": "pt", "atelier": "exported from a diffusers model"})
    return dest


def export_sd15_single_file(pipe: StableDiffusionPipeline, dest: Path) -> Path:
    """Write ``pipe``'s UNet, VAE and text encoder as one original-layout checkpoint."""
    tensors = {**unet_state_dict_to_ldm(pipe.unet), **vae_state_dict_to_ldm(pipe.vae),
               **text_state_dict_to_ldm(pipe.text_encoder)}
    return _save(tensors, dest)
