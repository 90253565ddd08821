"""Fetching models from the Hugging Face hub into the local HF cache, and listing it.

This is the only module of the daemon that goes to the network, and only when a
user runs ``atelier models pull ID``. It downloads just what a diffusers pipeline
loads: configs, tokenizer files and ``.safetensors`` weights (the fp16 variant where
asked and present). Pickle weights, safety checkers, ONNX/Flax files and root-level
single-file checkpoints are left on the hub. ``ID`` may also name one ``.safetensors``
file of a repo (``h94/IP-Adapter/models/ip-adapter_sd15``, the suffix optional): that file
is fetched, with the ``image_encoder`` folder beside it where there is one (the CLIP
image encoder an IP-Adapter reads pictures with).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Optional

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from protocol.errors import ErrorCode, ProtocolError

from .catalog import Catalog, hf_cache_models
from .dit_files import QWEN_TOKENIZER_REPOS, T5_TOKENIZER_REPOS
from .single_file import TOKENIZER_REPOS
from .sources import hf_cache_dir, hf_repo_folder, variant_of

# Called after each file with (repo path fetched, bytes done, bytes to fetch).
PullProgress = Callable[[str, int, int], None]

SKIPPED_FOLDERS = frozenset({"safety_checker"})
TOKENIZER_FILE_NAMES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
T5_TOKENIZER_FILE_NAMES = ("spiece.model", "tokenizer.json", "tokenizer_config.json",
                           "special_tokens_map.json")
QWEN_TOKENIZER_FILE_NAMES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".onnx_data")
VIT_H_ENCODER = "models/image_encoder/"     # h94/IP-Adapter's ViT-H/14
# Repos pulled only for their tokenizer (single_file.find_clip_tokenizer,
# dit_files.find_t5_tokenizer, find_qwen_tokenizer), and the files that are.
TOKENIZER_ONLY_REPOS = {
    **{repo: TOKENIZER_FILE_NAMES for repo, subfolder in TOKENIZER_REPOS if subfolder == ""},
    **{repo: T5_TOKENIZER_FILE_NAMES for repo, subfolder in T5_TOKENIZER_REPOS if subfolder == ""},
    **{repo: QWEN_TOKENIZER_FILE_NAMES for repo, subfolder in QWEN_TOKENIZER_REPOS if subfolder == ""}}


@dataclass(frozen=True)
class PullResult:
    model_id: str
    path: Path            # the snapshot folder in the HF cache
    files: list[str]      # repo paths fetched (or already cached)
    bytes: int            # their total size as the hub reported it


def _is_weight(path: str) -> bool:
    return path.endswith(_WEIGHT_SUFFIXES)


def _pick_weights(names: list[str], variant: Optional[str], folder: str) -> list[str]:
    safetensors = [n for n in names if n.endswith(".safetensors")]
    if variant:
        chosen = [n for n in safetensors if variant_of(PurePosixPath(n).name) == variant]
        if chosen:
            return chosen
    plain = [n for n in safetensors if variant_of(PurePosixPath(n).name) is None]
    if plain:
        return plain
    if safetensors:          # only other variants exist (e.g. fp16 only): take them
        return safetensors
    if any(_is_weight(n) for n in names):
        raise ProtocolError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{folder or 'the repo root'} has no .safetensors weights, only pickle or other "
            f"formats, which Atelier does not load", field="model")
    return []


def split_model_id(model_id: str) -> tuple[str, str]:
    """(repo id, path of one file in it or ""): ``owner/repo[/path/in/repo]``."""
    owner, _, rest = model_id.partition("/")
    repo, _, inner = rest.partition("/")
    return f"{owner}/{repo}", inner


def _select_file(repo_id: str, file: str, paths: list[str], variant: Optional[str]) -> list[str]:
    """One ``.safetensors`` file of a repo, and the ``image_encoder`` folder beside it; for
    h94/IP-Adapter's ``sdxl_models/*vit-h*`` adapters ``models/image_encoder`` (ViT-H), which
    the repo pairs them with (the one beside them is ViT-bigG)."""
    name = file if file.endswith(".safetensors") else file + ".safetensors"
    if name not in paths:
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                            f"{repo_id} has no file {name} (Atelier fetches .safetensors only)",
                            field="model")
    parent = str(PurePosixPath(name).parent)
    encoder = "image_encoder/" if parent == "." else f"{parent}/image_encoder/"
    if parent == "sdxl_models" and "vit-h" in name.lower() and VIT_H_ENCODER + "config.json" in paths:
        encoder = VIT_H_ENCODER
    inside = [p for p in paths if p.startswith(encoder) and "/" not in p[len(encoder):]]
    return sorted([name] + [p for p in inside if p.endswith(".json")]
                  + _pick_weights(inside, variant, encoder.rstrip("/")))


def select_files(repo_id: str, paths: Iterable[str], variant: Optional[str] = None,
                 file: str = "") -> list[str]:
    """The repo files Atelier needs from ``paths`` (a repo listing); with ``file``, that
    one file and its image encoder (``_select_file``)."""
    paths = sorted(paths)
    if file:
        return _select_file(repo_id, file, paths, variant)
    if repo_id in TOKENIZER_ONLY_REPOS:
        return [p for p in paths if p in TOKENIZER_ONLY_REPOS[repo_id]]
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        parent = str(PurePosixPath(path).parent)
        by_folder.setdefault("" if parent == "." else parent, []).append(path)
    root = by_folder.get("", [])
    if "model_index.json" in root:
        chosen = ["model_index.json"]
        for folder, names in by_folder.items():
            if not folder or "/" in folder or folder in SKIPPED_FOLDERS:
                continue
            chosen += [n for n in names if n.endswith((".json", ".txt"))]
            chosen += _pick_weights(names, variant, folder)
        return sorted(chosen)
    if "config.json" in root:    # one model, e.g. a ControlNet
        return sorted([n for n in root if n.endswith(".json")] + _pick_weights(root, variant, ""))
    raise ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                        f"{repo_id} is neither a diffusers pipeline (model_index.json) nor a "
                        f"single diffusers model (config.json)", field="model")


def pull(model_id: str, progress: Optional[PullProgress] = None, *, variant: Optional[str] = None,
         revision: str = "main", hf_cache: Optional[Path] = None,
         endpoint: Optional[str] = None, token: Optional[str] = None) -> PullResult:
    """Download what Atelier needs of ``model_id`` into the HF cache (``hf_cache``, default
    from the environment) and return where it landed. ``endpoint`` defaults to
    ``$HF_ENDPOINT`` or the public hub; ``variant="fp16"`` prefers half-precision weights.
    ``progress(path, bytes_done, bytes_total)`` is called after each file."""
    cache = Path(hf_cache) if hf_cache is not None else hf_cache_dir(os.environ)
    api = HfApi(endpoint=endpoint, token=token)
    repo_id, file = split_model_id(model_id)
    try:
        # Resolve the revision once so every file comes from the same commit.
        commit = api.model_info(repo_id, revision=revision).sha
        listing = {f.path: f.size or 0 for f in
                   api.list_repo_tree(repo_id, recursive=True, revision=commit)
                   if isinstance(f, RepoFile)}
        files = select_files(repo_id, listing, variant, file)
        total, done = sum(listing[f] for f in files), 0
        for name in files:
            hf_hub_download(repo_id, name, revision=commit, cache_dir=str(cache),
                            endpoint=endpoint, token=token)
            done += listing[name]
            if progress is not None:
                progress(name, done, total)
    except OfflineModeIsEnabled as exc:
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                            f"cannot pull {model_id}: HF_HUB_OFFLINE is set; unset it to download",
                            field="model") from exc
    except RepositoryNotFoundError as exc:
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                            f"{model_id} was not found on the hub (or needs a token)", field="model") from exc
    except HfHubHTTPError as exc:
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND, f"pulling {model_id} failed: {exc}",
                            field="model") from exc
    except Exception as exc:
        # Transport errors come from whichever HTTP library this hub client version uses.
        where = endpoint or os.environ.get("HF_ENDPOINT") or "the Hugging Face hub"
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                            f"cannot pull {model_id} from {where}: {type(exc).__name__}: {exc}",
                            field="model") from exc
    repo = hf_repo_folder(repo_id, cache)
    if revision != commit:
        # Point the branch at this commit, as a snapshot download does, so loading by id finds it.
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit, "utf-8")
    return PullResult(model_id=model_id, path=repo / "snapshots" / commit, files=files, bytes=total)


def list_local(hf_cache: Optional[Path] = None) -> Catalog:
    """Diffusers pipelines and ControlNets in the HF cache, and the cached repos that
    could not be read."""
    return hf_cache_models(Path(hf_cache) if hf_cache is not None else hf_cache_dir(os.environ))
