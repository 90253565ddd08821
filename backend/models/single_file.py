"""Single-file (A1111 / ComfyUI) checkpoints. Work in progress."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel, DiffusionPipeline

from protocol.errors import ErrorCode, ProtocolError


def load_single_file(path: Path, dtype: torch.dtype, hf_cache: Path) -> tuple[DiffusionPipeline, str]:
    raise ProtocolError(ErrorCode.UNSUPPORTED, "single-file checkpoints are not supported yet",
                        field="model")


def load_single_file_controlnet(path: Path, dtype: torch.dtype) -> ControlNetModel:
    raise ProtocolError(ErrorCode.UNSUPPORTED, "single-file ControlNets are not supported yet",
                        field="control.model")


def checkpoint_family(path: Path) -> str:
    from . import families
    return families.UNKNOWN
