"""ControlNets for Flux and SD3 models: loading the files their users have.

InstantX's, Shakker-Labs' and diffusers' Flux ControlNets (single-kind or union), and
InstantX's and Stability's SD3/SD3.5 ones, are kept in diffusers' tensor names, as one
``.safetensors`` file (ComfyUI's ``models/controlnet``) or a diffusers folder. A single
file carries no config: its shape comes from the model it runs with (the ControlNet copies
the transformer's first blocks) and from the file itself (how many blocks it has, how many
union modes, SD3's position embedding and extra conditioning channels). The weights are
read straight into the model built on the meta device: nothing is initialised only to be
overwritten, which matters for a 3 GB ControlNet.

What is refused, naming ``control.model``: a ControlNet made for SD1.5/SDXL (a UNet's) or
for the other transformer family, XLabs' Flux ones (original Flux names), and one whose
width is not the model's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import FluxControlNetModel, SD3ControlNetModel
from safetensors.torch import load_file

from protocol.errors import ErrorCode, ProtocolError
from protocol.schema import shorten

from . import families
from .sources import ModelSource

# The Flux transformer's config entries a Flux ControlNet shares.
SHARED_CONFIG = ("patch_size", "in_channels", "attention_head_dim", "num_attention_heads",
                 "joint_attention_dim", "pooled_projection_dim", "guidance_embeds",
                 "axes_dims_rope")
# The SD3 transformer's config entries an SD3 ControlNet shares.
SD3_SHARED_CONFIG = ("sample_size", "patch_size", "in_channels", "attention_head_dim",
                     "num_attention_heads", "joint_attention_dim", "caption_projection_dim",
                     "pooled_projection_dim", "out_channels", "pos_embed_max_size")
_FIELD = "control.model"
_CLASSES = {families.FLUX: FluxControlNetModel, families.SD3: SD3ControlNetModel}
_NAMES = {families.FLUX: "Flux", families.SD3: "SD3"}


def _refused(source: ModelSource, why: str,
             code: ErrorCode = ErrorCode.INVALID_FIELD) -> ProtocolError:
    return ProtocolError(code, f"{shorten(source.name)} ({source.path.name}) {why}", _FIELD)


def _count(keys: list[str], prefix: str) -> int:
    """How many numbered blocks ``prefix.N.`` the tensor names hold."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    numbers = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(numbers) + 1 if numbers else 0


def flux_controlnet_config(tensors: Mapping[str, torch.Tensor],
                           transformer_config: Mapping[str, Any]) -> dict[str, Any]:
    """The config of the Flux ControlNet whose diffusers-named ``tensors`` these are, for
    a model of ``transformer_config``."""
    keys = list(tensors)
    config = {name: transformer_config[name] for name in SHARED_CONFIG}
    # A ControlNet trained on FLUX.1-dev has dev's guidance embedding, also beside schnell.
    config.update(num_layers=_count(keys, "transformer_blocks"),
                  num_single_layers=_count(keys, "single_transformer_blocks"),
                  guidance_embeds=any(k.startswith("time_text_embed.guidance_embedder.")
                                      for k in keys))
    if "controlnet_mode_embedder.weight" in tensors:      # a union ControlNet: one mode per kind
        config["num_mode"] = tensors["controlnet_mode_embedder.weight"].shape[0]
    return config


def sd3_controlnet_config(tensors: Mapping[str, torch.Tensor],
                          transformer_config: Mapping[str, Any]) -> dict[str, Any]:
    """The config of the SD3 ControlNet whose diffusers-named ``tensors`` these are, for a
    model of ``transformer_config``. SD3.5's ControlNets (Stability's) have no position
    embedding of their own and take the real pooled prompt; InstantX's SD3 ones have one
    and take zeros."""
    keys = list(tensors)
    config = {name: transformer_config[name] for name in SD3_SHARED_CONFIG}
    layers = _count(keys, "transformer_blocks")
    own_positions = "pos_embed.proj.weight" in tensors
    conditioning = tensors["pos_embed_input.proj.weight"].shape[1]
    dual = tuple(i for i in range(layers) if f"transformer_blocks.{i}.attn2.to_q.weight" in tensors)
    qk_norm = "rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in tensors else None
    config.update(num_layers=layers, use_pos_embed=own_positions,
                  force_zeros_for_pooled_projection=own_positions,
                  extra_conditioning_channels=conditioning - config["in_channels"],
                  dual_attention_layers=dual, qk_norm=qk_norm)
    return config


def _check_kind(source: ModelSource, keys: list[str], family: str) -> None:
    """Refuse files that are not diffusers-named ControlNets of ``family``."""
    has = lambda *prefixes: any(k.startswith(prefixes) for k in keys)   # noqa: E731
    name = _NAMES[family]
    if has("controlnet_cond_embedding.", "control_model.", "input_hint_block.") \
            and not has("controlnet_blocks."):
        raise _refused(source, f"is a ControlNet for SD1.5/SDXL UNets; a {name} model takes a "
                               f"{name} ControlNet")
    if has("double_blocks."):
        raise _refused(source, "is a ControlNet in XLabs' original Flux names, which Atelier does "
                               "not read; use a diffusers-format Flux ControlNet (InstantX, "
                               "Shakker-Labs)", ErrorCode.UNSUPPORTED)
    if not has("controlnet_blocks."):
        raise _refused(source, f"is not a {name} ControlNet (no controlnet_blocks)")
    made_for = families.SD3 if has("pos_embed_input.") else families.FLUX
    if made_for != family:
        raise _refused(source, f"is a ControlNet for {_NAMES[made_for]} models; a {name} model "
                               f"takes a {name} ControlNet")


def _from_single_file(source: ModelSource, family: str, transformer_config: Mapping[str, Any],
                      dtype: torch.dtype) -> torch.nn.Module:
    try:
        tensors = load_file(str(source.path))
    except Exception as exc:        # safetensors raises its own error types
        raise _refused(source, f"cannot be read: {shorten(str(exc), 200)}",
                       ErrorCode.MODEL_LOAD_FAILED) from exc
    _check_kind(source, list(tensors), family)
    shape_of = flux_controlnet_config if family == families.FLUX else sd3_controlnet_config
    config = shape_of(tensors, transformer_config)
    with torch.device("meta"):
        controlnet = _CLASSES[family](**config)
    try:
        controlnet.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:     # missing or mis-shaped tensors: made for another width
        raise _refused(source, f"does not fit this {_NAMES[family]} model: "
                               f"{shorten(str(exc), 300)}") from exc
    return controlnet.to(dtype)


def _from_folder(source: ModelSource, family: str, dtype: torch.dtype) -> torch.nn.Module:
    config_file = Path(source.path) / "config.json"
    try:
        class_name = json.loads(config_file.read_text("utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        class_name = None
    cls, name = _CLASSES[family], _NAMES[family]
    if class_name != cls.__name__:
        what = ("a ControlNet for SD1.5/SDXL UNets" if class_name == "ControlNetModel"
                else f"not a {name} ControlNet (its config names {class_name!r})")
        raise _refused(source, f"is {what}; a {name} model takes a {name} ControlNet")
    try:
        return cls.from_pretrained(str(source.path), torch_dtype=dtype,
                                                   local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise _refused(source, f"cannot be loaded: {shorten(str(exc), 300)}",
                       ErrorCode.MODEL_LOAD_FAILED) from exc


def load_dit_controlnet(source: ModelSource, family: str, transformer_config: Mapping[str, Any],
                        dtype: torch.dtype) -> torch.nn.Module:
    """The ControlNet of ``family`` (Flux, SD3) ``source`` holds, shaped for a transformer
    of ``transformer_config``; ProtocolError naming ``control.model`` for anything else."""
    if source.kind == "single_file":
        controlnet = _from_single_file(source, family, transformer_config, dtype)
    else:
        controlnet = _from_folder(source, family, dtype)
    inner = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    width = controlnet.config.num_attention_heads * controlnet.config.attention_head_dim
    if width != inner:
        raise _refused(source, f"is a {_NAMES[family]} ControlNet {width} wide; this model's "
                               f"transformer is {inner} wide")
    return controlnet
