"""GGUF-quantized diffusion transformers (city96's ``flux1-dev-Q8_0.gguf`` and kin, which
ComfyUI-GGUF users keep in ``models/unet``), read through diffusers' GGUF support: the
quantized weights stay quantized in memory (Q8_0 about half of bf16, Q4 about a quarter)
and each layer dequantizes them as it runs. Needs the ``gguf`` package (ggml's own
reader). Only a transformer comes as GGUF; its text encoders and VAE are found as for
any split file (dit_files.py).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import torch

from protocol.errors import ErrorCode, ProtocolError

from .file_kinds import TensorHeader
from .sources import GGUF_SUFFIX

GGUF_MAGIC = b"GGUF"


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == GGUF_SUFFIX


def _failed(path: Path, problem: str, field: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"{path.name} is not a usable GGUF file: "
                                                      f"{problem}", field=field)


def _reader(path: Path, field: str) -> Any:
    """A ``gguf.GGUFReader`` over ``path`` (memory-mapped; reads the tensor index only),
    after checking it is a regular file that starts as GGUF files do."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _failed(path, "it cannot be read", field) from exc
    if not stat.S_ISREG(info.st_mode):
        raise _failed(path, "it is not a regular file", field)
    with open(path, "rb") as f:
        if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise _failed(path, "it does not start with the GGUF magic", field)
    try:
        import gguf
    except ImportError as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{path.name} is a GGUF file; reading one needs the gguf package "
                            f"(pip install gguf)", field=field) from exc
    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise _failed(path, str(exc), field) from exc


def read_gguf_header(path: Path, field: str = "model") -> TensorHeader:
    """Tensor names and shapes (torch's order: ggml lists the innermost dimension first)."""
    reader = _reader(path, field)
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    return TensorHeader(shapes, {})


def load_gguf_state(path: Path, field: str = "model") -> dict[str, torch.Tensor]:
    """The tensors of a GGUF file: quantized ones as diffusers' ``GGUFParameter`` (raw
    blocks that know their quantization), F32/F16 ones as plain tensors."""
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    _reader(path, field)     # the checks, and a clear error without the package
    try:
        return load_gguf_checkpoint(str(path))
    except (ValueError, OSError) as exc:
        raise _failed(path, str(exc), field) from exc


def quantization(dtype: torch.dtype) -> Any:
    """diffusers' GGUF quantization config: layers dequantize to ``dtype`` as they run."""
    from diffusers import GGUFQuantizationConfig

    return GGUFQuantizationConfig(compute_dtype=dtype)
