"""How a cluster is laid out: the daemon's settings plus replica counts and sizes, from the
command line or a TOML file (``atelier cluster serve --config studio.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..limits import ServerLimits
from ..server import ServerConfig, is_loopback

APP_NAME = "atelier"


@dataclass(frozen=True)
class ClusterConfig:
    server: ServerConfig = field(default_factory=ServerConfig)   # the proxy's address and rules
    model: str = "tiny"                 # the default model every worker loads at start
    device: str = "auto"
    dtype: str = "auto"
    home: Path = Path.home() / ".cache" / "atelier"
    models_dirs: tuple[Path, ...] = ()
    resident_bytes: int = 8 * 2 ** 30
    low_memory: bool = False
    compile: str = "auto"
    depth_controls: tuple[tuple[str, str], ...] = ()     # (family, model), as serve's
    model_parts: tuple[Path, ...] = ()
    min_workers: int = 1                # worker replicas: one per GPU
    max_workers: int = 1
    gateways: int = 2                   # gateway replicas behind Ray's proxy
    worker_gpus: float = 1.0            # per worker replica; 0 on a CPU-only cluster
    worker_cpus: float = 1.0
    gateway_cpus: float = 0.5
    models_per_worker: int = 2          # models a worker counts as holding, for routing
    spill_after: int = 2                # queued jobs per holder before a model loads elsewhere
    max_queue: int = 256                # jobs queued cluster-wide

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError(f"worker replicas: need 1 <= min ({self.min_workers}) <= max "
                             f"({self.max_workers})")
        if self.gateways < 1:
            raise ValueError(f"gateways must be 1 or more, got {self.gateways}")
        if not is_loopback(self.server.host) and not self.server.token:
            raise ValueError(f"serving on {self.server.host} (not loopback) needs a token")
        if self.models_per_worker < 1:
            raise ValueError(f"models_per_worker must be 1 or more, got {self.models_per_worker}")

    @property
    def limits(self) -> ServerLimits:
        return self.server.limits

    def store_options(self) -> dict[str, Any]:
        """``app.create_store``'s options, the same on every worker."""
        return dict(device=self.device, dtype=self.dtype, home=self.home,
                    models_dirs=list(self.models_dirs), low_memory=self.low_memory,
                    compile=self.compile, depth_controls=dict(self.depth_controls),
                    resident_bytes=self.resident_bytes, model_parts=list(self.model_parts))


# TOML keys of the [cluster] table -> ClusterConfig fields
_FILE_KEYS = {"min_workers", "max_workers", "gateways", "worker_gpus", "worker_cpus",
              "gateway_cpus", "models_per_worker", "spill_after", "max_queue", "model",
              "device", "dtype"}


def read_config_file(path: Path) -> dict[str, Any]:
    """The ``[cluster]`` table of a TOML file, checked against the known keys."""
    import tomllib

    with open(path, "rb") as f:
        table = tomllib.load(f).get("cluster", {})
    unknown = set(table) - _FILE_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown [cluster] keys {sorted(unknown)}; known: "
                         f"{', '.join(sorted(_FILE_KEYS))}")
    return dict(table)
