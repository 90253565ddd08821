"""The cluster as one Serve application, and running it (``atelier cluster serve``)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from ray import serve
from ray.serve import Application

from ..limits import ServerLimits
from ..server import ServerConfig
from .config import APP_NAME, ClusterConfig
from .deployments import Gateway, Scheduler, Worker


def worker_options(config: ClusterConfig) -> dict[str, Any]:
    """One replica per GPU; Serve scales between the bounds (a fixed count when equal)."""
    options: dict[str, Any] = {"ray_actor_options": {"num_gpus": config.worker_gpus,
                                                     "num_cpus": config.worker_cpus}}
    if config.min_workers == config.max_workers:
        options["num_replicas"] = config.min_workers
    else:
        # Up soon after a backlog shows (the scheduler's second request per worker, see
        # SchedulerCore._ask_for_workers); down only after minutes idle, since a new
        # worker must load its model again.
        options["autoscaling_config"] = {"min_replicas": config.min_workers,
                                         "max_replicas": config.max_workers,
                                         "target_ongoing_requests": 1,
                                         "metrics_interval_s": 2, "look_back_period_s": 10,
                                         "upscale_delay_s": 5, "downscale_delay_s": 300}
    return options


PROXY_MAX_MESSAGE_BYTES = 16 * 2 ** 20     # uvicorn's ws_max_size in Serve's proxy


def build_app(config: ClusterConfig) -> Application:
    """The proxy refuses larger messages than its websocket limit: advertise no more."""
    limits = config.limits
    config = dataclasses.replace(config, server=dataclasses.replace(
        config.server, limits=dataclasses.replace(
            limits, max_message_bytes=min(limits.max_message_bytes, PROXY_MAX_MESSAGE_BYTES))))
    small = {"num_cpus": min(config.gateway_cpus, 0.1)}
    workers = Worker.options(**worker_options(config)).bind(config)
    scheduler = Scheduler.options(ray_actor_options=small).bind(config, workers)
    return Gateway.options(num_replicas=config.gateways,
                           ray_actor_options={"num_cpus": config.gateway_cpus}
                           ).bind(config, scheduler)


def app_builder(args: Mapping[str, Any]) -> Application:
    """For ``serve run`` / a KubeRay RayService's ``import_path:
    backend.cluster.app:app_builder``: ``args`` are ClusterConfig fields (``home``,
    ``models_dirs``, ``host``, ``port``, ``token`` and ``allowed_origins`` included)."""
    return build_app(config_from(dict(args)))


def config_from(values: dict[str, Any]) -> ClusterConfig:
    server = ServerConfig(host=values.pop("host", "0.0.0.0"), port=int(values.pop("port", 8000)),
                          token=values.pop("token", None),
                          allowed_origins=tuple(values.pop("allowed_origins", ())),
                          limits=ServerLimits(max_queue=int(values.get("max_queue", 256))))
    if "home" in values:
        values["home"] = Path(values["home"])
    values["models_dirs"] = tuple(Path(p) for p in values.get("models_dirs", ()))
    return ClusterConfig(server=server, **values)


def start(config: ClusterConfig, *, address: Optional[str] = None, num_cpus: Optional[float] = None,
          route_prefix: str = "/") -> float:
    """Connect to (or, with no address, start) a Ray cluster, start Serve's proxy on the
    config's host and port and deploy the app; returns the seconds it took."""
    import ray

    started = time.perf_counter()
    if not ray.is_initialized():
        # "local", not None: None would join a cluster an earlier `ray start` left running
        # (or RAY_ADDRESS names), which ``stop`` would then take down with the app.
        ray.init(address=address or "local", num_cpus=num_cpus, include_dashboard=False,
                 logging_level="WARNING", log_to_driver=False)
    serve.start(http_options={"host": config.server.host, "port": config.server.port})
    serve.run(build_app(config), name=APP_NAME, route_prefix=route_prefix, blocking=False)
    return time.perf_counter() - started


def stop(*, joined: bool = False) -> None:
    """Take the app down. ``joined``: Ray was an existing cluster (``--address``), which goes
    on without the app. Otherwise Ray started here, and ``ray.shutdown`` ends its processes,
    Serve's among them, in a second or two: a graceful Serve shutdown would first wait out
    open websockets and the scheduler's long polls (11 s with none open), and 30 s more for
    a controller whose Ray processes were killed with this one (a signal to the group)."""
    import ray

    if joined:
        serve.delete(APP_NAME)
    ray.shutdown()
