"""The composition root: a model store, a generator on top of it, and the daemon serving both."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .generation import Generator
from .limits import ServerLimits
from .models.accel import AccelOptions
from .models.catalog import Catalog, list_models as _catalog
from .models.device import pick_device, pick_dtype
from .models.sources import hf_cache_dir, operator_paths
from .models.store import DEFAULT_RESIDENT_BYTES, ModelStore
from .pipelines.assets import AssetGenerator
from .pipelines.generator import DiffusionGenerator
from .server import Daemon, ServerConfig


class StoreService:
    """What the transport asks of the model layer, answered by a ModelStore."""

    def __init__(self, store: ModelStore):
        self.store = store
        self.device = store.device

    def current_name(self) -> Optional[str]:
        """The default model: what a job naming no model runs on (jobs that name one
        leave it as it is)."""
        current = self.store.current
        return current.name if current else None

    def catalog(self) -> Catalog:
        return self.store.catalog()

    def load(self, name: str) -> tuple[str, str]:
        model = self.store.load(name)
        return model.name, model.family

    def memory(self) -> tuple[int, int]:
        return self.store.memory()

    def after_out_of_memory(self) -> None:
        """For the job layer to call, on the worker, after a job ran out of device memory."""
        self.store.after_out_of_memory()


def create_store(*, model: str, device: str = "auto", dtype: str = "auto", home: Path,
                 models_dirs: list[Path], low_memory: bool = False, compile: str = "auto",
                 depth_controls: Optional[Mapping[str, str]] = None,
                 resident_bytes: int = DEFAULT_RESIDENT_BYTES,
                 model_parts: Sequence[Path] = ()) -> ModelStore:
    """A model store for ``model`` on the chosen device (nothing loaded yet).
    ``compile``: a ``compile_modes.CHOICES`` entry. ``depth_controls``: family -> the depth
    ControlNet or T2I-Adapter used when a job names none. Those of ``model`` and the
    ``depth_controls`` that are paths stay loadable by clients though they lie outside the
    model roots: the operator named them. ``resident_bytes``: how much of recently used
    models stays in memory beside the active one, so switching back costs no reload.
    ``model_parts``: text encoder and VAE files for Flux/SD3 transformer files (dit_files.py)."""
    chosen = pick_device(device)
    return ModelStore(chosen, pick_dtype(chosen, dtype), home, models_dirs,
                      accel=AccelOptions.for_choice(chosen, compile, low_memory=low_memory),
                      depth_controls=depth_controls, resident_bytes=resident_bytes,
                      allowed_paths=operator_paths([model, *(depth_controls or {}).values()]),
                      companion_files=operator_paths(map(str, model_parts)))


def create_generator(store: ModelStore, limits: ServerLimits) -> Generator:
    # First: it warms up what loads. The asset kinds (upscale, texture_set) go in front.
    return AssetGenerator(DiffusionGenerator(store, limits), store, limits)


def create_daemon(config: ServerConfig, *, model: str, **store_options: Any) -> Daemon:
    """Load ``model`` (a clear error if it is not on this machine) and wire the layers;
    ``store_options``: those of ``create_store``. Cluster workers wire the same store and
    generator under their own job layer (backend/cluster)."""
    store = create_store(model=model, **store_options)
    generator = create_generator(store, config.limits)
    store.load(model)
    return Daemon(config, StoreService(store), generator)


def list_models(*, home: Path, models_dirs: list[Path]) -> Catalog:
    return _catalog(home, models_dirs, hf_cache_dir())
