"""The model layer's front door: which models are loaded, and pipelines built on them.

Public API (everything the job and pipeline layers need):

    store = ModelStore(device="cpu", dtype=torch.float32, home=atelier_home(),
                       search_dirs=[Path("~/sd/models/Stable-diffusion")], hf_cache=None,
                       resident_bytes=8 * 1024**3)   # what parked models may hold, see below
    model = store.load("tiny")         # LoadedModel, now the default and the active model;
    #                                    loading the default again is free
    model = store.use("tiny-sdxl")     # the active model for one job; the default stays
    model = store.use_default()        # the default made active again (a job naming none)
    store.current                      # the default LoadedModel | None (what status reports)
    store.active                       # the LoadedModel on the device | None
    store.resident()                   # names of the resident models, least recent first
    store.weight_loads                 # how many times model weights were read from disk
    pipe = store.pipeline("img2img")   # the active model's; kind: "txt2img" | "img2img" |
    #                                    "inpaint" | "depth"
    pipe = store.pipeline("txt2img", controlnet=None)   # None: no ControlNet;
    #   a name (HF id, folder, .safetensors, "tiny-controlnet") -> ControlNet pipeline;
    #   store.default_depth_control() names what a depth job uses when it names none
    cn = store.controlnet("tiny-controlnet")            # ControlNetModel, cached per model
    cns = store.controlnet_set(["a", "b"])              # one ControlNetModel, or several as
    #                                    one MultiControlNetModel (cached per model)
    store.default_control("canny")     # what a control of that kind uses when it names none
    store.conditioner_family("tiny-adapter")            # "controlnet" | "t2i_adapter"
    adapter = store.adapter("tiny-adapter")             # T2IAdapter, cached per model
    ip = store.ip_adapter("ip-adapter_sd15", field)     # LoadedAdapter with its image encoder,
    #                                    cached per model (None: the family's default)
    store.available()                  # list[protocol.messages.ModelInfo]
    store.memory()                     # (allocated, total) bytes on the device
    store.after_out_of_memory()        # after a job ran out of memory: free the cache
    store.use_loras([LoraWeight("detail", 0.8)])   # exactly these LoRAs on the active model
    #                                    for the next job ([]: its own weights; loras.py)
    store.use_embeddings([prompt, negative])       # load the embeddings they name (embeddings.py)
    store.release()                    # release every model, its ControlNets and adapters

    model.name, model.family, model.source, model.pipe (the base pipeline),
    model.device, model.dtype, model.pipeline(kind, controlnet_model=None),
    model.controlnets, model.adapters, model.nbytes(), model.released, model.release(),
    model.prediction (v-prediction / zero terminal SNR: prediction.py), model.loras,
    model.embeddings

Loading and switching: ``load``/``use`` read a new model's weights onto the CPU while the
active model still serves, and only then park that one and place the new one on the
device; a model that fails to load (``model_load_failed``, naming it) leaves the previous
one serving. Recently used models stay resident, parked in CPU RAM (on the CPU simply
kept), so switching back reads nothing; beyond ``resident_bytes`` (parameter and buffer
bytes, the active model included) the least recently used are released. The active one
always stays; in low-memory mode (CPU offload) it is the only one kept.

Pipelines of every kind share the base pipeline's component objects (``from_pipe``), so
switching kinds costs no load and no memory. Model names are resolved by
``sources.resolve`` (built-in tiny models, paths, files in ``search_dirs``, Hugging Face
ids in the local cache) and never reach the network.

Threading: call ``load``/``use``/``use_default``/``pipeline``/``controlnet``/``release``
from the one worker thread that owns the device; ``available`` only reads the disk and is
safe anywhere.
"""
from __future__ import annotations

import collections
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, TypeVar

import torch
from diffusers import (ControlNetModel, DiffusionPipeline, FluxControlNetModel,
                       FluxMultiControlNetModel, MultiControlNetModel, T2IAdapter)
from torch import nn

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import LoraWeight, ModelInfo
from protocol.schema import shorten

from . import families
from .accel import (CPU_OFFLOAD, FUSE_QKV, AccelOptions, Acceleration, PromptCache,
                    accelerate_controlnet, apply_accel)
from .catalog import Catalog, list_models
from .control_models import DEFAULT_CONTROLS, tiny_control_name
from .deep_tap import DeepFeatureTap, install_deep_tap
from .dit_controlnets import load_dit_controlnet
from .device import device_memory, free_device_cache
from .embeddings import embedding_folders, find_embeddings, load_embedding, used_in
from .ip_adapters import LoadedAdapter, ReferenceModels, default_adapter, find_adapter
from .loader import conditioner_family, load_adapter, load_controlnet, prepare_pipeline
from .loras import LoraState, apply_loras, job_loras
from .prediction import Prediction, prediction_of
from .sources import TINY_MODELS, ModelRoots, ModelSource, hf_cache_dir, resolve

log = logging.getLogger("atelier.models")

# What a depth job of each family uses when neither the job nor the daemon names one: the
# first of these found on this machine. The ControlNet follows the depth more closely; the
# T2I-Adapter costs one small pass per job instead of a second network at every step.
DEFAULT_DEPTH_CONTROLS = {
    families.SD15: ("lllyasviel/control_v11f1p_sd15_depth", "TencentARC/t2iadapter_depth_sd15v2"),
    families.SDXL: ("diffusers/controlnet-depth-sdxl-1.0",
                    "TencentARC/t2i-adapter-depth-midas-sdxl-1.0"),
}
# Transformer families' depth ControlNet (no T2I-Adapters exist for them), in diffusers' format
# (Stability's for SD3.5 large fits that model only: on another the store says so).
DEFAULT_DIT_DEPTH_CONTROLNETS = {
    families.FLUX: "Shakker-Labs/FLUX.1-dev-ControlNet-Depth",
    families.SD3: "stabilityai/stable-diffusion-3.5-large-controlnet-depth"}
# Families whose default depth ControlNet does not fit beside the UNet on an 8 GB card: in
# low-memory mode their adapter comes first. (SDXL: ControlNet 2.5 GB + UNet 5.1 GB in
# fp16, both on the GPU at every step; the adapter is 0.15 GB and runs once.)
ADAPTER_FIRST_IN_LOW_MEMORY = frozenset({families.SDXL})
TINY_DEFAULT_CONTROLNETS = {"tiny": "tiny-controlnet", "tiny-sdxl": "tiny-sdxl-controlnet"}


@dataclass(eq=False)
class LoadedModel:
    """One loaded base pipeline plus the other kinds built from it on demand."""
    name: str
    family: str
    source: ModelSource
    pipe: DiffusionPipeline
    device: str
    dtype: torch.dtype
    accel: Acceleration
    deep_tap: Optional[DeepFeatureTap] = None   # what step caching reads (deep_tap.py)
    prediction: Prediction = field(default_factory=Prediction)   # every job's sampler gets it
    loras: LoraState = field(default_factory=LoraState, repr=False)   # its LoRA adapters
    embeddings: set[str] = field(default_factory=set, repr=False)    # tokens loaded into it
    # The ControlNets and T2I-Adapters loaded for this model, by name: each was checked
    # against this model's UNet, and each moves with it (parked, on the device, released).
    controlnets: dict[str, ControlNetModel] = field(default_factory=dict, repr=False)
    adapters: dict[str, T2IAdapter] = field(default_factory=dict, repr=False)
    # Its IP-Adapters and their image encoders (reference images), by file.
    references: ReferenceModels = field(default_factory=ReferenceModels, repr=False)
    # Several of its ControlNets as one, by their names in order (pipelines are cached per
    # ControlNet object, so the same set must be the same object).
    control_sets: dict[tuple[str, ...], MultiControlNetModel | FluxMultiControlNetModel] = field(default_factory=dict,
                                                                       repr=False)
    _variants: dict[tuple[str, Optional[ControlNetModel]], DiffusionPipeline] = field(
        default_factory=dict, repr=False)
    _released: bool = field(default=False, repr=False)

    @property
    def kinds(self) -> tuple[str, ...]:
        return families.kinds_of(self.family)

    def pipeline_class(self, kind: str, controlnet: bool = False) -> type[DiffusionPipeline]:
        """The class of this model's ``kind`` pipeline; ``unsupported`` on ``kind`` when
        its family has none (an inpainting model's txt2img)."""
        cls = families.pipeline_class(self.family, kind, controlnet=controlnet)
        if cls is None:
            runs = ", ".join(families.kinds_of(self.family, controlnet)) or "nothing"
            what = "with a ControlNet " if controlnet else ""
            raise ProtocolError(ErrorCode.UNSUPPORTED,
                                f"model {self.name} ({self.family}) cannot run {kind} {what}"
                                f"(it runs: {runs})", field="kind")
        return cls

    def pipeline(self, kind: str, controlnet_model: Optional[ControlNetModel] = None) -> DiffusionPipeline:
        """The pipeline for ``kind`` sharing this model's components (cached)."""
        if self._released:
            raise RuntimeError(f"model {self.name} was released")
        key = (kind, controlnet_model)
        if key in self._variants:
            return self._variants[key]
        cls = self.pipeline_class(kind, controlnet=controlnet_model is not None)
        if type(self.pipe) is cls:
            pipe = self.pipe
        else:
            extra = {"controlnet": controlnet_model} if controlnet_model is not None else {}
            # from_pipe casts every shared module to its torch_dtype (fp32 by default): pass ours.
            pipe = cls.from_pipe(self.pipe, torch_dtype=self.dtype, **extra)
            pipe.set_progress_bar_config(disable=True)
        self._variants[key] = pipe
        return pipe

    @property
    def released(self) -> bool:
        return self._released

    @property
    def offloaded(self) -> bool:
        """Whether diffusers' model CPU offload hooks place this model's modules (they
        move each to the GPU while it runs, so the model as a whole never moves)."""
        return CPU_OFFLOAD in self.accel.applied

    def modules(self) -> list[nn.Module]:
        """Every module holding this model's weights: the pipeline's, its ControlNets'
        and its adapters'."""
        own = [m for m in self.pipe.components.values() if isinstance(m, nn.Module)]
        return (own + list(self.controlnets.values()) + list(self.adapters.values())
                + self.references.modules())

    def nbytes(self) -> int:
        """Bytes of parameters and buffers, each tensor counted once (kinds share them)."""
        tensors = {id(t): t for m in self.modules() for t in (*m.parameters(), *m.buffers())}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def move_to(self, device: str) -> None:
        """Move the model to ``device`` (parking on the CPU, or back to the GPU). The
        pipeline's own modules of an offloaded model stay where its hooks put them."""
        if self._released:
            raise RuntimeError(f"model {self.name} was released")
        modules = self.modules()
        if self.offloaded:
            modules = (list(self.controlnets.values()) + list(self.adapters.values())
                       + self.references.modules())
        for module in modules:
            module.to(device)

    def release(self) -> None:
        """Drop every reference this object holds to weights and free the device cache."""
        self._variants.clear()
        self.control_sets.clear()
        self.controlnets.clear()
        self.adapters.clear()
        self.references.clear()
        self.pipe = None  # type: ignore[assignment]
        self._released = True
        gc.collect()
        free_device_cache(self.device)


def _made_for_sdxl(name: str, adapter: T2IAdapter) -> bool:
    """SDXL's T2I-Adapters say so in their type; the built-in tiny adapters have SDXL's
    layout for both families (the tiny UNets are shaped so), and know their base."""
    tiny = TINY_MODELS.get(name)
    if tiny is not None and tiny.made_for is not None:
        return families.is_sdxl(tiny.made_for)
    return adapter.config.adapter_type == "full_adapter_xl"


def native_side(pipe: DiffusionPipeline) -> int:
    """The square image side the model was trained at (UNet sample size x VAE scale; for a
    transformer, which has no sample size, its VAE's)."""
    if not hasattr(pipe, "unet"):
        sample = pipe.vae.config.sample_size
        return sample if isinstance(sample, int) else max(sample)
    sample = pipe.unet.config.sample_size
    return (sample if isinstance(sample, int) else max(sample)) * pipe.vae_scale_factor


DEFAULT_RESIDENT_BYTES = 8 * 1024 ** 3
ModelKey = tuple[str, Path]     # (source kind, source path): one model however it is named


class ModelStore:
    """Owns the loaded models and the ControlNets and T2I-Adapters used with each.

    One model at a time is *active*: on the device, running the job at hand. The *default*
    model is the one a job naming no model runs on; ``load`` sets it, ``use`` does not.
    Recently used models stay *resident* (parked in CPU RAM on a GPU, simply kept on the
    CPU) while together they fit in ``resident_bytes``, so switching back reads no weights."""

    def __init__(self, device: str, dtype: torch.dtype, home: Path, search_dirs: list[Path],
                 hf_cache: Optional[Path] = None, accel: Optional[AccelOptions] = None,
                 depth_controls: Optional[Mapping[str, str]] = None,
                 resident_bytes: int = DEFAULT_RESIDENT_BYTES,
                 allowed_paths: Sequence[Path] = (), companion_files: Sequence[Path] = ()):
        if resident_bytes < 0:
            raise ValueError(f"resident_bytes must be 0 or more, got {resident_bytes}")
        self.device = device
        self.accel = accel or AccelOptions.plain()   # speed levers applied at each load
        self.dtype = dtype
        self.home = Path(home).expanduser()
        self.search_dirs = [Path(d).expanduser() for d in search_dirs]
        self.hf_cache = Path(hf_cache) if hf_cache is not None else hf_cache_dir(os.environ)
        # Paths the operator named (``serve --model PATH``): loadable though outside the roots.
        self.allowed_paths = tuple(Path(p).expanduser() for p in allowed_paths)
        # Text encoder and VAE files the operator named for Flux/SD3 transformer files
        # (dit_files.py); tried before the ComfyUI folders.
        self.companion_files = tuple(Path(p).expanduser() for p in companion_files)
        # Parameter and buffer bytes the resident models may hold together; the active
        # model stays even when it alone is larger.
        self.resident_bytes = resident_bytes
        # Least recently used first; the active model, when there is one, is last.
        self._resident: collections.OrderedDict[ModelKey, LoadedModel] = collections.OrderedDict()
        self._active: Optional[LoadedModel] = None
        self._default: Optional[LoadedModel] = None
        self._weight_loads = 0
        unknown = set(depth_controls or {}) - set(families.BASE_KIND)
        if unknown:
            raise ValueError(f"depth controls for unknown model families {sorted(unknown)}; "
                             f"families: {', '.join(families.BASE_KIND)}")
        # family -> the depth ControlNet or T2I-Adapter the daemon was told to use
        self.depth_controls = dict(depth_controls or {})
        # Run on each newly loaded model before ``load`` returns; the generator serving this
        # store sets it to run its warm-up jobs (``DiffusionGenerator.warm_up``).
        self.warm_up: Optional[Callable[[LoadedModel], object]] = None

    @property
    def current(self) -> Optional[LoadedModel]:
        """The default model: what a job naming no model runs on. It may be parked, or
        released after other models pushed it out of the budget (``use_default`` brings
        it back); its ``name`` is always what the daemon reports."""
        return self._default

    @property
    def active(self) -> Optional[LoadedModel]:
        """The model on the device: the one the last ``load``/``use``/``use_default`` chose."""
        return self._active

    @property
    def weight_loads(self) -> int:
        """How many times this store read a model's weights from disk."""
        return self._weight_loads

    def resident(self) -> list[str]:
        """Names of the resident models, least recently used first."""
        return [model.name for model in self._resident.values()]

    def resolve(self, name: str) -> ModelSource:
        return resolve(name, self.home, self.search_dirs, self.hf_cache,
                       allowed_paths=self.allowed_paths)

    def load(self, name: str) -> LoadedModel:
        """Make ``name`` the default model and the active one (``use``, then remember it
        as the default). Loading the default again is free. When it fails, the default
        and the active model stay as they were."""
        model = self.use(name)
        self._default = model
        return model

    def use(self, name: str) -> LoadedModel:
        """Make ``name`` the active model for the job at hand, leaving the default as it
        is: a resident model moves back to the device, any other is read from disk.

        The new weights are read onto the CPU while the active model still serves; only
        then is that one parked and the new one placed on the device and warmed up. If
        any of this fails, the new model is dropped and the previous one is active again.
        Failures are ``model_load_failed`` naming ``name``; the ProtocolErrors that
        resolving and checking the model raise (model_not_found, unsupported, ...) pass
        through unchanged."""
        source = self.resolve(name)
        resident = self._resident.get(_key(source))
        if resident is not None:
            return self._activate(resident)
        return self._load_new(name, source)

    def use_default(self) -> LoadedModel:
        """Make the default model the active one, reading it again if it was evicted."""
        default = self._require(self._default)
        if default.released:
            self._default = self.use(default.name)
            return self._default
        return self._activate(default)

    def _activate(self, model: LoadedModel) -> LoadedModel:
        """Make the resident ``model`` the active one."""
        if model is self._active:
            return model

        def bring_up() -> LoadedModel:
            self._unpark(model)
            return model

        return self._switch(model.name, bring_up, give_up=lambda: self._park(model))

    def _load_new(self, name: str, source: ModelSource) -> LoadedModel:
        prepared = _failing_as_load_error(
            name, lambda: prepare_pipeline(source, self.dtype, self.home, self.hf_cache,
                                           self.search_dirs, self._roots(), self.companion_files),
            keep_protocol_errors=True)
        started = time.perf_counter()
        pipe = _failing_as_load_error(name, prepared.load)   # onto the CPU
        self._weight_loads += 1
        model = self._switch(name, lambda: self._set_up(name, source, prepared.family, pipe),
                             give_up=lambda: _evacuate(pipe, self.device))
        log.info("loaded %s (%s) on %s in %.1f s; levers %s (compile mode %s); skipped %s; "
                 "resident: %s", name, prepared.family, self.device,
                 time.perf_counter() - started, ", ".join(model.accel.applied) or "none",
                 self.accel.compile_mode, model.accel.skipped or "none",
                 ", ".join(self.resident()))
        return model

    def _set_up(self, name: str, source: ModelSource, family: str,
                pipe: DiffusionPipeline) -> LoadedModel:
        """Place freshly read weights on the device, apply the speed levers and warm up."""
        accel = apply_accel(pipe, self.accel, model_name=name, device=self.device)
        pipe.set_progress_bar_config(disable=True)
        # Before warm-up, so that it is part of every compiled graph.
        deep_tap = install_deep_tap(pipe.unet) if hasattr(pipe, "unet") else None
        model = LoadedModel(name=name, family=family, source=source, pipe=pipe,
                            device=self.device, dtype=self.dtype, accel=accel, deep_tap=deep_tap,
                            prediction=prediction_of(source, dict(pipe.scheduler.config)))
        self._active = model    # the warm-up jobs' pipelines and ControlNets are this model's
        if self.warm_up is not None:
            # Compiled modules compile here rather than in the first user's job.
            self.warm_up(model)
        return model

    def _switch(self, name: str, bring_up: Callable[[], LoadedModel],
                give_up: Callable[[], None]) -> LoadedModel:
        """Park the active model and ``bring_up`` the next one, then keep what fits the
        budget. If parking or bringing up fails: ``give_up`` on the next model, put the
        previous one back on the device, and raise model_load_failed naming ``name``."""
        previous = self._active
        try:
            if previous is not None:
                self._park(previous)
            self._active = None
            model = bring_up()
        except BaseException as exc:
            self._active = None
            give_up()
            if previous is not None:
                self._unpark(previous)
                self._active = previous
            if isinstance(exc, Exception):
                raise _load_error(name, exc) from exc
            raise
        key = _key(model.source)
        self._resident[key] = model
        self._resident.move_to_end(key)
        self._active = model
        self._evict_beyond_budget()
        return model

    def _park(self, model: LoadedModel) -> None:
        """Take ``model`` off the device into CPU RAM (on the CPU it simply stays)."""
        if self.device != "cpu":
            model.move_to("cpu")

    def _unpark(self, model: LoadedModel) -> None:
        if self.device != "cpu":
            model.move_to(self.device)

    def _evict_beyond_budget(self) -> None:
        """Release least recently used models until the resident ones fit the budget; the
        active one always stays. In low-memory mode (CPU offload) only the active one
        stays: that mode is for machines short of memory, and offloaded models already
        trade speed for it."""
        budget = 0 if self.accel.cpu_offload else self.resident_bytes
        sizes = {key: model.nbytes() for key, model in self._resident.items()}
        while len(self._resident) > 1 and sum(sizes.values()) > budget:
            key, oldest = next(iter(self._resident.items()))
            log.info("released %s: resident models hold %.2f GB, the budget is %.2f GB",
                     oldest.name, sum(sizes.values()) / 1e9, budget / 1e9)
            del self._resident[key], sizes[key]
            oldest.release()

    @staticmethod
    def _require(model: Optional[LoadedModel]) -> LoadedModel:
        if model is None:
            raise ProtocolError(ErrorCode.NOT_READY, "no model is loaded", field="model")
        return model

    def _require_active(self) -> LoadedModel:
        return self._require(self._active)

    def default_depth_control(self) -> str:
        """The depth ControlNet or T2I-Adapter the active model uses when a job names none:
        the daemon's choice for the family (``depth_controls``), else the first of the
        family's defaults (``DEFAULT_DEPTH_CONTROLS``, the adapter first in low-memory mode
        where ``ADAPTER_FIRST_IN_LOW_MEMORY``) that is on this machine. When none is, the
        error says how to get one."""
        model = self._require_active()
        chosen = self.depth_controls.get(model.family) or TINY_DEFAULT_CONTROLNETS.get(model.name)
        if chosen:
            return chosen
        if model.family in DEFAULT_DIT_DEPTH_CONTROLNETS:
            return self._default_dit_depth_controlnet(model)
        candidates = DEFAULT_DEPTH_CONTROLS.get(model.family)
        if not candidates:
            raise ProtocolError(ErrorCode.UNSUPPORTED,
                                f"model {model.name} ({model.family}) has no depth ControlNet "
                                f"or T2I-Adapter", field="control.model")
        controlnet, adapter = candidates
        if self.accel.cpu_offload and model.family in ADAPTER_FIRST_IN_LOW_MEMORY:
            candidates = (adapter, controlnet)
        for name in candidates:
            if self._is_local(name):
                return name
        raise ProtocolError(
            ErrorCode.MODEL_NOT_FOUND,
            f"depth jobs on {model.family} models need a depth ControlNet or T2I-Adapter and "
            f"neither default is on this machine; fetch one with: atelier models pull "
            f"{controlnet} (follows the depth closely, about +50% time per step) or: atelier "
            f"models pull {adapter} (one small pass per job)", field="control.model")

    def _default_dit_depth_controlnet(self, model: LoadedModel) -> str:
        """A transformer family's depth ControlNet when it is on this machine; else the
        error says how to get one (there is no T2I-Adapter for these families)."""
        name = DEFAULT_DIT_DEPTH_CONTROLNETS[model.family]
        if self._is_local(name):
            return name
        raise ProtocolError(
            ErrorCode.MODEL_NOT_FOUND,
            f"depth jobs on {model.family} models need a {model.family} depth ControlNet and "
            f"none is on this machine; fetch one with: atelier models pull {name}, or name a "
            f"{model.family} depth or union ControlNet file (ComfyUI's models/controlnet) in "
            f"the control's model", field="control.model")

    def default_control(self, kind: str) -> str:
        """The control model a control of ``kind`` uses on the active model when it names
        none: depth as ``default_depth_control``; for the other kinds the built-in tiny one
        for a tiny model, else the first of the family's defaults (``DEFAULT_CONTROLS``)
        on this machine. When none is, the error says what to fetch."""
        if kind == "depth":
            return self.default_depth_control()
        model = self._require_active()
        tiny = tiny_control_name(model.name, kind)
        if tiny is not None:
            return tiny
        candidates = DEFAULT_CONTROLS.get(model.family, {}).get(kind, ())
        for name in candidates:
            if self._is_local(name):
                return name
        if not candidates:
            raise ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                                f"there is no default {kind} ControlNet for {model.family} models; "
                                f"name one (a {kind} ControlNet or T2I-Adapter made for "
                                f"{model.family}) in the control's model", field="control.model")
        pulls = " or: ".join(f"atelier models pull {name}" for name in candidates)
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                            f"{kind} controls on {model.family} models need a {kind} ControlNet "
                            f"or T2I-Adapter and no default is on this machine; fetch one with: "
                            f"{pulls}", field="control.model")

    def _is_local(self, name: str) -> bool:
        try:
            self.resolve(name)
        except ProtocolError as exc:
            if exc.code != ErrorCode.MODEL_NOT_FOUND:
                raise
            return False
        return True

    def _resolve_control(self, name: str) -> ModelSource:
        try:
            return self.resolve(name)
        except ProtocolError as exc:
            raise ProtocolError(exc.code, exc.message, field="control.model") from exc

    def conditioner_family(self, name: str) -> str:
        """Whether ``name`` is a ControlNet or a T2I-Adapter (``families.CONTROLNET`` /
        ``families.T2I_ADAPTER``); reads only its config."""
        model = self._active
        if model is not None and name in model.controlnets:
            return families.CONTROLNET
        if model is not None and name in model.adapters:
            return families.T2I_ADAPTER
        source = self._resolve_control(name)
        try:
            return conditioner_family(source)
        except ProtocolError as exc:    # a broken config reads as the model's; it is the control's
            raise ProtocolError(exc.code, exc.message, field="control.model") from exc

    def controlnet(self, name: str) -> ControlNetModel:
        """Load (once per model) the ControlNet ``name`` for the active model."""
        model = self._require_active()
        if name in model.controlnets:
            return model.controlnets[name]
        if model.family in (families.FLUX, families.SD3):
            controlnet = load_dit_controlnet(self._resolve_control(name), model.family,
                                             model.pipe.transformer.config, self.dtype)
            controlnet.to(self.device)
            model.controlnets[name] = controlnet
            return controlnet
        controlnet = load_controlnet(self._resolve_control(name), self.dtype, self.home)
        unet_width = model.pipe.unet.config.cross_attention_dim
        if controlnet.config.cross_attention_dim != unet_width:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED,
                f"ControlNet {name} is for text embeddings of width "
                f"{controlnet.config.cross_attention_dim}, model {model.name} uses {unet_width}",
                field="control.model")
        controlnet.to(self.device)
        accelerate_controlnet(controlnet, self.accel)
        model.controlnets[name] = controlnet
        return controlnet

    def controlnet_set(self, names: Sequence[str]) -> torch.nn.Module:
        """The ControlNets ``names`` (each loaded as ``controlnet`` loads it) as what a
        pipeline takes: the one itself, or several as one ``MultiControlNetModel`` (Flux's:
        ``FluxMultiControlNetModel``; a name may come twice, a union ControlNet serving two
        controls), kept per model so that its pipelines are built once per set."""
        nets = [self.controlnet(name) for name in names]
        if len(nets) == 1:
            return nets[0]
        model = self._require_active()
        key = tuple(names)
        if key not in model.control_sets:
            multi = FluxMultiControlNetModel if isinstance(nets[0], FluxControlNetModel) \
                else MultiControlNetModel
            model.control_sets[key] = multi(nets)
        return model.control_sets[key]

    def adapter(self, name: str) -> T2IAdapter:
        """Load (once per model) the T2I-Adapter ``name`` for the active model. It runs
        once per job, so it gets none of the speed levers; whether it fits the model's
        UNet is checked when it first runs."""
        model = self._require_active()
        if name not in model.adapters:
            adapter = load_adapter(self._resolve_control(name), self.dtype)
            made_for_xl = _made_for_sdxl(name, adapter)
            if made_for_xl != families.is_sdxl(model.family):
                # Feature widths can agree across families (they do for the tiny models),
                # so the shape check when it runs would not catch this.
                raise ProtocolError(
                    ErrorCode.UNSUPPORTED,
                    f"T2I-Adapter {shorten(name)} is made for {'SDXL' if made_for_xl else 'SD1.x/2.x'} "
                    f"models; model {model.name} is {model.family}", field="control.model")
            model.adapters[name] = adapter.to(self.device)
        return model.adapters[name]

    def ip_adapter(self, name: Optional[str], field: str) -> LoadedAdapter:
        """Load (once per model) the IP-Adapter ``name`` (None: the family's default) and
        its image encoder for the active model (ip_adapters.py); errors name ``field``."""
        model = self._require_active()
        unet = model.pipe.unet
        roots = self._roots()
        found = (find_adapter(name, roots, self.hf_cache, field) if name is not None else
                 default_adapter(model.family, roots, self.hf_cache, field,
                                 unet.config.cross_attention_dim))
        return model.references.load(found, unet, roots, self.hf_cache, self.device,
                                     self.dtype, field)

    def _roots(self) -> ModelRoots:
        return ModelRoots.of(self.home, self.search_dirs, self.hf_cache, self.allowed_paths)

    def use_loras(self, loras: Sequence[LoraWeight]) -> None:
        """Put exactly ``loras`` on the active model for its next job (none: the model's
        own weights again); resolved inside the model roots, errors naming
        ``loras[i].name`` (loras.py). Loads no model."""
        model = self._require_active()
        apply_loras(model.pipe, model.loras, job_loras(loras, self._roots()),
                    model_name=model.name, model_family=model.family,
                    fused_qkv=FUSE_QKV in model.accel.applied)

    def use_embeddings(self, texts: Sequence[str]) -> None:
        """Load into the active model the embeddings ``texts`` name that it lacks
        (embeddings.py); the prompt cache starts afresh when one was added, since the
        same words now encode differently."""
        model = self._require_active()
        folders = embedding_folders([*self.search_dirs, self.home])
        wanted = [e for e in used_in(texts, find_embeddings(folders, self._roots()))
                  if e.token not in model.embeddings]
        added = False
        for embedding in wanted:
            added |= load_embedding(model.pipe, embedding, model.name, model.family)
            model.embeddings.add(embedding.token)
        cache = model.accel.prompt_cache
        if added and cache is not None:
            model.accel.prompt_cache = PromptCache(cache.model_name, cache.size)

    def pipeline(self, kind: str, controlnet: Optional[str] = None) -> DiffusionPipeline:
        """The active model's pipeline for ``kind``, with the named ControlNet if given."""
        model = self._require_active()
        return model.pipeline(kind, self.controlnet(controlnet) if controlnet else None)

    def release(self) -> None:
        """Release every resident model with its ControlNets and adapters; afterwards
        there is no default model until the next ``load``."""
        self._active = self._default = None
        while self._resident:
            _, model = self._resident.popitem(last=False)
            model.release()

    def after_out_of_memory(self) -> None:
        """After a job ran out of device memory: collect what it left unreferenced and
        give the device's cached blocks back, so the next job starts from the memory the
        resident models really use."""
        gc.collect()
        free_device_cache(self.device)

    def available(self) -> list[ModelInfo]:
        return self.catalog().models

    def catalog(self) -> Catalog:
        """The models a client can name, and the entries that could not be read."""
        return list_models(self.home, self.search_dirs, self.hf_cache)

    def memory(self) -> tuple[int, int]:
        return device_memory(self.device)


def _key(source: ModelSource) -> ModelKey:
    return source.kind, source.path


T = TypeVar("T")


def _failing_as_load_error(name: str, step: Callable[[], T], *,
                           keep_protocol_errors: bool = False) -> T:
    """``step()``, its failures raised as model_load_failed naming ``name`` (ProtocolErrors
    unchanged when ``keep_protocol_errors``)."""
    try:
        return step()
    except Exception as exc:
        if keep_protocol_errors and isinstance(exc, ProtocolError):
            raise
        raise _load_error(name, exc) from exc


def _load_error(name: str, exc: Exception) -> ProtocolError:
    detail = exc.message if isinstance(exc, ProtocolError) else f"{type(exc).__name__}: {exc}"
    return ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"could not load {name}: {detail}",
                         field="model")


def _evacuate(pipe: DiffusionPipeline, device: str) -> None:
    """Move a model that failed to come up off the device at once: the exception on its
    way to the caller still holds references to it."""
    for module in pipe.components.values():
        if isinstance(module, nn.Module):
            module.to("cpu")
    gc.collect()
    free_device_cache(device)
