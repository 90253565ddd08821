"""Textual-inversion embeddings, used by name in prompts as A1111 users write them.

An embedding is a ``.safetensors`` file in an ``embeddings`` folder (A1111's
``embeddings/``, ComfyUI's ``models/embeddings``; the folder itself given as a models dir,
or one or two levels inside one, or ``$ATELIER_HOME/embeddings``), symlinks resolved and
kept inside the model roots. Its token is the file's stem: a prompt containing the word
``my_style`` uses ``embeddings/my_style.safetensors``. Formats: A1111's ``emb_params``,
diffusers' ``{token: vectors}``, and SDXL's ``clip_l`` + ``clip_g`` (one per text encoder).

Each embedding is loaded into a model once (``pipe.load_textual_inversion``), the first
time a prompt on that model uses it; an embedding made for another family is left out,
as A1111 does, and the word stays plain text.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from protocol.errors import ErrorCode, ProtocolError
from protocol.schema import shorten

from . import families
from .file_kinds import describe_file, fits
from .sources import SINGLE_FILE_SUFFIX, ModelRoots

log = logging.getLogger("atelier.models")

EMBEDDINGS_FOLDER = "embeddings"
_WORD = re.compile(r"[^\s,()\[\]{}<>|:]+")


@dataclass(frozen=True)
class EmbeddingFile:
    token: str        # the file's stem, as prompts write it
    path: Path


def embedding_folders(roots: Sequence[Path]) -> list[Path]:
    """The ``embeddings`` folders of each root: the root itself when it is one, else
    ``root/embeddings`` and ``root/*/embeddings`` (ComfyUI's ``models/embeddings``)."""
    found: list[Path] = []
    for root in roots:
        if root.name.lower() == EMBEDDINGS_FOLDER:
            found.append(root)
            continue
        found.extend(p for p in (root / EMBEDDINGS_FOLDER, *root.glob(f"*/{EMBEDDINGS_FOLDER}"))
                     if p.is_dir())
    return list(dict.fromkeys(found))


def in_embeddings_folder(path: Path, root: Path) -> bool:
    """Whether ``path`` (under ``root``) lies in a folder ``embedding_folders`` reads."""
    return any(folder == path.parent or folder in path.parents
               for folder in embedding_folders([root]))


def find_embeddings(folders: Iterable[Path], roots: ModelRoots) -> dict[str, EmbeddingFile]:
    """token -> embedding file, for every ``.safetensors`` file under ``folders`` that
    resolves inside ``roots``; the first folder wins a token found twice."""
    found: dict[str, EmbeddingFile] = {}
    for folder in folders:
        for current, dirs, files in os.walk(folder):
            dirs.sort()
            for file in sorted(files):
                path = Path(current) / file
                if file.lower().endswith(SINGLE_FILE_SUFFIX) and roots.holds(path):
                    found.setdefault(path.stem, EmbeddingFile(path.stem, path.resolve()))
    return found


def used_in(texts: Iterable[str], available: dict[str, EmbeddingFile]) -> list[EmbeddingFile]:
    """The embeddings whose token appears as a word of ``texts``, in order of appearance."""
    used: dict[str, EmbeddingFile] = {}
    for text in texts:
        for word in _WORD.findall(text):
            if word in available:
                used.setdefault(word, available[word])
    return list(used.values())


def load_embedding(pipe: DiffusionPipeline, embedding: EmbeddingFile, model_name: str,
                   model_family: str) -> bool:
    """Load ``embedding`` into ``pipe``'s tokenizers and text encoders under its token.
    False (nothing loaded) when it was made for another family. ProtocolError on
    ``prompt`` when the file cannot be read or loaded."""
    info = describe_file(embedding.path, "prompt")
    if info.kind != "embedding" or not fits(info.family, model_family):
        log.info("embedding %s left out on %s (%s): it is a %s for %s", embedding.token,
                 model_name, model_family, info.kind, info.family)
        return False
    try:
        tensors = load_file(str(embedding.path))
        if set(tensors) == {"clip_l", "clip_g"}:
            pipe.load_textual_inversion(tensors["clip_l"], token=embedding.token,
                                        text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(tensors["clip_g"], token=embedding.token,
                                        text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)
        elif families.is_sdxl(model_family):
            return False        # a one-encoder embedding on SDXL: fits() let an unknown through
        else:
            (vectors,) = tensors.values()
            pipe.load_textual_inversion(vectors, token=embedding.token)
    except Exception as exc:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"embedding {shorten(embedding.token)!r} could not be loaded into "
                            f"model {model_name}: {type(exc).__name__}: {shorten(str(exc), 300)}",
                            "prompt") from exc
    return True
