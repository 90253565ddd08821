"""LoRAs: which file a job's LoRA name means, and putting exactly a job's LoRAs on a
loaded model through diffusers' own (peft-backed) LoRA loading.

Names resolve inside the same roots as models (``sources.ModelRoots``: the model folders,
Atelier's home, the Hugging Face cache, symlinks resolved first), as ``NAME``,
``NAME.safetensors`` or either inside a LoRA folder (A1111's ``Lora``, ComfyUI's
``loras``); only ``.safetensors`` files that hold a LoRA are taken. Kohya/A1111 and
diffusers key layouts both load: ``pipe.load_lora_weights`` converts them itself.

Per model (``LoraState``): a LoRA file is read once and kept as a peft adapter while jobs
keep using it (at most ``MAX_LOADED_LORAS``); each job activates exactly its own set with
its weights (``set_adapters``), so switching sets reloads no model. A job without LoRAs
takes every adapter off (``unload_lora_weights``): the model's own modules and weights
run again, untouched (they are never merged into), and a model whose attention
projections were fused for speed is fused again, as it was.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import LoraWeight
from protocol.schema import shorten

from .file_kinds import describe_file, fits
from .sources import PICKLE_SUFFIXES, SINGLE_FILE_SUFFIX, ModelRoots

log = logging.getLogger("atelier.models")

LORA_FOLDERS = ("Lora", "loras", "LoRA", "lora")   # A1111, ComfyUI, and their spellings
MAX_LOADED_LORAS = 16          # adapters kept on one model between jobs


@dataclass(frozen=True)
class LoraFile:
    """A resolved LoRA: the name the job used, its file and the family it was made for."""
    name: str
    path: Path
    family: str

    @property
    def adapter_name(self) -> str:
        """The peft adapter name: stable per file, free of the dots peft cannot take."""
        return "lora_" + hashlib.sha256(str(self.path).encode()).hexdigest()[:16]


def _not_found(name: str, field: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                         f"no LoRA named {shorten(name)!r} in the model folders (A1111 "
                         f"models/Lora, ComfyUI models/loras, or any --models-dir); see "
                         f"`atelier models list`", field=field)


def lora_candidates(name: str) -> list[str]:
    """The relative names ``name`` may mean, most specific first."""
    names = [name] if name.lower().endswith(SINGLE_FILE_SUFFIX) else [name + SINGLE_FILE_SUFFIX, name]
    return names + [f"{folder}/{n}" for folder in LORA_FOLDERS for n in names]


def resolve_lora(name: str, roots: ModelRoots, field: str) -> LoraFile:
    """The LoRA file ``name`` means, inside ``roots``. ProtocolError naming ``field``:
    model_not_found for anything missing or outside the roots, model_load_failed for a
    pickle or an unreadable file, invalid_field for a file that holds no LoRA."""
    if not name.strip():
        raise ProtocolError(ErrorCode.INVALID_FIELD, "empty LoRA name", field)
    if Path(name).suffix.lower() in PICKLE_SUFFIXES:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"LoRA {shorten(name)!r} is a pickle file; Atelier loads LoRAs from "
                            f".safetensors only", field)
    real = roots.first_single_file(lora_candidates(name))
    if real is None:
        raise _not_found(name, field)
    try:
        info = describe_file(real, field)
    except ProtocolError as exc:
        raise ProtocolError(exc.code, exc.message, field) from exc
    if info.kind != "lora":
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"{shorten(name)!r} is not a LoRA (it holds a {info.kind})", field)
    return LoraFile(name, real, info.family)


@dataclass(eq=False)
class LoraState:
    """The LoRA adapters on one loaded model, least recently used first, and whether its
    fused attention projections were split for them."""
    adapters: collections.OrderedDict[Path, str] = field(default_factory=collections.OrderedDict)
    unfused: bool = False

    @property
    def active(self) -> bool:
        return bool(self.adapters)


def _adapters_on(pipe: DiffusionPipeline) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def _load(pipe: DiffusionPipeline, lora: LoraFile, model_name: str, field: str) -> None:
    """Read ``lora`` into ``pipe`` as a new adapter; on failure take off what was added."""
    try:
        tensors = load_file(str(lora.path))
        pipe.load_lora_weights(tensors, adapter_name=lora.adapter_name)
    except Exception as exc:
        if lora.adapter_name in _adapters_on(pipe):
            pipe.delete_adapters(lora.adapter_name)
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"LoRA {shorten(lora.name)!r} does not fit model {model_name}: "
                            f"{type(exc).__name__}: {shorten(str(exc), 300)}", field) from exc


def remove_loras(pipe: DiffusionPipeline, state: LoraState) -> None:
    """Take every adapter off: the model's own modules again, re-fused if they were."""
    if state.adapters:
        pipe.unload_lora_weights()
        state.adapters.clear()
    if state.unfused:
        pipe.unet.fuse_qkv_projections()
        state.unfused = False


def apply_loras(pipe: DiffusionPipeline, state: LoraState, loras: Sequence[tuple[LoraFile, float]],
                *, model_name: str, model_family: str, fused_qkv: bool) -> None:
    """Make exactly ``loras`` (file, weight) active on ``pipe`` for the next call.

    ``fused_qkv``: the model's attention projections were fused (accel.py); fused layers
    would bypass LoRA layers, so they are split while LoRAs are on. Refusals name the
    job's field ``loras[i].name``: invalid_field for a LoRA of another family or one
    whose tensors do not fit the model, unsupported for a model that takes no LoRAs."""
    if not loras:
        remove_loras(pipe, state)
        return
    for index, (lora, _) in enumerate(loras):
        if not fits(lora.family, model_family):
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"LoRA {shorten(lora.name)!r} is made for {lora.family} models; "
                                f"model {model_name} is {model_family}", f"loras[{index}].name")
    if not hasattr(pipe, "load_lora_weights"):
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"model {model_name} ({model_family}) takes no LoRAs", "loras[0].name")
    # Only a UNet's fused projections would bypass LoRA layers: a transformer model's fusing
    # is its VAE's (accel.py), which takes no LoRA.
    if fused_qkv and not state.unfused and getattr(pipe, "unet", None) is not None:
        pipe.unet.unfuse_qkv_projections()
        state.unfused = True
    for index, (lora, _) in enumerate(loras):
        if lora.path not in state.adapters:
            _load(pipe, lora, model_name, f"loras[{index}].name")
            state.adapters[lora.path] = lora.adapter_name
        state.adapters.move_to_end(lora.path)
    wanted = {lora.path for lora, _ in loras}
    for path in [p for p in state.adapters if p not in wanted][:max(0, len(state.adapters) - MAX_LOADED_LORAS)]:
        pipe.delete_adapters(state.adapters.pop(path))
    pipe.set_adapters([lora.adapter_name for lora, _ in loras],
                      adapter_weights=[weight for _, weight in loras])


def job_loras(loras: Sequence[LoraWeight], roots: ModelRoots) -> list[tuple[LoraFile, float]]:
    """A job's LoRA list resolved to files, each error naming ``loras[i].name``."""
    return [(resolve_lora(lora.name, roots, f"loras[{index}].name"), lora.weight)
            for index, lora in enumerate(loras)]

