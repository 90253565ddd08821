"""What models are on this machine: the built-in tiny models, diffusers folders and
``.safetensors`` checkpoints in the configured model folders (an A1111
``models/Stable-diffusion`` or ComfyUI ``models/checkpoints`` folder, say), and
diffusers pipelines or ControlNets in the Hugging Face cache, and IP-Adapters in either
(ip_adapters.py; the CLIP image encoders they read pictures with are not listed: no job
names one, nor are the text encoders and VAEs that Flux/SD3 transformer files load with,
dit_files.py). Reads only files.

An entry that looks like a model but cannot be read as one (a broken config, a file
that is not safetensors, a link leading outside the model roots) is skipped and
reported as a ``ModelProblem``; one broken entry never hides the others."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import ModelInfo, ModelProblem

from . import families
from .control_models import kind_of_model
from .dit_files import file_family
from .embeddings import EMBEDDINGS_FOLDER, in_embeddings_folder
from .file_kinds import describe_file, is_ip_adapter, ip_adapter_family, read_header
from .ip_adapters import IP_ADAPTER_FOLDERS, adapter_name, in_adapter_folder
from .loras import LORA_FOLDERS
from .upscalers import UPSCALER_FOLDERS, in_upscaler_folder, upscaler_name
from .sources import GGUF_SUFFIX, SINGLE_FILE_SUFFIX, TINY_MODELS, ModelRoots, hf_snapshot

# ModelInfo.kind of the families that are not checkpoints
_KIND_OF_FAMILY = {families.CONTROLNET: "controlnet", families.T2I_ADAPTER: "t2i_adapter"}


def kind_of_family(family: str) -> str:
    return _KIND_OF_FAMILY.get(family, "checkpoint")


@dataclass
class Catalog:
    """The models found, and the entries that could not be read (``ModelProblem``)."""
    models: list[ModelInfo] = field(default_factory=list)
    problems: list[ModelProblem] = field(default_factory=list)

    def extend(self, other: "Catalog") -> None:
        self.models.extend(other.models)
        self.problems.extend(other.problems)

    def add(self, path: Path, describe: Callable[..., Optional[ModelInfo]], *args: object) -> None:
        """Add the model ``describe(*args)`` returns (None: not a model to list), or the
        problem it raises about ``path``."""
        try:
            info = describe(*args)
            if info is not None:
                self.models.append(info)
        except ProtocolError as exc:
            self.problems.append(ModelProblem(path=str(path), message=exc.message))


def _tiny_models(models_dir: Path) -> list[ModelInfo]:
    infos = []
    for tiny in TINY_MODELS.values():
        folder = models_dir / tiny.name
        infos.append(ModelInfo(name=tiny.name, source="tiny", family=tiny.family,
                               path=str(folder) if folder.is_dir() else None,
                               kind=kind_of_family(tiny.family)))
    return infos


def _is_diffusers_folder(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() or (
        (folder / "config.json").is_file() and any(folder.glob("*.safetensors")))


_OUTSIDE = ("it links outside the model folders, Atelier's home and the Hugging Face cache, "
            "where Atelier loads nothing from")


def _single_file(root: Path, path: Path, roots: ModelRoots) -> Optional[ModelInfo]:
    if not roots.holds(path):
        # Loading it would be refused, so listing it would only mislead.
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND, _OUTSIDE)
    relative = path.relative_to(root).as_posix()
    if in_upscaler_folder(path, root):
        # Named as jobs name it (job.upscale.upscaler): without the folder and suffix.
        return ModelInfo(name=upscaler_name(path, root), source="single_file",
                         family=families.UNKNOWN, path=str(path), kind="upscaler")
    info = describe_file(path)
    if info.kind == "lora":
        # Named as jobs name it: without the suffix and the LoRA folder (loras.py).
        name = relative[:-len(SINGLE_FILE_SUFFIX)]
        first, _, rest = name.partition("/")
        return ModelInfo(name=rest if rest and first in LORA_FOLDERS else name,
                         source="single_file", family=info.family, path=str(path), kind="lora")
    if info.kind in ("image_encoder", "component"):
        return None
    if info.kind == "ip_adapter":
        # Named as jobs name it: without the suffix and the adapter folder (ip_adapters.py).
        name = adapter_name(path, root) if in_adapter_folder(path, root) else \
            relative[:-len(SINGLE_FILE_SUFFIX)]
        return ModelInfo(name=name, source="single_file", family=info.family, path=str(path),
                         kind="ip_adapter")
    if info.kind == "embedding":
        if not in_embeddings_folder(path, root):
            raise ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                                "a textual-inversion embedding outside an 'embeddings' folder, "
                                "where prompts do not find it")
        # Named by its token: the word a prompt uses (embeddings.py).
        return ModelInfo(name=path.stem, source="single_file", family=info.family,
                         path=str(path), kind="embedding")
    family = file_family(path)
    return ModelInfo(name=relative, source="single_file", family=family, path=str(path),
                     kind=kind_of_family(family))


def _gguf_file(root: Path, path: Path, roots: ModelRoots) -> Optional[ModelInfo]:
    """A GGUF-quantized Flux/SD3 transformer; other GGUF files (text encoders, language
    models) are not models a job names."""
    if not roots.holds(path):
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND, _OUTSIDE)
    family = file_family(path)
    if not families.is_transformer(family):
        return None
    return ModelInfo(name=path.relative_to(root).as_posix(), source="single_file",
                     family=family, path=str(path), kind="checkpoint")


def _diffusers_folder(root: Path, folder: Path) -> ModelInfo:
    family = families.family_of_folder(folder)
    return ModelInfo(name=folder.relative_to(root).as_posix(), source="diffusers",
                     family=family, path=str(folder), kind=kind_of_family(family))


def _folder_models(root: Path, roots: ModelRoots, start: Path | None = None) -> Catalog:
    """Models under ``start`` (all of ``root`` by default); names are paths relative to
    ``root``, which ``resolve`` accepts."""
    found = Catalog()

    def unreadable(exc: OSError) -> None:
        found.problems.append(ModelProblem(path=str(exc.filename),
                                           message=f"cannot be read: {exc.strerror}"))

    for current, dirs, files in os.walk(start or root, onerror=unreadable):
        here = Path(current)
        dirs.sort()
        if here != root and _is_diffusers_folder(here):
            dirs.clear()   # its component weights are not separate models
            found.add(here, _diffusers_folder, root, here)
            continue
        for file in sorted(files):
            if file.lower().endswith(SINGLE_FILE_SUFFIX):
                path = here / file
                found.add(path, _single_file, root, path, roots)
            elif file.lower().endswith(GGUF_SUFFIX):
                path = here / file
                found.add(path, _gguf_file, root, path, roots)
    return found


def hf_cache_models(hf_cache: Path) -> Catalog:
    """Diffusers pipelines, ControlNets and adapters in the Hugging Face cache (other repos,
    a tokenizer say, are left out)."""
    found = Catalog()
    if not hf_cache.is_dir():
        return found
    cache = ModelRoots(folders=(hf_cache.resolve(),))
    for entry in sorted(hf_cache.glob("models--*")):
        repo_id = entry.name[len("models--"):].replace("--", "/")
        snapshot = hf_snapshot(repo_id, hf_cache)
        if snapshot is None:
            continue
        if not cache.holds(snapshot):
            found.problems.append(ModelProblem(path=str(snapshot), message=_OUTSIDE))
            continue
        try:
            family = families.family_of_folder(snapshot)
        except ProtocolError as exc:
            found.problems.append(ModelProblem(path=str(snapshot), message=exc.message))
            continue
        if family != families.UNKNOWN:
            found.models.append(ModelInfo(name=repo_id, source="hf_cache", family=family,
                                          path=str(snapshot), kind=kind_of_family(family)))
        else:
            found.extend(_repo_ip_adapters(repo_id, snapshot))
    return found


def _repo_ip_adapters(repo_id: str, snapshot: Path) -> Catalog:
    """The IP-Adapter files of a cached repo (h94/IP-Adapter's ``models/*.safetensors``),
    named ``repo_id/path-in-the-repo`` without the suffix, as jobs name them."""
    found = Catalog()
    for path in sorted([*snapshot.glob(f"*{SINGLE_FILE_SUFFIX}"),
                        *snapshot.glob(f"*/*{SINGLE_FILE_SUFFIX}")]):
        try:
            header = read_header(path)
        except ProtocolError as exc:
            found.problems.append(ModelProblem(path=str(path), message=exc.message))
            continue
        if is_ip_adapter(header):
            relative = path.relative_to(snapshot).as_posix()[:-len(SINGLE_FILE_SUFFIX)]
            found.models.append(ModelInfo(name=f"{repo_id}/{relative}", source="hf_cache",
                                          family=ip_adapter_family(header), path=str(path),
                                          kind="ip_adapter"))
    return found


def list_models(home: Path, search_dirs: Sequence[Path], hf_cache: Path) -> Catalog:
    """Every model a client can name, and the problems met while looking."""
    roots = ModelRoots.of(home, search_dirs, hf_cache)
    found = Catalog(models=_tiny_models(home / "models"))
    for root in search_dirs:
        if root.is_dir():
            found.extend(_folder_models(root, roots))
    # Atelier's home holds the tiny models and the spool too, so only its LoRA, embeddings,
    # upscaler and IP-Adapter folders are walked; jobs already find files there (a home root).
    for folder in (*LORA_FOLDERS, EMBEDDINGS_FOLDER, *UPSCALER_FOLDERS, *IP_ADAPTER_FOLDERS):
        start = home / folder
        if start.is_dir() and not any(start.resolve().is_relative_to(Path(d).resolve())
                                      for d in search_dirs):
            found.extend(_folder_models(home, roots, start))
    found.extend(hf_cache_models(hf_cache))
    found.models = [_with_control_kind(info) for info in found.models]
    return found


def _with_control_kind(info: ModelInfo) -> ModelInfo:
    """A control model's entry with the control kind its name says (clients list each
    control's models by it)."""
    if info.kind not in ("controlnet", "t2i_adapter"):
        return info
    return dataclasses.replace(info, control_kind=kind_of_model(info.name))
