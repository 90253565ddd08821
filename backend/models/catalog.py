"""What models are on this machine: the built-in tiny models, diffusers folders and
``.safetensors`` checkpoints in the configured model folders (an A1111
``models/Stable-diffusion`` or ComfyUI ``models/checkpoints`` folder, say), and
diffusers pipelines or ControlNets in the Hugging Face cache. Reads only files."""

from __future__ import annotations

import os
from pathlib import Path

from protocol.messages import ModelInfo

from . import families
from .single_file import checkpoint_family
from .sources import SINGLE_FILE_SUFFIX, TINY_MODELS, hf_snapshot


def _tiny_models(models_dir: Path) -> list[ModelInfo]:
    infos = []
    for tiny in TINY_MODELS.values():
        folder = models_dir / tiny.name
        infos.append(ModelInfo(name=tiny.name, source="tiny", family=tiny.family,
                               path=str(folder) if folder.is_dir() else None))
    return infos


def _is_diffusers_folder(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() or (
        (folder / "config.json").is_file() and any(folder.glob("*.safetensors")))


def _folder_models(root: Path) -> list[ModelInfo]:
    """Models under ``root``; names are paths relative to it, which ``resolve`` accepts."""
    infos = []
    for current, dirs, files in os.walk(root):
        here = Path(current)
        dirs.sort()
        if here != root and _is_diffusers_folder(here):
            dirs.clear()   # its component weights are not separate models
            infos.append(ModelInfo(name=here.relative_to(root).as_posix(), source="diffusers",
                                   family=families.family_of_folder(here), path=str(here)))
            continue
        for file in sorted(files):
            if file.lower().endswith(SINGLE_FILE_SUFFIX):
                path = here / file
                infos.append(ModelInfo(name=path.relative_to(root).as_posix(), source="single_file",
                                       family=checkpoint_family(path), path=str(path)))
    return infos


def hf_cache_models(hf_cache: Path) -> list[ModelInfo]:
    if not hf_cache.is_dir():
        return []
    infos = []
    for entry in sorted(hf_cache.glob("models--*")):
        repo_id = entry.name[len("models--"):].replace("--", "/")
        snapshot = hf_snapshot(repo_id, hf_cache)
        if snapshot is None:
            continue
        family = families.family_of_folder(snapshot)
        if family != families.UNKNOWN:   # tokenizer-only and other non-pipeline repos
            infos.append(ModelInfo(name=repo_id, source="hf_cache", family=family,
                                   path=str(snapshot)))
    return infos


def list_models(home: Path, search_dirs: list[Path], hf_cache: Path) -> list[ModelInfo]:
    infos = _tiny_models(home / "models")
    for root in search_dirs:
        if root.is_dir():
            infos.extend(_folder_models(root))
    infos.extend(hf_cache_models(hf_cache))
    return infos
