"""Load a resolved model source into a diffusers pipeline, offline.

One folder loader serves the tiny models, local diffusers folders and Hugging
Face cache snapshots alike; single-file checkpoints go through
``single_file.prepare_single_file``. Only safetensors weights are ever read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import torch
from diffusers import ControlNetModel, DiffusionPipeline, T2IAdapter

from protocol.errors import ErrorCode, ProtocolError

from . import families
from .dit_files import file_family, find_dit_files, prepare_dit_file
from .gguf_files import is_gguf
from .single_file import load_single_file_controlnet, prepare_single_file
from .sources import ModelRoots, ModelSource, ensure_tiny, variant_of


M = TypeVar("M", ControlNetModel, T2IAdapter)


def _weights_variant(folder: Path) -> Optional[str]:
    """The variant ("fp16") whose weights a variant pull left in ``folder``; diffusers falls
    back to plain weights for components that have no variant file."""
    weights = list(folder.glob("*/*.safetensors")) + list(folder.glob("*.safetensors"))
    variants = {variant_of(w.name) for w in weights} - {None}
    return variants.pop() if len(variants) == 1 else None


@dataclass(frozen=True)
class PreparedLoad:
    """A model checked as far as it can be without reading weights; ``load()`` reads them."""
    family: str
    load: Callable[[], DiffusionPipeline]


def _prepare_folder(folder: Path, dtype: torch.dtype) -> PreparedLoad:
    family = families.family_of_folder(folder)
    if family not in families.BASE_KIND:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED,
            f"{folder} holds a {family} model; Atelier runs SD1.x, SD2.x (incl. depth), SDXL, "
            f"Flux.1, SD3/SD3.5, Chroma and Z-Image pipelines", field="model")
    cls = families.base_class(family)

    def load() -> DiffusionPipeline:
        try:
            return cls.from_pretrained(
                str(folder), torch_dtype=dtype, local_files_only=True, use_safetensors=True,
                variant=_weights_variant(folder), **families.pipeline_extras(family))
        except (OSError, ValueError) as exc:
            raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                                f"could not load {folder} as {cls.__name__}: {exc}",
                                field="model") from exc

    return PreparedLoad(family, load)


def prepare_pipeline(source: ModelSource, dtype: torch.dtype, home: Path, hf_cache: Path,
                     search_dirs: Sequence[Path] = (), roots: Optional[ModelRoots] = None,
                     companions: Sequence[Path] = ()) -> PreparedLoad:
    """Check ``source`` (family, config folder, tokenizer) and return how to load it onto
    the CPU. ``home`` (``$ATELIER_HOME``) and ``hf_cache`` are searched for the CLIP
    tokenizer files single-file checkpoints need. A diffusion-transformer file finds its
    text encoders and VAE among ``companions`` (files the operator named), then in the
    ComfyUI folders beside it and in ``search_dirs``, inside ``roots`` (dit_files.py)."""
    family = file_family(source.path) if source.kind == "single_file" else None
    if family is not None and families.is_transformer(family):
        roots = roots or ModelRoots.of(home, search_dirs, hf_cache)
        files = find_dit_files(source.path, family, home, search_dirs, roots,
                               lambda name: ensure_tiny(name, home / "models"), companions)
        return PreparedLoad(files.family, prepare_dit_file(files, dtype, home, hf_cache))
    if family is not None and is_gguf(source.path):
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"{source.path.name} holds no Flux or SD3 transformer; GGUF files "
                            f"load only as those", field="model")
    if source.kind == "single_file":
        # Checkpoints exported from the tiny model are described by the tiny folder's configs.
        tiny_config = ensure_tiny("tiny", home / "models")
        family, load = prepare_single_file(source.path, dtype, home, hf_cache, tiny_config=tiny_config)
        return PreparedLoad(family, load)
    return _prepare_folder(source.path, dtype)


def load_controlnet(source: ModelSource, dtype: torch.dtype, home: Path) -> ControlNetModel:
    """Load a ControlNet from a diffusers folder, a cache snapshot or a single file."""
    if source.kind == "single_file":
        tiny_config = ensure_tiny("tiny-controlnet", home / "models")
        return load_single_file_controlnet(source.path, dtype, tiny_config=tiny_config)
    return _load_conditioner(ControlNetModel, families.CONTROLNET, "ControlNet", source, dtype)


def conditioner_family(source: ModelSource) -> str:
    """Which kind of depth conditioner ``source`` holds: ``families.CONTROLNET`` or
    ``families.T2I_ADAPTER``; anything else is refused, naming the field."""
    if source.kind == "single_file":
        return families.CONTROLNET     # single files are read as ControlNets (single_file.py)
    family = families.family_of_folder(source.path)
    if family not in families.DEPTH_CONDITIONERS:
        # It may load fine as what it is: the name is the mistake, not the file.
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"{source.name} ({source.path}) is neither a ControlNet nor a "
                            f"T2I-Adapter (it holds: {family})", field="control.model")
    return family


def load_adapter(source: ModelSource, dtype: torch.dtype) -> T2IAdapter:
    """Load a T2I-Adapter from a diffusers folder or a cache snapshot."""
    return _load_conditioner(T2IAdapter, families.T2I_ADAPTER, "T2I-Adapter", source, dtype)


def _load_conditioner(cls: type[M], family: str, what: str, source: ModelSource,
                      dtype: torch.dtype) -> M:
    """One diffusers model folder of ``family`` (a ControlNet or an adapter), or an error
    naming ``control.model``."""
    if source.kind == "single_file" or families.family_of_folder(source.path) != family:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{source.name} ({source.path}) is not a {what} model",
                            field="control.model")
    try:
        return cls.from_pretrained(
            str(source.path), torch_dtype=dtype, local_files_only=True, use_safetensors=True,
            variant=_weights_variant(source.path))
    except (OSError, ValueError) as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"could not load {what} {source.path}: {exc}",
                            field="control.model") from exc
