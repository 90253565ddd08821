"""An Atelier cluster on this machine's CPUs (Ray started in this process, Serve's proxy on
a free loopback port, the tiny model), for the cluster tests and benchmark alike."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any, Optional

from backend.cluster.config import APP_NAME, ClusterConfig
from backend.limits import ServerLimits
from backend.server import ServerConfig, ws_url

SECOND_MODEL = "tiny-b"      # a copy of the tiny model under another name: a second model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def second_model_dir(home: Path, into: Path) -> Path:
    """A models folder holding ``tiny-b``, a copy of the tiny model (loads count apart)."""
    from backend.models.sources import ensure_tiny

    folder = into / SECOND_MODEL
    if not folder.exists():
        shutil.copytree(ensure_tiny("tiny", home / "models"), folder)
    return into


class LocalCluster:
    """``start()`` brings Ray, Serve and the app up; ``url`` is the one address clients use."""

    def __init__(self, home: Path, models_dir: Path, *, workers: int = 2, gateways: int = 2,
                 max_queue: int = 128, num_cpus: float = 4, worker_cpus: float = 0.25,
                 models_per_worker: int = 2):
        self.port = free_port()
        self.config = ClusterConfig(
            server=ServerConfig(host="127.0.0.1", port=self.port,
                                limits=ServerLimits(max_queue=max_queue)),
            model="tiny", device="cpu", home=home, models_dirs=(models_dir,),
            min_workers=workers, max_workers=workers, gateways=gateways, worker_gpus=0,
            worker_cpus=worker_cpus, gateway_cpus=0.1, models_per_worker=models_per_worker,
            max_queue=max_queue)
        self.num_cpus = num_cpus
        self.startup_s: Optional[float] = None

    @property
    def url(self) -> str:
        return ws_url("127.0.0.1", self.port)

    def start(self) -> "LocalCluster":
        from backend.cluster import app

        self.startup_s = app.start(self.config, num_cpus=self.num_cpus)
        self.wait_for_workers(self.config.min_workers)
        return self

    def stop(self) -> None:
        from backend.cluster import app

        app.stop()

    def scheduler(self) -> Any:
        from ray import serve

        from backend.cluster.deployments import SCHEDULER

        return serve.get_deployment_handle(SCHEDULER, APP_NAME)

    def stats(self) -> dict[str, Any]:
        return self.scheduler().stats.remote().result(timeout_s=30)

    def wait_for_workers(self, count: int, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if len(stats["workers"]) >= count:
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(stats['workers'])} of {count} workers registered")
            time.sleep(0.2)

    def kill_actor(self, name: str) -> None:
        """``ray.kill`` a replica by its actor name (Serve starts a new one)."""
        import ray

        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

    def serve_actor_names(self, deployment: str) -> list[str]:
        """Actor names of ``deployment``'s replicas (what ``kill_actor`` takes)."""
        from ray.util import list_named_actors

        return [a["name"] for a in list_named_actors(all_namespaces=True)
                if a.get("namespace") == "serve" and f"#{deployment}#" in a["name"]]
