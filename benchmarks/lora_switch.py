"""What changing a job's LoRA set costs, against loading the model afresh.

    python -m benchmarks.lora_switch [--family tiny|sd15] [--repeats 5] [--json out/lora.json]

``tiny`` is the built-in tiny model; ``sd15`` a full-size SD1.5 architecture with random
weights (``benchmarks.random_models``, nothing downloaded). Two LoRAs are written for
the model (``backend.models.tiny_extras.build_tiny_lora``: every UNet and text-encoder
attention projection, rank 4) into a models folder, and the model store does what a
job's ``loras`` make it do (``ModelStore.use_loras``, the daemon's own path). Rows,
medians of ``--repeats``:

- full load: ``ModelStore.load`` of the model into a fresh store (weights from the page
  cache, speed levers applied), what a LoRA change would cost if it reloaded the model;
- first use of a LoRA: the file read and its adapter added;
- switch A -> B, both already read: the change between two jobs with different LoRAs;
- A -> A + B with other weights; and back to no LoRAs (the model's own weights).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from backend.models.accel import AccelOptions
from backend.models.sources import ensure_tiny
from backend.models.store import ModelStore
from backend.models.tiny_extras import build_tiny_lora
from protocol.messages import LoraWeight

from . import random_models
from .measure import format_table, machine, median, write_json


def _model_folder(family: str, home: Path) -> Path:
    if family == "tiny":
        return ensure_tiny("tiny", home / "models")
    return random_models.random_pipeline_folder(
        family, home / "benchmark-models" / f"{family}-random-float32", torch.float32, "cpu")


def _timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(family: str, home: Path, repeats: int) -> dict[str, list[float]]:
    folder = _model_folder(family, home)
    with tempfile.TemporaryDirectory(prefix="atelier-loras-") as tmp:
        loras = Path(tmp) / "loras"
        build_tiny_lora(loras / "style_a.safetensors", folder, "diffusers", seed=1)
        build_tiny_lora(loras / "style_b.safetensors", folder, "kohya", seed=2)

        def fresh_store() -> ModelStore:
            return ModelStore("cpu", torch.float32, home, [Path(tmp)],
                              accel=AccelOptions.for_choice("cpu", "auto"),
                              allowed_paths=[folder])

        times: dict[str, list[float]] = {}
        for _ in range(repeats + 1):          # the first round warms the caches; dropped
            store = fresh_store()
            row = {"full load": _timed(lambda: store.load(str(folder)))}
            a, b = LoraWeight("style_a", 0.8), LoraWeight("style_b", 0.6)
            row["first use of a LoRA (read + add)"] = _timed(lambda: store.use_loras([a]))
            store.use_loras([b])
            row["switch A -> B"] = _timed(lambda: store.use_loras([a]))
            row["switch A -> A + B"] = _timed(lambda: store.use_loras([a, b]))
            row["back to no LoRAs"] = _timed(lambda: store.use_loras([]))
            store.release()
            for name, seconds in row.items():
                times.setdefault(name, []).append(seconds)
        return {name: values[1:] for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--home", type=Path, default=None,
                        help="Atelier home for the models (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="atelier-home-") as tmp:
        times = measure(args.family, args.home or Path(tmp), args.repeats)
    load = median(times["full load"])
    rows = [[name, median(values), median(values) / load] for name, values in times.items()]
    print(f"LoRA set changes on the {args.family} model (CPU), medians of {args.repeats}:")
    print(format_table(["step", "seconds", "x full load"], rows))
    if args.json is not None:
        write_json(args.json, {"benchmark": "lora_switch", "machine": machine(),
                               "family": args.family, "seconds": times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
