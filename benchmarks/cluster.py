"""The cluster against the single daemon (issue 17), on this machine's CPUs and the tiny model:

- gateway overhead: the same client runs the same small jobs one after another on the daemon
  and on a one-worker cluster; seconds per job and their ratio;
- throughput with 1 and 2 worker replicas: two clients submit a batch each at once; jobs/s
  and their ratio;
- the time to bring each cluster up (Ray, Serve's proxy, replicas loading the model).

    python -m benchmarks.cluster [--jobs 20] [--batch 24] [--home DIR] [--json out/cluster.json]

Figures only (no timed asserts): on 2 shared cores, two workers compete with the gateways,
the scheduler and Ray itself for CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks.daemon_process import DaemonProcess  # noqa: E402
from benchmarks.local_cluster import LocalCluster, second_model_dir  # noqa: E402
from protocol.client import AtelierClient  # noqa: E402
from protocol.events import JobDone  # noqa: E402
from protocol.messages import GenerateRequest  # noqa: E402

SMALL = dict(width=64, height=64, steps=3, prompt="a brick wall")


def per_job_seconds(url: str, jobs: int) -> list[float]:
    with AtelierClient(url, client_name="bench-cluster") as client:
        client.wait_connected(timeout=60)
        client.run_job(GenerateRequest(**SMALL, seed=0), (), timeout=120)    # warm
        times = []
        for i in range(jobs):
            started = time.perf_counter()
            done = client.run_job(GenerateRequest(**SMALL, seed=i + 1), (), timeout=120)
            assert isinstance(done, JobDone), done
            times.append(time.perf_counter() - started)
    return times


def throughput(url: str, batch: int, clients: int = 2) -> float:
    """jobs/s: ``clients`` clients each submit ``batch`` jobs at once and wait for all."""
    connected = [AtelierClient(url, client_name=f"bench-{i}").start() for i in range(clients)]
    try:
        for c in connected:
            c.wait_connected(timeout=60)

        def burst(c: AtelierClient) -> None:
            for i in range(batch):
                c.submit(GenerateRequest(**SMALL, seed=i))
            done = 0
            while done < batch:
                done += isinstance(c.next_event(600), JobDone)

        threads = [threading.Thread(target=burst, args=(c,)) for c in connected]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return clients * batch / (time.perf_counter() - started)
    finally:
        for c in connected:
            c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "atelier-bench-cluster")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    home = args.home
    report: dict = {"jobs": args.jobs, "batch_per_client": args.batch}

    daemon = DaemonProcess(home).start()
    try:
        daemon_times = per_job_seconds(daemon.url, args.jobs)
        report["daemon_jobs_per_s"] = round(throughput(daemon.url, args.batch), 3)
    finally:
        daemon.stop()
    report["daemon_s_per_job"] = round(statistics.median(daemon_times), 4)

    models = second_model_dir(home, home / "cluster-models")
    for workers in (1, 2):
        cluster = LocalCluster(home, models, workers=workers, gateways=1)
        started = time.perf_counter()
        cluster.start()
        report[f"startup_s_{workers}w"] = round(time.perf_counter() - started, 2)
        try:
            if workers == 1:
                times = per_job_seconds(cluster.url, args.jobs)
                report["cluster_s_per_job"] = round(statistics.median(times), 4)
            report[f"cluster_jobs_per_s_{workers}w"] = round(throughput(cluster.url, args.batch), 3)
        finally:
            cluster.stop()

    report["gateway_overhead_ratio"] = round(report["cluster_s_per_job"] /
                                             report["daemon_s_per_job"], 2)
    report["gateway_overhead_s"] = round(report["cluster_s_per_job"] - report["daemon_s_per_job"], 4)
    report["throughput_ratio_2w_1w"] = round(report["cluster_jobs_per_s_2w"] /
                                             report["cluster_jobs_per_s_1w"], 2)
    for key, value in report.items():
        print(f"{key:28s} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
