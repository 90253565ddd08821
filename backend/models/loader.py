"""Load a resolved model source into a diffusers pipeline, offline.

One folder loader serves the tiny models, local diffusers folders and Hugging
Face cache snapshots alike; single-file checkpoints go through
``single_file.load_single_file``. Only safetensors weights are ever read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from diffusers import ControlNetModel, DiffusionPipeline

from protocol.errors import ErrorCode, ProtocolError

from . import families
from .single_file import load_single_file, load_single_file_controlnet
from .sources import ModelSource, ensure_tiny, variant_of


def _weights_variant(folder: Path) -> Optional[str]:
    """The variant ("fp16") whose weights a variant pull left in ``folder``; diffusers falls
    back to plain weights for components that have no variant file."""
    weights = list(folder.glob("*/*.safetensors")) + list(folder.glob("*.safetensors"))
    variants = {variant_of(w.name) for w in weights} - {None}
    return variants.pop() if len(variants) == 1 else None


def _sd_extras(family: str) -> dict:
    # SD1.x/2.x repos list a safety checker; Atelier, like A1111 and ComfyUI, does not run it.
    if family in (families.SD15, families.SD15_INPAINT, families.SD2, families.SD2_INPAINT):
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    if family == families.SD2_DEPTH:
        # Jobs supply depth maps; the DPT estimator is not loaded.
        return {"depth_estimator": None, "feature_extractor": None}
    return {}


def load_folder_pipeline(folder: Path, dtype: torch.dtype) -> tuple[DiffusionPipeline, str]:
    """Load a diffusers pipeline folder; returns (pipeline on the CPU, family)."""
    family = families.family_of_folder(folder)
    if family not in families.BASE_KIND:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED,
            f"{folder} holds a {family} model; Atelier runs SD1.x, SD2.x (incl. depth) and SDXL "
            f"pipelines", field="model")
    cls = families.base_class(family)
    try:
        pipe = cls.from_pretrained(
            str(folder), torch_dtype=dtype, local_files_only=True, use_safetensors=True,
            variant=_weights_variant(folder), **_sd_extras(family))
    except (OSError, ValueError) as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"could not load {folder} as {cls.__name__}: {exc}", field="model") from exc
    return pipe, family


def load_pipeline(source: ModelSource, dtype: torch.dtype, home: Path,
                  hf_cache: Path) -> tuple[DiffusionPipeline, str]:
    """Load ``source`` to (pipeline on the CPU, family). ``home`` (``$ATELIER_HOME``) and
    ``hf_cache`` are searched for the CLIP tokenizer files single-file checkpoints need."""
    if source.kind == "single_file":
        # Checkpoints exported from the tiny model are described by the tiny folder's configs.
        tiny_config = ensure_tiny("tiny", home / "models")
        return load_single_file(source.path, dtype, home, hf_cache, tiny_config=tiny_config)
    return load_folder_pipeline(source.path, dtype)


def load_controlnet(source: ModelSource, dtype: torch.dtype) -> ControlNetModel:
    """Load a ControlNet from a diffusers folder, a cache snapshot or a single file."""
    if source.kind == "single_file":
        return load_single_file_controlnet(source.path, dtype)
    if families.family_of_folder(source.path) != families.CONTROLNET:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{source.name} ({source.path}) is not a ControlNet model",
                            field="control.model")
    try:
        return ControlNetModel.from_pretrained(
            str(source.path), torch_dtype=dtype, local_files_only=True, use_safetensors=True,
            variant=_weights_variant(source.path))
    except (OSError, ValueError) as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"could not load ControlNet {source.path}: {exc}",
                            field="control.model") from exc
