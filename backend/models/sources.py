"""Where a model name points: the tiny test models, a local diffusers folder, a
single-file checkpoint, or a Hugging Face id in the local cache.

Resolution never touches the network and never leaves the model roots: the model
folders, Atelier's home, the Hugging Face cache, and the paths the operator gave the
daemon. Anything else gets the same not-found answer as a name that does not exist, so
a client cannot probe the file system. Pickle checkpoints (.ckpt/.pt/.bin/.pth) are
refused here, before anything could unpickle them; ``check_safetensors_file`` guards
every single file before safetensors opens it.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Mapping, Optional, Sequence

from protocol.errors import ErrorCode, ProtocolError

from . import tiny, tiny_chroma, tiny_flux, tiny_sd3, tiny_zimage

SourceKind = Literal["tiny", "diffusers", "single_file", "hf_cache"]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SINGLE_FILE_SUFFIX = ".safetensors"
GGUF_SUFFIX = ".gguf"          # quantized Flux/SD3 transformers (gguf_files.py)
# owner/name as the hub spells repo ids
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class TinyModel:
    """A built-in test model, built into ``$ATELIER_HOME/models/<name>`` on first use."""
    name: str
    build: Callable[[Path, Path], Path]   # (dest, models_dir) -> dest
    family: str
    made_for: Optional[str] = None        # a conditioner's base family
    control_kind: Optional[str] = None    # a control model's kind (ControlLayer.kind)


def _controlnet_for(base: str, seed_offset: int = 0) -> Callable[[Path, Path], Path]:
    return lambda dest, models_dir: tiny.build_tiny_controlnet(
        dest, ensure_tiny(base, models_dir), seed=tiny.SEED + 1 + seed_offset)


def _adapter_for(base: str) -> Callable[[Path, Path], Path]:
    return lambda dest, models_dir: tiny.build_tiny_adapter(dest, ensure_tiny(base, models_dir))


TINY_MODELS: dict[str, TinyModel] = {
    "tiny": TinyModel("tiny", lambda d, _: tiny.build_tiny_model(d), "sd15"),
    "tiny-sdxl": TinyModel("tiny-sdxl", lambda d, _: tiny.build_tiny_sdxl_model(d), "sdxl"),
    "tiny-depth": TinyModel("tiny-depth", lambda d, _: tiny.build_tiny_depth_model(d), "sd2_depth"),
    "tiny-flux": TinyModel("tiny-flux", lambda d, _: tiny_flux.build_tiny_flux_model(d), "flux"),
    "tiny-flux-fill": TinyModel("tiny-flux-fill",
                                lambda d, _: tiny_flux.build_tiny_flux_fill_model(d), "flux_fill"),
    "tiny-flux-control": TinyModel("tiny-flux-control",
                                   lambda d, _: tiny_flux.build_tiny_flux_control_model(d),
                                   "flux_control"),
    "tiny-sd3": TinyModel("tiny-sd3", lambda d, _: tiny_sd3.build_tiny_sd3_model(d), "sd3"),
    "tiny-chroma": TinyModel("tiny-chroma", lambda d, _: tiny_chroma.build_tiny_chroma_model(d),
                             "chroma"),
    "tiny-zimage": TinyModel("tiny-zimage", lambda d, _: tiny_zimage.build_tiny_zimage_model(d),
                             "zimage"),
    "tiny-controlnet": TinyModel("tiny-controlnet", _controlnet_for("tiny"), "controlnet",
                                 control_kind="depth"),
    "tiny-sdxl-controlnet": TinyModel("tiny-sdxl-controlnet", _controlnet_for("tiny-sdxl"),
                                      "controlnet", control_kind="depth"),
    "tiny-adapter": TinyModel("tiny-adapter", _adapter_for("tiny"), "t2i_adapter", "sd15",
                              control_kind="depth"),
    "tiny-sdxl-adapter": TinyModel("tiny-sdxl-adapter", _adapter_for("tiny-sdxl"), "t2i_adapter",
                                   "sdxl", control_kind="depth"),
}
# One tiny ControlNet per further control kind and tiny base ("tiny-controlnet-canny",
# "tiny-sdxl-controlnet-normal", ...), each with weights of its own.
TINY_CONTROL_KINDS = ("normal", "lineart", "scribble", "softedge", "canny")


def _tiny_control_models() -> dict[str, TinyModel]:
    models = {}
    for number, kind in enumerate(TINY_CONTROL_KINDS, start=1):
        for base, prefix, family in (("tiny", "tiny-controlnet", "sd15"),
                                     ("tiny-sdxl", "tiny-sdxl-controlnet", "sdxl")):
            name = f"{prefix}-{kind}"
            models[name] = TinyModel(name, _controlnet_for(base, 100 * number), "controlnet",
                                     made_for=family, control_kind=kind)
    return models


TINY_MODELS.update(_tiny_control_models())


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


# ----------------------------------------------------------------- confinement

NOT_FOUND_NAME_CHARS = 100     # how much of a client's model name an error echoes
SAFETENSORS_MIN_BYTES = 8      # the header length field alone
SAFETENSORS_MAX_HEADER = 100 * 2 ** 20   # what the safetensors format itself allows
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _expanded(path: Path) -> Optional[Path]:
    """``path`` with ``~`` expanded, or None for an unknown ``~user``."""
    try:
        return path.expanduser()
    except RuntimeError:
        return None


def _real(path: Path) -> Optional[Path]:
    """``path`` made absolute with every symlink resolved, or None when the OS cannot say
    (a name too long, a symlink loop, a NUL byte)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _stat(path: Path) -> Optional[os.stat_result]:
    try:
        return path.stat()
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ModelRoots:
    """Where a client may name models from: anything inside ``folders`` (the model folders,
    Atelier's home, the Hugging Face cache), and exactly the ``allowed`` paths the operator
    named on the daemon's command line. All paths are held resolved; the order of
    ``folders`` is the order relative names are looked up in."""
    folders: tuple[Path, ...]
    allowed: tuple[Path, ...] = ()

    @classmethod
    def of(cls, home: Path, search_dirs: Sequence[Path], hf_cache: Path,
           allowed_paths: Sequence[Path] = ()) -> "ModelRoots":
        folders = [_real(Path(d).expanduser()) for d in (*search_dirs, home, hf_cache)]
        allowed = [_real(Path(p).expanduser()) for p in allowed_paths]
        return cls(tuple(dict.fromkeys(f for f in folders if f is not None)),
                   tuple(p for p in allowed if p is not None))

    def inside_folders(self, real: Path) -> bool:
        return any(real.is_relative_to(folder) for folder in self.folders)

    def holds(self, path: Path) -> bool:
        """Whether ``path``, symlinks resolved, lies inside one of the folders."""
        real = _real(path)
        return real is not None and self.inside_folders(real)

    def candidates(self, name: str) -> Iterator[Path]:
        """The resolved paths ``name`` may mean, all admitted, most specific first: an
        allowed path (also as the daemon's working directory reads it), an absolute path
        inside a folder, else ``name`` inside each folder."""
        as_path = _expanded(Path(name))
        real = _real(as_path) if as_path is not None else None
        if real is not None and real in self.allowed:
            yield real
            return
        if as_path is None or as_path.is_absolute():
            if real is not None and self.inside_folders(real):
                yield real
            return
        for folder in self.folders:
            real = _real(folder / as_path)
            if real is not None and self.inside_folders(real):
                yield real

    def first_single_file(self, names: Iterable[str]) -> Optional[Path]:
        """The first regular ``.safetensors`` file that one of ``names`` (most specific
        first) means inside the roots; None when none does."""
        for name in names:
            for real in self.candidates(name):
                try:
                    regular = stat.S_ISREG(real.stat().st_mode)
                except OSError:
                    continue
                if regular and real.suffix.lower() == SINGLE_FILE_SUFFIX:
                    return real
        return None


def operator_paths(names: Iterable[str]) -> list[Path]:
    """Those of ``names`` (given on the daemon's command line) that are existing paths,
    resolved: the ``allowed_paths`` a daemon passes to ``resolve``."""
    paths = []
    for name in names:
        if name in TINY_MODELS:
            continue
        as_path = _expanded(Path(name))
        real = _real(as_path) if as_path is not None else None
        if real is not None and _stat(real) is not None:
            paths.append(real)
    return paths


def _load_failed(path: Path, problem: str, field: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                         f"{path.name} is not a usable safetensors file: {problem}", field=field)


def check_safetensors_file(path: Path, field: str = "model") -> None:
    """Refuse, before safetensors or diffusers open it, a ``.safetensors`` path that is not a
    regular file (opening a FIFO blocks the whole process: safetensors holds the GIL) or
    whose header length field is impossible. ProtocolError(MODEL_LOAD_FAILED) naming the
    problem otherwise."""
    info = _stat(path)
    if info is None:
        raise _load_failed(path, "it cannot be read", field)
    if not stat.S_ISREG(info.st_mode):
        raise _load_failed(path, "it is not a regular file", field)
    try:
        # Non-blocking, and checked again on the open file: it may have been swapped.
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _load_failed(path, f"it cannot be opened ({exc.strerror})", field) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _load_failed(path, "it is not a regular file", field)
        if info.st_size < SAFETENSORS_MIN_BYTES:
            raise _load_failed(path, f"it is {info.st_size} bytes long, shorter than the "
                                     f"{SAFETENSORS_MIN_BYTES}-byte header length", field)
        header = int.from_bytes(os.read(fd, SAFETENSORS_MIN_BYTES), "little")
    finally:
        os.close(fd)
    body = info.st_size - SAFETENSORS_MIN_BYTES
    if header > min(SAFETENSORS_MAX_HEADER, body):
        raise _load_failed(path, f"its header claims {header} bytes, more than the "
                                 f"{min(SAFETENSORS_MAX_HEADER, body)} it can hold (a truncated "
                                 f"or foreign file)", field)


def _check_folder_weights(folder: Path) -> None:
    """Every safetensors file of a diffusers folder (its own and its components') is a
    regular file with a plausible header, so that loading it cannot hang."""
    for weights in sorted([*folder.glob("*.safetensors"), *folder.glob("*/*.safetensors")]):
        check_safetensors_file(weights)


# ----------------------------------------------------------------- resolution

def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"{path.name} is a pickle checkpoint ({path.suffix}); Atelier never unpickles model "
            f"files because loading one can run arbitrary code. Convert it to .safetensors "
            f"(for example with the A1111 or ComfyUI model converter) and load that instead.",
            field="model")


def _shown(name: str) -> str:
    """A client's model name as errors echo it: bounded."""
    return name if len(name) <= NOT_FOUND_NAME_CHARS else name[:NOT_FOUND_NAME_CHARS] + "..."


def _not_found(name: str) -> ProtocolError:
    # One sentence whatever the reason (missing, outside the roots, not a model, not a
    # regular file), and no paths: a client must not learn what exists on this machine.
    return ProtocolError(
        ErrorCode.MODEL_NOT_FOUND,
        f"no model named {_shown(name)!r} in the model folders or the Hugging Face cache "
        f"(built-in: {', '.join(TINY_MODELS)}); see `atelier models list`", field="model")


def _local_source(name: str, real: Path) -> Optional[ModelSource]:
    """The model at ``real`` (resolved and admitted by the roots), or None when nothing
    loadable is there."""
    refuse_pickle(Path(name))
    refuse_pickle(real)
    info = _stat(real)
    if info is None:
        return None
    if stat.S_ISDIR(info.st_mode):
        if not ((real / "model_index.json").is_file() or (real / "config.json").is_file()):
            return None
        # The folder loader hands these files to diffusers as they are.
        _check_folder_weights(real)
        return ModelSource(name, "diffusers", real)
    suffixes = {Path(name).suffix.lower(), real.suffix.lower()}
    if stat.S_ISREG(info.st_mode) and suffixes & {SINGLE_FILE_SUFFIX, GGUF_SUFFIX}:
        return ModelSource(name, "single_file", real)
    return None


def _cached_source(name: str, hf_cache: Path, roots: ModelRoots) -> ModelSource:
    snapshot = hf_snapshot(name, hf_cache)
    real = _real(snapshot) if snapshot is not None else None
    if real is None or not roots.inside_folders(real):
        raise ProtocolError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{_shown(name)} is not in the local cache; fetch it with: atelier models pull "
            f"{_shown(name)}", field="model")
    _check_folder_weights(real)
    return ModelSource(name, "hf_cache", real)


def resolve(name: str, home: Path, search_dirs: Sequence[Path], hf_cache: Path, *,
            allowed_paths: Sequence[Path] = ()) -> ModelSource:
    """Turn a model name into a source, in this order: a built-in tiny model; one of
    ``allowed_paths`` (paths the operator gave the daemon); an absolute path inside the
    roots (``search_dirs``, ``home``, ``hf_cache``) or a relative one inside each root in
    turn; a Hugging Face id in the cache. Symlinks are resolved before the roots are
    checked. Raises ProtocolError(MODEL_NOT_FOUND / MODEL_LOAD_FAILED, field="model");
    everything not found, outside the roots or not a model gets the same not-found."""
    if not name or not name.strip():
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND, "empty model name", field="model")
    if name in TINY_MODELS:
        return ModelSource(name, "tiny", ensure_tiny(name, home / "models"))
    roots = ModelRoots.of(home, search_dirs, hf_cache, allowed_paths)
    for real in roots.candidates(name):
        source = _local_source(name, real)
        if source is not None:
            return source
    if _HF_ID.match(name):
        return _cached_source(name, hf_cache, roots)
    raise _not_found(name)
