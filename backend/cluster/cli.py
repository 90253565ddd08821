"""``atelier cluster serve``: the Serve application on a Ray cluster (this module imports
no Ray; running the command does)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from .config import ClusterConfig, read_config_file

Options = Callable[[argparse.ArgumentParser], None]

# command-line flag -> ClusterConfig field, for the replica counts and sizes
_SCALE_FLAGS = {"min_workers": int, "max_workers": int, "gateways": int, "worker_gpus": float,
                "worker_cpus": float, "gateway_cpus": float, "models_per_worker": int,
                "spill_after": int}


def add_cluster_parser(sub: Any, daemon_options: Options, server_options: Options) -> None:
    cluster = sub.add_parser("cluster", help="serve one address over many GPUs and hosts "
                                             "(Ray Serve; pip install 'atelier[cluster]')")
    csub = cluster.add_subparsers(required=True, metavar="ACTION")
    serve = csub.add_parser("serve", help="deploy gateways, a scheduler and one worker per GPU "
                                          "on a Ray cluster, and serve until interrupted")
    daemon_options(serve)
    server_options(serve)
    serve.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                       help="Ray cluster to join ('auto' after `ray start --head`, or "
                            "ray://HOST:10001; default $RAY_ADDRESS); none: start Ray in "
                            "this process, and stop it on exit")
    serve.add_argument("--config", type=Path, default=None,
                       help="TOML file with a [cluster] table (keys: the flags below, with _)")
    for flag, kind in _SCALE_FLAGS.items():
        serve.add_argument("--" + flag.replace("_", "-"), type=kind, default=None,
                           help=_HELP[flag])
    serve.add_argument("--num-cpus", type=float, default=None,
                       help="CPUs Ray may use when it starts in this process")
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(run=run_serve)


_HELP = {
    "min_workers": "fewest worker replicas (one per GPU; default 1)",
    "max_workers": "most worker replicas (Serve autoscales between the two; default = min)",
    "gateways": "gateway replicas behind Ray's proxy (default 2)",
    "worker_gpus": "GPUs per worker replica (default 1; 0 on a CPU-only cluster)",
    "worker_cpus": "CPUs per worker replica (default 1)",
    "gateway_cpus": "CPUs per gateway replica (default 0.5)",
    "models_per_worker": "models a worker counts as holding, for routing (default 2)",
    "spill_after": "queued jobs per holder before a model loads on another worker (default 2)",
}


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    from ..cli import server_config, store_options

    store = store_options(args)
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    for flag in _SCALE_FLAGS:
        if getattr(args, flag) is not None:       # the command line wins over the file
            values[flag] = getattr(args, flag)
    values.setdefault("max_queue", args.max_queue)     # --max-queue: cluster-wide here
    values.setdefault("max_workers", max(values.get("min_workers", 1), 1))
    values.setdefault("model", args.model)
    server = server_config(args)
    server = dataclasses.replace(server, spool_dir=None, limits=dataclasses.replace(
        server.limits, max_queue=values["max_queue"]))
    return ClusterConfig(
        server=server, device=values.pop("device", store["device"]),
        dtype=values.pop("dtype", store["dtype"]), home=store["home"],
        models_dirs=tuple(store["models_dirs"]), resident_bytes=store["resident_bytes"],
        low_memory=store["low_memory"], compile=store["compile"],
        depth_controls=tuple(store["depth_controls"].items()),
        model_parts=tuple(store["model_parts"]), **values)


def run_serve(args: argparse.Namespace) -> int:
    try:
        from . import app
    except ImportError as exc:
        print(f"atelier cluster needs Ray Serve: pip install 'atelier[cluster]' ({exc})",
              file=sys.stderr)
        return 2
    config = cluster_config(args)
    seconds = app.start(config, address=args.address, num_cpus=args.num_cpus)
    from ..server import ws_url

    print(f"Atelier cluster ready on {ws_url(config.server.host, config.server.port)} "
          f"(model {config.model}, {config.min_workers}-{config.max_workers} workers, "
          f"{config.gateways} gateways, up in {seconds:.1f} s)", flush=True)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    app.stop(joined=args.address is not None)
    return 0
