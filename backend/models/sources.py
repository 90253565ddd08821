"""Where a model name points: the tiny test models, a local diffusers folder, a
single-file checkpoint, or a Hugging Face id in the local cache.

Resolution never touches the network. Pickle checkpoints (.ckpt/.pt/.bin/.pth)
are refused here, before anything could unpickle them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping, Optional

from protocol.errors import ErrorCode, ProtocolError

from . import tiny

SourceKind = Literal["tiny", "diffusers", "single_file", "hf_cache"]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SINGLE_FILE_SUFFIX = ".safetensors"
# owner/name as the hub spells repo ids
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class TinyModel:
    """A built-in test model, built into ``$ATELIER_HOME/models/<name>`` on first use."""
    name: str
    build: Callable[[Path, Path], Path]   # (dest, models_dir) -> dest
    family: str


def _controlnet_for(base: str) -> Callable[[Path, Path], Path]:
    return lambda dest, models_dir: tiny.build_tiny_controlnet(dest, ensure_tiny(base, models_dir))


def _adapter_for(base: str) -> Callable[[Path, Path], Path]:
    return lambda dest, models_dir: tiny.build_tiny_adapter(dest, ensure_tiny(base, models_dir))


TINY_MODELS: dict[str, TinyModel] = {
    "tiny": TinyModel("tiny", lambda d, _: tiny.build_tiny_model(d), "sd15"),
    "tiny-sdxl": TinyModel("tiny-sdxl", lambda d, _: tiny.build_tiny_sdxl_model(d), "sdxl"),
    "tiny-depth": TinyModel("tiny-depth", lambda d, _: tiny.build_tiny_depth_model(d), "sd2_depth"),
    "tiny-controlnet": TinyModel("tiny-controlnet", _controlnet_for("tiny"), "controlnet"),
    "tiny-sdxl-controlnet": TinyModel("tiny-sdxl-controlnet", _controlnet_for("tiny-sdxl"),
                                      "controlnet"),
    "tiny-adapter": TinyModel("tiny-adapter", _adapter_for("tiny"), "t2i_adapter"),
    "tiny-sdxl-adapter": TinyModel("tiny-sdxl-adapter", _adapter_for("tiny-sdxl"), "t2i_adapter"),
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model name. ``path`` is the folder or file the weights load from
    (for ``hf_cache`` the snapshot folder inside the cache)."""
    name: str
    kind: SourceKind
    path: Path


# ------------------------------------------------------------------ locations

def atelier_home(env: Mapping[str, str] = os.environ) -> Path:
    """``$ATELIER_HOME``, default ``~/.cache/atelier``."""
    return Path(env.get("ATELIER_HOME") or Path.home() / ".cache" / "atelier").expanduser()


def hf_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub
    itself reads it once at import time, which tests cannot change)."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def ensure_tiny(name: str, models_dir: Path) -> Path:
    """The folder of built-in tiny model ``name`` under ``models_dir``, built on first use."""
    folder = models_dir / name
    if not (folder / tiny.MARKER_FILE).is_file():
        TINY_MODELS[name].build(folder, models_dir)
    return folder


def hf_repo_folder(repo_id: str, hf_cache: Path) -> Path:
    """The cache folder of a model repo (the hub cache's documented layout)."""
    return hf_cache / ("models--" + repo_id.replace("/", "--"))


def hf_snapshot(repo_id: str, hf_cache: Path, revision: str = "main") -> Optional[Path]:
    """The cached snapshot folder of ``repo_id`` at ``revision``, or None; never downloads.

    Read from ``refs/<revision>`` directly: ``snapshot_download(local_files_only=True)``
    refuses snapshots that hold only the files Atelier chose to pull."""
    repo = hf_repo_folder(repo_id, hf_cache)
    ref = repo / "refs" / revision
    commit = ref.read_text("utf-8").strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def variant_of(filename: str) -> Optional[str]:
    """The weights variant in a diffusers file name: "fp16" for ``model.fp16.safetensors``
    and ``model.fp16-00001-of-00002.safetensors``, None for ``model.safetensors``."""
    m = re.fullmatch(r"[^.]+\.(\w+)(?:-\d+-of-\d+)?\.safetensors", filename)
    return m.group(1) if m else None


# ----------------------------------------------------------------- resolution

def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"{path.name} is a pickle checkpoint ({path.suffix}); Atelier never unpickles model "
            f"files because loading one can run arbitrary code. Convert it to .safetensors "
            f"(for example with the A1111 or ComfyUI model converter) and load that instead.",
            field="model")


def _local_source(name: str, path: Path) -> ModelSource:
    refuse_pickle(path)
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / "config.json").is_file():
            return ModelSource(name, "diffusers", path.resolve())
        raise ProtocolError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{path} is a folder but not a diffusers model (no model_index.json or config.json)",
            field="model")
    if path.suffix.lower() == SINGLE_FILE_SUFFIX:
        return ModelSource(name, "single_file", path.resolve())
    raise ProtocolError(
        ErrorCode.MODEL_NOT_FOUND,
        f"{path} is not a model Atelier can load: expected a diffusers folder or a "
        f"{SINGLE_FILE_SUFFIX} checkpoint", field="model")


def resolve(name: str, home: Path, search_dirs: list[Path], hf_cache: Path) -> ModelSource:
    """Turn a model name into a source, in this order: a built-in tiny model; an existing
    path; a file or folder name inside one of ``search_dirs``; a Hugging Face id in the cache.
    Raises ProtocolError(MODEL_NOT_FOUND / MODEL_LOAD_FAILED, field="model")."""
    if not name or not name.strip():
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND, "empty model name", field="model")
    if name in TINY_MODELS:
        return ModelSource(name, "tiny", ensure_tiny(name, home / "models"))
    as_path = Path(name).expanduser()
    if as_path.exists():
        return _local_source(name, as_path)
    if not as_path.is_absolute():
        for folder in search_dirs:
            candidate = folder / name
            if candidate.exists():
                return _local_source(name, candidate)
    refuse_pickle(as_path)   # a pickle name that does not exist is still refused by name
    if _HF_ID.match(name):
        snapshot = hf_snapshot(name, hf_cache)
        if snapshot is None:
            raise ProtocolError(
                ErrorCode.MODEL_NOT_FOUND,
                f"{name} is not in the local cache ({hf_cache}); fetch it with: "
                f"atelier models pull {name}", field="model")
        return ModelSource(name, "hf_cache", snapshot)
    where = ", ".join(str(d) for d in search_dirs) or "no model folders configured"
    raise ProtocolError(
        ErrorCode.MODEL_NOT_FOUND,
        f"no model named {name!r}: not a built-in ({', '.join(TINY_MODELS)}), not an existing "
        f"path, not in the model folders ({where}) and not a Hugging Face id (owner/name)",
        field="model")
