"""The parts of a Flux.1, Chroma, SD3/SD3.5 or Z-Image model that ComfyUI users keep as
files of their own beside the transformer: the text encoders (``t5xxl``, for Flux and SD3
``clip_l`` too, for SD3 ``clip_g``; Z-Image's ``qwen_3_4b``) in ``models/text_encoders`` or
``models/clip``, the VAE (Flux's ``ae.safetensors``, which Chroma and Z-Image use too) in
``models/vae``; and where they are found for a transformer file.

Each is recognised from its tensor names and width, never from its file name alone; the
name only breaks a tie (``clip_l`` and ``clip_g`` have the same tensor names, and the tiny
models' the same widths). Files the operator named on the daemon's command line are
tried first; a missing part is ``model_not_found`` naming the file and where it goes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTextModelWithProjection, Qwen3Model, T5EncoderModel

from protocol.errors import ErrorCode, ProtocolError

from . import families
from .dit_keys import PREFIX
from .file_kinds import TensorHeader, read_header
from .gguf_files import is_gguf, is_gguf_encoder, read_gguf_header
from .sources import GGUF_SUFFIX, SINGLE_FILE_SUFFIX, ModelRoots

TRANSFORMER_FOLDERS = ("unet", "diffusion_models")       # where ComfyUI keeps transformers
ENCODER_FOLDERS = ("text_encoders", "clip")
VAE_FOLDERS = ("vae",)
CHECKPOINT_FOLDER = "checkpoints"                         # whole checkpoints


@dataclass(frozen=True)
class Part:
    """One component a ComfyUI user keeps as a file of its own."""
    role: str                          # what users call the file: clip_l, clip_g, t5xxl, vae
    component: str                     # the pipeline component it becomes
    what: str                          # for messages
    folders: tuple[str, ...]           # ComfyUI folders it is looked for in
    model_class: type                  # what it loads as
    tokenizer: Optional[str] = None    # the pipeline's tokenizer for it
    # the pipeline runs without it (SD3's T5: Stability's "incl_clips" files come without)
    optional: bool = False


_ENCODER = dict(folders=ENCODER_FOLDERS)
PARTS: dict[str, tuple[Part, ...]] = {
    families.FLUX: (
        Part("clip_l", "text_encoder", "CLIP-L text encoder", model_class=CLIPTextModel,
             tokenizer="tokenizer", **_ENCODER),
        Part("t5xxl", "text_encoder_2", "T5-XXL text encoder", model_class=T5EncoderModel,
             tokenizer="tokenizer_2", **_ENCODER),
        Part("vae", "vae", "Flux VAE (ae.safetensors)", VAE_FOLDERS, AutoencoderKL)),
    families.SD3: (
        Part("clip_l", "text_encoder", "CLIP-L text encoder", model_class=CLIPTextModelWithProjection,
             tokenizer="tokenizer", **_ENCODER),
        Part("clip_g", "text_encoder_2", "CLIP-G text encoder", model_class=CLIPTextModelWithProjection,
             tokenizer="tokenizer_2", **_ENCODER),
        Part("t5xxl", "text_encoder_3", "T5-XXL text encoder", model_class=T5EncoderModel,
             tokenizer="tokenizer_3", optional=True, **_ENCODER),
        Part("vae", "vae", "SD3 VAE", VAE_FOLDERS, AutoencoderKL)),
    families.CHROMA: (      # Flux's T5 and VAE files, without CLIP
        Part("t5xxl", "text_encoder", "T5-XXL text encoder", model_class=T5EncoderModel,
             tokenizer="tokenizer", **_ENCODER),
        Part("vae", "vae", "Flux VAE (ae.safetensors)", VAE_FOLDERS, AutoencoderKL)),
    families.ZIMAGE: (      # ComfyUI's qwen_3_4b file and Flux's VAE
        Part("qwen_3_4b", "text_encoder", "Qwen3-4B text encoder", model_class=Qwen3Model,
             tokenizer="tokenizer", **_ENCODER),
        Part("vae", "vae", "Flux VAE (ae.safetensors)", VAE_FOLDERS, AutoencoderKL)),
}
# FLUX.1-Fill and Depth/Canny-dev take Flux's text encoders and VAE
PARTS[families.FLUX_FILL] = PARTS[families.FLUX_CONTROL] = PARTS[families.FLUX]

def shape_of(header: TensorHeader, *names: str) -> Optional[tuple[int, ...]]:
    """The shape of the first of ``names`` the file holds (with or without a whole
    checkpoint's prefix), or None."""
    for name in names:
        for key in (name, PREFIX + name):
            if key in header.shapes:
                return header.shapes[key]
    return None


def part_width(part: Part, header: TensorHeader) -> Optional[int]:
    """The width of ``part``'s model in a companion file, when the file holds such a
    model (its tensor names say), else None."""
    shapes = header.shapes
    if is_gguf_encoder(header):         # llama.cpp's names: T5's encoder blocks are "enc.blk."
        t5 = any(k.startswith("enc.blk.") for k in shapes)
        fits = (part.model_class is T5EncoderModel and t5) or (
            part.model_class is Qwen3Model and "blk.0.attn_q_norm.weight" in shapes)
        return shapes["token_embd.weight"][1] if fits else None
    if part.model_class is Qwen3Model:
        if not any(k.endswith(".self_attn.q_norm.weight") for k in shapes):
            return None
        shape = shape_of(header, "embed_tokens.weight", "model.embed_tokens.weight")
        return shape[1] if shape else None
    if part.model_class is T5EncoderModel:
        if not any(".SelfAttention.q.weight" in k for k in shapes):
            return None
        shape = shape_of(header, "shared.weight", "encoder.embed_tokens.weight")
        return shape[1] if shape else None
    if part.model_class is AutoencoderKL:
        shape = shape_of(header, "decoder.conv_in.weight")      # (width, latent channels, 3, 3)
        if shape is None or not any(k.startswith("encoder.") for k in shapes):
            return None
        return shape[1]
    shape = shape_of(header, "text_model.embeddings.token_embedding.weight",
                   "embeddings.token_embedding.weight")
    return shape[1] if shape else None


def _expected_width(part: Part, config: Path) -> int:
    cfg = json.loads((config / part.component / "config.json").read_text("utf-8"))
    if part.model_class is T5EncoderModel:
        return int(cfg["d_model"])
    if part.model_class is AutoencoderKL:
        return int(cfg["latent_channels"])
    return int(cfg["hidden_size"])


# ------------------------------------------------------------------ finding companions

@dataclass(frozen=True)
class PartFile:
    """Where a part's tensors are: a file of its own, or a whole checkpoint (transformer,
    text encoders and VAE in one file) under ``prefix``."""
    path: Path
    prefix: str = ""


def embedded_prefix(part: Part) -> str:
    """Where a whole checkpoint (ComfyUI's and Stability's single files) keeps ``part``:
    the text encoders under ``text_encoders.<role>.transformer.``, the VAE as SD kept it."""
    return "first_stage_model." if part.model_class is AutoencoderKL else \
        f"text_encoders.{part.role}.transformer."


def models_folder(path: Path) -> Optional[Path]:
    """The ComfyUI ``models`` folder a transformer file or whole checkpoint sits in (the
    parent of its ``unet``, ``diffusion_models`` or ``checkpoints`` folder), or None."""
    for parent in path.parents:
        if parent.name in (*TRANSFORMER_FOLDERS, CHECKPOINT_FOLDER):
            return parent.parent
    return None


def _candidates(part: Part, path: Path, search_dirs: Sequence[Path]) -> list[Path]:
    """The files in ``part``'s folders: ``.safetensors``, and for a text encoder GGUF too."""
    bases = [b for b in (models_folder(path), *search_dirs) if b is not None]
    suffixes = (SINGLE_FILE_SUFFIX,) if part.model_class is AutoencoderKL else \
        (SINGLE_FILE_SUFFIX, GGUF_SUFFIX)
    found: list[Path] = []
    for base in dict.fromkeys(bases):
        for folder in part.folders:
            if (base / folder).is_dir():
                found.extend(sorted(p for p in (base / folder).rglob("*")
                                    if p.is_file() and p.suffix.lower() in suffixes))
    return found


def find_part(part: Part, config: Path, path: Path, named: Sequence[Path],
              search_dirs: Sequence[Path], roots: ModelRoots,
              whole: Optional[TensorHeader] = None) -> PartFile:
    """Where ``part`` is for the transformer at ``path``: inside it when it is a whole
    checkpoint (``whole``: its header) holding the part, else of the files named on the
    command line, then of those in the part's folders, one whose tensors are that part at
    the config's width; among several, one whose name says its role."""
    width = _expected_width(part, config)
    if whole is not None:
        prefix = embedded_prefix(part)
        inside = TensorHeader({k[len(prefix):]: v for k, v in whole.shapes.items()
                               if k.startswith(prefix)}, {})
        if inside.shapes and part_width(part, inside) == width:
            return PartFile(path, prefix)
    for group in (list(named), _candidates(part, path, search_dirs)):
        matches = []
        for candidate in group:
            if not roots.holds(candidate) and candidate not in named:
                continue
            try:
                header = read_gguf_header(candidate) if is_gguf(candidate) else read_header(candidate)
            except ProtocolError:
                continue
            if part_width(part, header) == width:
                matches.append(candidate)
        if matches:
            named_for_it = [m for m in matches if part.role in m.stem.lower()
                            or (part.role == "vae" and m.stem.lower() == "ae")]
            return PartFile((named_for_it or matches)[0])
    folders = " or ".join(f"{f}/" for f in part.folders)
    raise ProtocolError(
        ErrorCode.MODEL_NOT_FOUND,
        f"{path.name} is a {config.name.replace('_', '-')} transformer and needs its {part.what} as a "
        f"file of its own ({part.role}*.safetensors); none was found. Put it in the {folders} "
        f"folder beside {path.parent.name}/ in the same models folder, or name it when starting "
        f"the daemon", field="model")
