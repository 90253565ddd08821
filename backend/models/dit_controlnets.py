"""ControlNets for Flux models: loading the files Flux users have.

InstantX's, Shakker-Labs' and diffusers' Flux ControlNets (single-kind or union) are kept
in diffusers' tensor names, as one ``.safetensors`` file (ComfyUI's ``models/controlnet``)
or a diffusers folder. A single file carries no config: its shape comes from the Flux
model it runs with (the ControlNet copies the transformer's first blocks) and from the
file itself (how many double and single blocks it has, how many union modes). The
weights are read straight into the model built on the meta device: nothing is
initialised only to be overwritten, which matters for a 3 GB ControlNet.

What is refused, naming ``control.model``: a ControlNet made for SD1.5/SDXL (a UNet's),
one of SD3's, or XLabs' (original Flux names), and one whose width is not the model's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import FluxControlNetModel
from safetensors.torch import load_file

from protocol.errors import ErrorCode, ProtocolError
from protocol.schema import shorten

from .sources import ModelSource

# The Flux transformer's config entries a Flux ControlNet shares.
SHARED_CONFIG = ("patch_size", "in_channels", "attention_head_dim", "num_attention_heads",
                 "joint_attention_dim", "pooled_projection_dim", "guidance_embeds",
                 "axes_dims_rope")
_FIELD = "control.model"


def _refused(source: ModelSource, why: str, code: ErrorCode = ErrorCode.INVALID_FIELD) -> ProtocolError:
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
    config.update(num_layers=_count(keys, "transformer_blocks"),
                  num_single_layers=_count(keys, "single_transformer_blocks"))
    if "controlnet_mode_embedder.weight" in tensors:      # a union ControlNet: one mode per kind
        config["num_mode"] = tensors["controlnet_mode_embedder.weight"].shape[0]
    return config


def _check_kind(source: ModelSource, keys: list[str]) -> None:
    """Refuse files that are ControlNets of another kind than diffusers-named Flux ones."""
    if any(k.startswith(("controlnet_cond_embedding.", "control_model.", "input_hint_block."))
           for k in keys) and not any(k.startswith("controlnet_blocks.") for k in keys):
        raise _refused(source, "is a ControlNet for SD1.5/SDXL UNets; a Flux model takes a Flux "
                               "ControlNet (InstantX, Shakker-Labs, diffusers)")
    if any(k.startswith("pos_embed.") for k in keys):
        raise _refused(source, "is an SD3 ControlNet; a Flux model takes a Flux ControlNet")
    if any(k.startswith("double_blocks.") for k in keys):
        raise _refused(source, "is a ControlNet in XLabs' original Flux names, which Atelier does "
                               "not read; use a diffusers-format Flux ControlNet (InstantX, "
                               "Shakker-Labs)", ErrorCode.UNSUPPORTED)
    if not any(k.startswith("controlnet_blocks.") for k in keys):
        raise _refused(source, "is not a Flux ControlNet (no controlnet_blocks)")


def _from_single_file(source: ModelSource, transformer_config: Mapping[str, Any],
                      dtype: torch.dtype) -> FluxControlNetModel:
    try:
        tensors = load_file(str(source.path))
    except Exception as exc:        # safetensors raises its own error types
        raise _refused(source, f"cannot be read: {shorten(str(exc), 200)}",
                       ErrorCode.MODEL_LOAD_FAILED) from exc
    _check_kind(source, list(tensors))
    config = flux_controlnet_config(tensors, transformer_config)
    with torch.device("meta"):
        controlnet = FluxControlNetModel(**config)
    try:
        controlnet.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:     # missing or mis-shaped tensors: made for another width
        raise _refused(source, f"does not fit this Flux model: {shorten(str(exc), 300)}") from exc
    return controlnet.to(dtype)


def _from_folder(source: ModelSource, dtype: torch.dtype) -> FluxControlNetModel:
    config_file = Path(source.path) / "config.json"
    try:
        class_name = json.loads(config_file.read_text("utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        class_name = None
    if class_name != FluxControlNetModel.__name__:
        what = ("a ControlNet for SD1.5/SDXL UNets" if class_name == "ControlNetModel"
                else f"not a Flux ControlNet (its config names {class_name!r})")
        raise _refused(source, f"is {what}; a Flux model takes a Flux ControlNet (InstantX, "
                               f"Shakker-Labs, diffusers)")
    try:
        return FluxControlNetModel.from_pretrained(str(source.path), torch_dtype=dtype,
                                                   local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise _refused(source, f"cannot be loaded: {shorten(str(exc), 300)}",
                       ErrorCode.MODEL_LOAD_FAILED) from exc


def load_flux_controlnet(source: ModelSource, transformer_config: Mapping[str, Any],
                         dtype: torch.dtype) -> FluxControlNetModel:
    """The Flux ControlNet ``source`` holds, shaped for a transformer of
    ``transformer_config``; ProtocolError naming ``control.model`` for anything else."""
    if source.kind == "single_file":
        controlnet = _from_single_file(source, transformer_config, dtype)
    else:
        controlnet = _from_folder(source, dtype)
    inner = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    width = controlnet.config.num_attention_heads * controlnet.config.attention_head_dim
    if width != inner:
        raise _refused(source, f"is a Flux ControlNet {width} wide; this model's transformer is "
                               f"{inner} wide")
    return controlnet
