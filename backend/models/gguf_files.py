"""GGUF-quantized diffusion transformers (city96's ``flux1-dev-Q8_0.gguf`` and kin, which
ComfyUI-GGUF users keep in ``models/unet``), read through diffusers' GGUF support: the
quantized weights stay quantized in memory (Q8_0 about half of bf16, Q4 about a quarter)
and each layer dequantizes them as it runs. Needs the ``gguf`` package (ggml's own
reader). Text encoders kept as GGUF (T5-XXL, Qwen3) are found as any part is
(dit_parts.py) and dequantized to the pipeline's dtype as they load: their file is smaller,
their memory is not.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Iterable

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


# The llama.cpp architectures of the text encoders kept as GGUF (city96's
# t5-v1_1-xxl-encoder-Q8_0.gguf, Qwen3-4B-Q8_0.gguf), by transformers' model type; and the
# prefix gguf-py's name table puts before the bare model's tensor names.
ENCODER_ARCHITECTURES = {"t5": ("T5ENCODER", ""), "qwen3": ("QWEN3", "model.")}


def is_gguf_encoder(header: TensorHeader) -> bool:
    """Whether a GGUF file's tensors are a text encoder's (llama.cpp's names)."""
    return "token_embd.weight" in header.shapes and any(
        k.startswith(("enc.blk.", "blk.")) for k in header.shapes)


def encoder_gguf_names(config: Any, keys: Iterable[str]) -> dict[str, str]:
    """llama.cpp's name of each of ``keys`` (a transformers T5 encoder's or Qwen3 model's
    tensor names; ``config`` its config), through gguf-py's table; those it has none for
    (T5's ``encoder.embed_tokens``, the shared embedding again) are left out."""
    import gguf

    arch, prefix = ENCODER_ARCHITECTURES[config.model_type]
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch), config.num_hidden_layers)
    out = {}
    for key in keys:
        stem, _, suffix = key.rpartition(".")
        theirs = names.get_name(prefix + stem)
        if theirs is not None:
            out[key] = f"{theirs}.{suffix}"
    return out


def encoder_state(path: Path, model: torch.nn.Module, dtype: torch.dtype,
                  field: str = "model") -> dict[str, torch.Tensor]:
    """A GGUF text encoder's tensors dequantized to ``dtype``, under the names of
    ``model`` (a transformers T5 encoder or Qwen3 model, on any device: only its tensor
    names and layer count are read)."""
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    ours = {theirs: key for key, theirs in
            encoder_gguf_names(model.config, model.state_dict()).items()}
    state = {}
    for name, tensor in load_gguf_state(path, field).items():
        if name not in ours:
            continue          # what the pipeline does not use (Qwen's output head)
        if isinstance(tensor, GGUFParameter):
            tensor = dequantize_gguf_tensor(tensor)
        state[ours[name]] = tensor.to(dtype)
    return state


def quantization(dtype: torch.dtype) -> Any:
    """diffusers' GGUF quantization config: layers dequantize to ``dtype`` as they run."""
    from diffusers import GGUFQuantizationConfig

    return GGUFQuantizationConfig(compute_dtype=dtype)
