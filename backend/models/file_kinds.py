"""What one ``.safetensors`` file holds: a checkpoint, a LoRA, a textual-inversion
embedding, an IP-Adapter or a CLIP image encoder (what IP-Adapters read pictures with), and
which model family a LoRA, an embedding or an IP-Adapter was made for. Reads only the
file's header (tensor names, shapes and metadata), never its tensors.

Families come from, in order: kohya's and the model spec's metadata
(``ss_base_model_version``, ``modelspec.architecture``), names only Flux or SD3
transformer LoRAs have, names only SDXL files have
(a second text encoder, kohya's SGM-layout UNet names), and the width of the text
embeddings the LoRA's cross-attention or the embedding's vectors take (768 SD1.x, 1024
SD2.x, 2048 SDXL; the built-in tiny models' 32 and 64).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Optional

from safetensors import SafetensorError, safe_open

from protocol.errors import ErrorCode, ProtocolError
from protocol.families import BASE_FAMILY, fits  # noqa: F401  (the rule jobs are judged by)

from . import families, tiny
from .sources import check_safetensors_file

FileKind = Literal["checkpoint", "lora", "embedding", "ip_adapter", "image_encoder", "component"]

# Width of the text embeddings a UNet's cross-attention takes -> family.
CROSS_ATTENTION_WIDTHS = {768: families.SD15, 1024: families.SD2, 2048: families.SDXL,
                          tiny.TEXT_HIDDEN: families.SD15, 2 * tiny.TEXT_HIDDEN: families.SDXL}
# Width of one text-encoder token vector -> family (SDXL embeddings hold clip_l and clip_g).
TOKEN_WIDTHS = {768: families.SD15, 1024: families.SD2, tiny.TEXT_HIDDEN: families.SD15}
_LORA_MARKS = ("lora_down", "lora_up", ".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.",
               "lora_linear_layer")
# Names only diffusion-transformer LoRAs have (kohya's ``lora_unet_double_blocks_...``,
# Black Forest Labs'/ComfyUI's ``diffusion_model.double_blocks...``, diffusers'
# ``transformer.single_transformer_blocks...``; SD3's ``joint_blocks``); checked before the
# SDXL marks, which an SD3 LoRA's ``text_encoder_2.`` would match.
_FLUX_MARKS = ("double_blocks", "single_blocks", "single_transformer_blocks")
_SD3_MARKS = ("joint_blocks", "transformer.transformer_blocks.")
FLUX_WIDTH = 3072            # a Flux.1 block's width: tells a diffusers-named Flux LoRA from SD3's
_SDXL_MARKS = ("lora_te2_", "text_encoder_2.", "lora_unet_input_blocks", "lora_unet_output_blocks",
               "lora_unet_middle_block")
# An IP-Adapter file holds its image projection and the cross-attention keys and values
# it adds (h94/IP-Adapter's layout, which ComfyUI and A1111 read too).
_IP_ADAPTER_PREFIXES = ("image_proj.", "ip_adapter.")
IMAGE_ENCODER_MARK = "vision_model.embeddings.patch_embedding.weight"   # transformers' CLIP
# A text encoder or a VAE kept as a file of its own (ComfyUI's models/text_encoders, clip and
# vae folders): a part of a model that a diffusion-transformer file finds (dit_files.py),
# not a model a job names. CLIP text encoders, T5 encoders, Qwen3 models (as the causal LM's
# file or the bare model's), VAEs (original or diffusers names).
COMPONENT_MARKS = ("text_model.embeddings.token_embedding.weight",
                   "embeddings.token_embedding.weight",
                   "encoder.block.0.layer.0.SelfAttention.q.weight",
                   "model.layers.0.self_attn.q_norm.weight", "layers.0.self_attn.q_norm.weight",
                   "decoder.conv_in.weight")
_EMBEDDING_KEY_SETS = ({"emb_params"}, {"clip_l", "clip_g"})
EMBEDDING_MAX_VECTORS = 75     # what fits one CLIP prompt (77 tokens less start and end)


@dataclass(frozen=True)
class TensorHeader:
    """A safetensors file's tensor shapes by name, and its metadata."""
    shapes: Mapping[str, tuple[int, ...]]
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class FileInfo:
    kind: FileKind
    family: str          # for a checkpoint: families.UNKNOWN (single_file.py reads it)


def read_header(path: Path, field: str = "model") -> TensorHeader:
    """The header of ``path``; ProtocolError(MODEL_LOAD_FAILED) naming ``field`` when it
    is not a readable safetensors file."""
    check_safetensors_file(path, field)
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{path.name} is not a usable safetensors file: {exc}",
                            field=field) from exc
    return TensorHeader(shapes, metadata)


def is_lora(header: TensorHeader) -> bool:
    return any(mark in key for key in header.shapes for mark in _LORA_MARKS)


def is_embedding(header: TensorHeader) -> bool:
    keys = set(header.shapes)
    if keys in _EMBEDDING_KEY_SETS:
        return True
    # diffusers' own format: {token: vector(s)}
    if len(keys) == 1:
        shape = next(iter(header.shapes.values()))
        return len(shape) == 1 or (len(shape) == 2 and shape[0] <= EMBEDDING_MAX_VECTORS)
    return False


def _family_from_metadata(metadata: Mapping[str, str]) -> Optional[str]:
    version = metadata.get("ss_base_model_version", "") + " " + \
        metadata.get("modelspec.architecture", "")
    version = version.lower()
    if "flux" in version:
        return families.FLUX
    if "sd3" in version or "stable-diffusion-v3" in version:
        return families.SD3
    if "xl" in version:
        return families.SDXL
    if "sd_v2" in version or "stable-diffusion-v2" in version:
        return families.SD2
    if "sd_v1" in version or "stable-diffusion-v1" in version:
        return families.SD15
    return None


def lora_family(header: TensorHeader) -> str:
    """The family a LoRA was made for, or ``families.UNKNOWN``."""
    from_metadata = _family_from_metadata(header.metadata)
    if from_metadata is not None:
        return from_metadata
    transformer = _transformer_lora_family(header)
    if transformer is not None:
        return transformer
    if any(mark in key for key in header.shapes for mark in _SDXL_MARKS):
        return families.SDXL
    for key, shape in header.shapes.items():
        # The down projection of a cross-attention key: (rank, text width).
        down = "lora_down" in key or "lora_A" in key or ".lora.down." in key
        if "attn2" in key and ("to_k" in key or "to.k" in key) and down and len(shape) == 2:
            return CROSS_ATTENTION_WIDTHS.get(shape[1], families.UNKNOWN)
    return families.UNKNOWN


def _transformer_lora_family(header: TensorHeader) -> Optional[str]:
    """FLUX or SD3 for a LoRA of a diffusion transformer, else None."""
    if any(mark in key for key in header.shapes for mark in _FLUX_MARKS):
        return families.FLUX
    blocks = [shape for key, shape in header.shapes.items() if any(m in key for m in _SD3_MARKS)]
    if not blocks:
        return None
    # Flux LoRAs trained on the double blocks only share SD3's diffusers names; their
    # down projections take Flux's width.
    return families.FLUX if any(s[-1] == FLUX_WIDTH for s in blocks if len(s) == 2) else families.SD3


def embedding_family(header: TensorHeader) -> str:
    """The family a textual-inversion embedding was made for, or ``families.UNKNOWN``."""
    if set(header.shapes) == {"clip_l", "clip_g"}:
        return families.SDXL
    (shape,) = list(header.shapes.values())[:1] or [()]
    return TOKEN_WIDTHS.get(shape[-1], families.UNKNOWN) if shape else families.UNKNOWN


def is_ip_adapter(header: TensorHeader) -> bool:
    return all(any(key.startswith(prefix) for key in header.shapes)
               for prefix in _IP_ADAPTER_PREFIXES)


def ip_adapter_family(header: TensorHeader) -> str:
    """The family an IP-Adapter was made for, from the text width its first key projection
    shares with the UNet's cross-attention (``ip_adapter.1.to_k_ip.weight``: (out, width))."""
    shape = header.shapes.get("ip_adapter.1.to_k_ip.weight", ())
    return CROSS_ATTENTION_WIDTHS.get(shape[-1], families.UNKNOWN) if shape else families.UNKNOWN


def describe_file(path: Path, field: str = "model") -> FileInfo:
    """Whether ``path`` is a LoRA, an embedding, an IP-Adapter, a CLIP image encoder or
    (anything else) a checkpoint."""
    header = read_header(path, field)
    if is_ip_adapter(header):
        return FileInfo("ip_adapter", ip_adapter_family(header))
    if IMAGE_ENCODER_MARK in header.shapes:
        return FileInfo("image_encoder", families.UNKNOWN)
    if any(mark in header.shapes for mark in COMPONENT_MARKS):
        return FileInfo("component", families.UNKNOWN)
    if is_lora(header):
        return FileInfo("lora", lora_family(header))
    if is_embedding(header):
        return FileInfo("embedding", embedding_family(header))
    return FileInfo("checkpoint", families.UNKNOWN)


