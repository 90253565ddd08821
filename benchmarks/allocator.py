"""What ``backend.allocator.keep_freed_memory`` saves: the same CPU job in processes with
glibc's default malloc settings and with the daemon's, side by side.

    python -m benchmarks.allocator [--family sd15|tiny] [--size 256] [--steps 4]
                                   [--rounds 2] [--jobs 2] [--json out/allocator.json]

Each round starts one process of each kind, in turn (so load from elsewhere on the
machine falls on both alike); each process loads the model (``sd15``: full-size SD1.5
architecture with random weights, nothing downloaded), runs one warm-up job and then
``--jobs`` timed jobs on Atelier's generator, and reports per job: wall seconds, user
and kernel CPU seconds and minor page faults (``getrusage``). Page faults and kernel
time do not depend on what else the machine runs; wall time does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .daemon_process import REPO
from .measure import format_table, machine, median, write_json

KINDS = ("default", "keep_freed")


def child(family: str, size: int, steps: int, jobs: int, keep: bool, home: Path) -> None:
    if keep:
        from backend.allocator import keep_freed_memory
        if not keep_freed_memory():
            raise SystemExit("this C library has no mallopt; nothing to compare")
    import torch

    from backend.models.accel import AccelOptions
    from backend.models.sources import ensure_tiny

    from . import random_models
    from .runners import AtelierRunner, job_request

    folder = ensure_tiny("tiny", home / "models") if family == "tiny" else \
        random_models.random_pipeline_folder(
            family, home / "benchmark-models" / f"{family}-random-float32", torch.float32, "cpu")
    runner = AtelierRunner(str(folder), "cpu", torch.float32, home,
                           AccelOptions.for_choice("cpu", "auto"))
    job = job_request(size, size, steps, 7.0, 1, 0)
    runner(job)
    runs = []
    for _ in range(jobs):
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        runner(job)
        after = resource.getrusage(resource.RUSAGE_SELF)
        runs.append({"wall_s": time.perf_counter() - started,
                     "user_s": after.ru_utime - before.ru_utime,
                     "kernel_s": after.ru_stime - before.ru_stime,
                     "minor_faults": after.ru_minflt - before.ru_minflt})
    print("RESULT " + json.dumps(runs), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("tiny", "sd15"), default="sd15")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=KINDS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="atelier-alloc-") as tmp:
        home = args.home or Path(tmp)
        if args.child is not None:
            child(args.family, args.size, args.steps, args.jobs, args.child == "keep_freed", home)
            return 0
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        for _ in range(args.rounds):
            for kind in KINDS:
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.allocator", "--child", kind,
                     "--family", args.family, "--size", str(args.size), "--steps",
                     str(args.steps), "--jobs", str(args.jobs), "--home", str(home)],
                    cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    capture_output=True, text=True, check=True).stdout
                line = next(l for l in out.splitlines() if l.startswith("RESULT "))
                runs[kind] += json.loads(line[len("RESULT "):])
    figures = ("wall_s", "user_s", "kernel_s", "minor_faults")
    table = {kind: {f: median([r[f] for r in runs[kind]]) for f in figures} for kind in KINDS}
    rows = [[f, table["default"][f], table["keep_freed"][f],
             table["keep_freed"][f] / table["default"][f] if table["default"][f] else None]
            for f in figures]
    print(f"{args.family} at {args.size}px, {args.steps} steps, on the CPU; medians of "
          f"{args.rounds * args.jobs} jobs per kind:")
    print(format_table(["per job", "default malloc", "keep_freed", "ratio"], rows))
    if args.json is not None:
        write_json(args.json, {"benchmark": "allocator", "machine": machine(),
                               "settings": {k: v for k, v in vars(args).items()
                                            if k in ("family", "size", "steps", "rounds", "jobs")},
                               "runs": runs, "medians": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
