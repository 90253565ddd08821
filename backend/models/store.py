"""The model layer's front door: which model is loaded, and pipelines built on it.

Public API (everything the job and pipeline layers need):

    store = ModelStore(device="cpu", dtype=torch.float32, home=atelier_home(),
                       search_dirs=[Path("~/sd/models/Stable-diffusion")], hf_cache=None)
    model = store.load("tiny")        # LoadedModel; loading the current name again is free
    store.current                      # LoadedModel | None
    pipe = store.pipeline("img2img")   # kind: "txt2img" | "img2img" | "inpaint" | "depth"
    pipe = store.pipeline("txt2img", controlnet=None)   # None: no ControlNet;
    #   a name (HF id, folder, .safetensors, "tiny-controlnet") -> ControlNet pipeline;
    #   store.default_depth_control() names what a depth job uses when it names none
    cn = store.controlnet("tiny-controlnet")            # ControlNetModel, cached by name
    store.conditioner_family("tiny-adapter")            # "controlnet" | "t2i_adapter"
    adapter = store.adapter("tiny-adapter")             # T2IAdapter, cached by name
    store.available()                  # list[protocol.messages.ModelInfo]
    store.memory()                     # (allocated, total) bytes on the device
    store.release()                    # drop the current model, its ControlNets and adapters

    model.name, model.family, model.source, model.pipe (the base pipeline),
    model.device, model.dtype, model.pipeline(kind, controlnet_model=None), model.release()

Pipelines of every kind share the base pipeline's component objects (``from_pipe``), so
switching kinds costs no load and no memory. Model names are resolved by
``sources.resolve`` (built-in tiny models, paths, files in ``search_dirs``, Hugging Face
ids in the local cache) and never reach the network.

Threading: call ``load``/``pipeline``/``controlnet``/``release`` from the one worker
thread that owns the device; ``available`` only reads the disk and is safe anywhere.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from diffusers import ControlNetModel, DiffusionPipeline, T2IAdapter

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import ModelInfo

from . import families
from .accel import AccelOptions, Acceleration, accelerate_controlnet, apply_accel
from .catalog import list_models
from .deep_tap import DeepFeatureTap, install_deep_tap
from .device import device_memory, free_device_cache
from .loader import conditioner_family, load_adapter, load_controlnet, prepare_pipeline
from .sources import ModelSource, hf_cache_dir, resolve

log = logging.getLogger("atelier.models")

# What a depth job of each family uses when neither the job nor the daemon names one: the
# first of these found on this machine. The ControlNet follows the depth more closely; the
# T2I-Adapter costs one small pass per job instead of a second network at every step.
DEFAULT_DEPTH_CONTROLS = {
    families.SD15: ("lllyasviel/control_v11f1p_sd15_depth", "TencentARC/t2iadapter_depth_sd15v2"),
    families.SDXL: ("diffusers/controlnet-depth-sdxl-1.0",
                    "TencentARC/t2i-adapter-depth-midas-sdxl-1.0"),
}
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
    _variants: dict[tuple[str, Optional[ControlNetModel]], DiffusionPipeline] = field(
        default_factory=dict, repr=False)
    _released: bool = field(default=False, repr=False)

    @property
    def kinds(self) -> tuple[str, ...]:
        return families.kinds_of(self.family)

    def pipeline(self, kind: str, controlnet_model: Optional[ControlNetModel] = None) -> DiffusionPipeline:
        """The pipeline for ``kind`` sharing this model's components (cached)."""
        if self._released:
            raise RuntimeError(f"model {self.name} was released")
        key = (kind, controlnet_model)
        if key in self._variants:
            return self._variants[key]
        cls = families.pipeline_class(self.family, kind, controlnet=controlnet_model is not None)
        if cls is None:
            runs = ", ".join(families.kinds_of(self.family, controlnet_model is not None)) or "nothing"
            what = "with a ControlNet " if controlnet_model is not None else ""
            raise ProtocolError(ErrorCode.UNSUPPORTED,
                                f"model {self.name} ({self.family}) cannot run {kind} {what}"
                                f"(it runs: {runs})", field="kind")
        if type(self.pipe) is cls:
            pipe = self.pipe
        else:
            extra = {"controlnet": controlnet_model} if controlnet_model is not None else {}
            # from_pipe casts every shared module to its torch_dtype (fp32 by default): pass ours.
            pipe = cls.from_pipe(self.pipe, torch_dtype=self.dtype, **extra)
            pipe.set_progress_bar_config(disable=True)
        self._variants[key] = pipe
        return pipe

    def release(self) -> None:
        """Drop every reference this object holds to weights and free the device cache."""
        self._variants.clear()
        self.pipe = None  # type: ignore[assignment]
        self._released = True
        gc.collect()
        free_device_cache(self.device)


def native_side(pipe: DiffusionPipeline) -> int:
    """The square image side the model was trained at (UNet sample size x VAE scale)."""
    sample = pipe.unet.config.sample_size
    return (sample if isinstance(sample, int) else max(sample)) * pipe.vae_scale_factor


class ModelStore:
    """Owns the loaded model (one at a time: one device) and the ControlNets and
    T2I-Adapters used with it."""

    def __init__(self, device: str, dtype: torch.dtype, home: Path, search_dirs: list[Path],
                 hf_cache: Optional[Path] = None, accel: Optional[AccelOptions] = None,
                 depth_controls: Optional[Mapping[str, str]] = None):
        self.device = device
        self.accel = accel or AccelOptions.plain()   # speed levers applied at each load
        self.dtype = dtype
        self.home = Path(home).expanduser()
        self.search_dirs = [Path(d).expanduser() for d in search_dirs]
        self.hf_cache = Path(hf_cache) if hf_cache is not None else hf_cache_dir(os.environ)
        self._current: Optional[LoadedModel] = None
        unknown = set(depth_controls or {}) - set(families.BASE_KIND)
        if unknown:
            raise ValueError(f"depth controls for unknown model families {sorted(unknown)}; "
                             f"families: {', '.join(families.BASE_KIND)}")
        # family -> the depth ControlNet or T2I-Adapter the daemon was told to use
        self.depth_controls = dict(depth_controls or {})
        self._controlnets: dict[str, ControlNetModel] = {}
        self._adapters: dict[str, T2IAdapter] = {}
        # Run on each newly loaded model before ``load`` returns; the generator serving this
        # store sets it to run its warm-up jobs (``DiffusionGenerator.warm_up``).
        self.warm_up: Optional[Callable[[LoadedModel], object]] = None

    @property
    def current(self) -> Optional[LoadedModel]:
        return self._current

    def resolve(self, name: str) -> ModelSource:
        return resolve(name, self.home, self.search_dirs, self.hf_cache)

    def load(self, name: str) -> LoadedModel:
        """Make ``name`` the current model. The previous model is released before the new
        weights are read, so two models never sit on the device together."""
        source = self.resolve(name)
        current = self._current
        if current is not None and (current.source.kind, current.source.path) == (source.kind, source.path):
            return current
        # Everything checkable without weights is checked while the old model still serves;
        # a failure after this point leaves no model loaded.
        prepared = prepare_pipeline(source, self.dtype, self.home, self.hf_cache)
        self.release()
        started = time.perf_counter()
        pipe = prepared.load()
        accel = apply_accel(pipe, self.accel, model_name=name, device=self.device)
        pipe.set_progress_bar_config(disable=True)
        # Before warm-up, so that it is part of every compiled graph.
        deep_tap = install_deep_tap(pipe.unet) if hasattr(pipe, "unet") else None
        self._current = LoadedModel(name=name, family=prepared.family, source=source, pipe=pipe,
                                    device=self.device, dtype=self.dtype, accel=accel,
                                    deep_tap=deep_tap)
        if self.warm_up is not None:
            # Compiled modules compile here rather than in the first user's job.
            try:
                self.warm_up(self._current)
            except BaseException:
                self.release()
                raise
        log.info("loaded %s (%s) on %s in %.1f s; levers %s (compile mode %s); skipped %s",
                 name, prepared.family, self.device, time.perf_counter() - started,
                 ", ".join(accel.applied) or "none", self.accel.compile_mode, accel.skipped or "none")
        return self._current

    def _require_current(self) -> LoadedModel:
        if self._current is None:
            raise ProtocolError(ErrorCode.NOT_READY, "no model is loaded", field="model")
        return self._current

    def default_depth_control(self) -> str:
        """The depth ControlNet or T2I-Adapter the current model uses when a job names none:
        the daemon's choice for the family (``depth_controls``), else the first of the
        family's defaults (``DEFAULT_DEPTH_CONTROLS``, the adapter first in low-memory mode
        where ``ADAPTER_FIRST_IN_LOW_MEMORY``) that is on this machine. When none is, the
        error says how to get one."""
        model = self._require_current()
        chosen = self.depth_controls.get(model.family) or TINY_DEFAULT_CONTROLNETS.get(model.name)
        if chosen:
            return chosen
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
        if name in self._controlnets:
            return families.CONTROLNET
        if name in self._adapters:
            return families.T2I_ADAPTER
        return conditioner_family(self._resolve_control(name))

    def controlnet(self, name: str) -> ControlNetModel:
        """Load (once) the ControlNet ``name`` for the current model."""
        model = self._require_current()
        if name in self._controlnets:
            return self._controlnets[name]
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
        self._controlnets[name] = controlnet
        return controlnet

    def adapter(self, name: str) -> T2IAdapter:
        """Load (once) the T2I-Adapter ``name``. It runs once per job, so it gets none of
        the speed levers; whether it fits the model's UNet is checked when it first runs."""
        self._require_current()
        if name not in self._adapters:
            adapter = load_adapter(self._resolve_control(name), self.dtype)
            self._adapters[name] = adapter.to(self.device)
        return self._adapters[name]

    def pipeline(self, kind: str, controlnet: Optional[str] = None) -> DiffusionPipeline:
        """The current model's pipeline for ``kind``, with the named ControlNet if given."""
        model = self._require_current()
        return model.pipeline(kind, self.controlnet(controlnet) if controlnet else None)

    def release(self) -> None:
        """Unload the current model, its ControlNets and its adapters."""
        self._controlnets.clear()
        self._adapters.clear()
        if self._current is not None:
            self._current.release()
            self._current = None

    def available(self) -> list[ModelInfo]:
        return list_models(self.home, self.search_dirs, self.hf_cache)

    def memory(self) -> tuple[int, int]:
        return device_memory(self.device)
