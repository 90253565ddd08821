"""Weights stored as 8-bit floats: ComfyUI users' ``flux1-dev-fp8`` transformers and
``t5xxl_fp8_e4m3fn`` text encoders. Such a file's matrix weights stay 8-bit in memory
(half of bf16) and each layer casts its own to the pipeline's dtype as it runs
(diffusers' layerwise casting); the arithmetic is the same as with the weights upcast,
so the pixels are too. Files "scaled" by ComfyUI (a ``scale_weight`` per layer to
multiply back) are refused: loading them as plain fp8 would give wrong pictures.

Loading reads the file upcast first (``from_single_file``/``from_pretrained`` build the
model in the compute dtype), so the CPU holds the full-precision copy for a moment; the
device only ever sees the 8-bit weights.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import torch
from diffusers import ModelMixin
from diffusers.hooks import apply_layerwise_casting
from safetensors import SafetensorError, safe_open

from protocol.errors import ErrorCode, ProtocolError

FP8_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_SCALED_MARKS = ("scaled_fp8", ".scale_weight", ".scale_input")
# Left in the compute dtype in a text encoder: norms, T5's output projection (it reads
# that weight's dtype to cast its input), and the token embedding (the encoder's
# ``dtype``, which the pipelines cast the prompt embeddings to, is its first weight's).
ENCODER_KEEP = ("norm", r"\.wo$", "shared", "embed_tokens", "relative_attention_bias")


def stored_fp8(path: Path, prefix: str = "", field: str = "model") -> Optional[torch.dtype]:
    """The 8-bit float type most of ``path``'s matrices (those under ``prefix``) are stored
    in, or None; refuses a scaled fp8 file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = [k for k in f.keys() if k.startswith(prefix)]
            matrices = Counter(f.get_slice(k).get_dtype() for k in keys
                               if len(f.get_slice(k).get_shape()) >= 2)
    except (SafetensorError, OSError) as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{path.name} is not a readable safetensors file: {exc}", field) from exc
    if any(mark in key for key in keys for mark in _SCALED_MARKS):
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"{path.name} holds scaled fp8 weights (ComfyUI's *_scaled files), "
                            f"which Atelier does not read; use the plain fp8, fp16 or bf16 file "
                            f"or a GGUF one", field)
    if not matrices:
        return None
    dtype, _ = matrices.most_common(1)[0]
    return FP8_DTYPES.get(dtype)


def keep_stored(model: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> None:
    """Store ``model``'s layer weights as ``storage`` and compute in ``compute``."""
    if isinstance(model, ModelMixin):
        model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
    else:
        apply_layerwise_casting(model, storage_dtype=storage, compute_dtype=compute,
                                skip_modules_pattern=ENCODER_KEEP)
