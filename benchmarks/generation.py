"""Generation speed and memory: stock diffusers vs Atelier direct vs Atelier end to end.

    # CPU smoke run on the tiny model (seconds)
    python -m benchmarks.generation --model tiny --steps 4 --batch 1 2 --json out/gen.json
    # full-size random-weight architectures on a GPU (nothing downloaded)
    python -m benchmarks.generation --family sd15 --device cuda --json out/sd15.json
    python -m benchmarks.generation --family sdxl --device cuda --low-memory --json out/sdxl.json
    # a real local model (diffusers folder, or a .safetensors file for the Atelier paths)
    python -m benchmarks.generation --model /models/sd15 --device cuda

One run measures, side by side, for each batch size: (a) ``stock``: a diffusers pipeline
called directly; (b) ``atelier``: Atelier's generator called directly with the levers of
``backend.models.accel``; (c) ``daemon``: the same through the daemon and protocol
(submit -> last result byte at the client); then, where the code for them is present,
``atelier+tiling``, ``atelier+depth`` and ``atelier-lowmem``. Figures: seconds per image,
sampler it/s, time to first preview, peak GPU memory (resident memory on the CPU), load
time, the first call (which includes any compilation) and the share of the hardware floor:
the job's counted FLOPs at the device's measured matmul rate, over the measured time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from backend.models.device import pick_device, pick_dtype
from backend.models.accel import AccelOptions
from backend.models.compile_modes import COMPILE_MODES
from protocol.client import make_upload
from protocol.frames import ImageFrame, PixelFormat
from protocol.messages import ControlSettings, DepthInput, GenerateRequest

from . import random_models
from .hardware import (WorkCount, allocated_bytes, count_flops, matmul_tflops, peak_bytes,
                       reset_peak_memory, rss_mb)
from .measure import format_table, machine, write_json
from .runners import AtelierRunner, CallTiming, DaemonRunner, StockRunner, job_request

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TINY_SIDE = 64
# Built-in tiny models the benchmark can run (CPU smoke runs and rehearsals), by shape.
TINY_MODELS = {"tiny": "SD1.5", "tiny-sdxl": "SDXL"}


@dataclass(frozen=True)
class Settings:
    model: Optional[str]          # "tiny", a path, or None: random weights of ``family``
    family: str
    device: str
    dtype: torch.dtype            # stock's, and Atelier's unless atelier_dtype says otherwise
    atelier_dtype: torch.dtype
    width: int
    height: int
    steps: int
    guidance: float
    batches: tuple[int, ...]
    repeats: int
    warmup: int
    preview_every: int
    low_memory: bool
    extras: bool                  # tiling, depth (ControlNet, adapter) and step-cache rows
    compile: Optional[bool]
    count_flops: bool
    home: Path
    rows: Optional[tuple[str, ...]] = None   # run only these paths; None: every row that applies
    compile_mode: str = "default"            # inductor mode when compiling (reduce-overhead: CUDA graphs)

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(dtype=str(self.dtype).replace("torch.", ""),
                   atelier_dtype=str(self.atelier_dtype).replace("torch.", ""), home=str(self.home),
                   batches=list(self.batches))
        return out


@dataclass(frozen=True)
class ModelUnderTest:
    name: str                     # what the model store loads
    folder: Optional[Path]        # a diffusers folder the stock pipeline can load
    controlnet: Optional[str]     # depth ControlNet for the depth row; None = store default
    adapter: Optional[str]        # depth T2I-Adapter for the adapter row; None = no such row
    description: str


def prepare_model(s: Settings) -> ModelUnderTest:
    if s.model in TINY_MODELS:
        from backend.models.store import ModelStore

        folder = ModelStore(s.device, s.dtype, s.home, []).resolve(s.model).path
        return ModelUnderTest(s.model, folder, None, f"{s.model}-adapter",
                              f"tiny random-weight {TINY_MODELS[s.model]}-shaped model")
    if s.model is not None:
        path = Path(s.model).expanduser()
        return ModelUnderTest(str(path), path if path.is_dir() else None, None, None,
                              f"local model {path}")
    dtype_name = str(s.dtype).replace("torch.", "")
    bench_dir = s.home / "benchmark-models"
    folder = random_models.random_pipeline_folder(
        s.family, bench_dir / f"{s.family}-random-{dtype_name}", s.dtype, s.device)
    controlnet = None
    if s.family in random_models.CONTROLNET_CONFIGS:
        controlnet = str(random_models.random_controlnet_folder(
            s.family, bench_dir / f"{s.family}-controlnet-random-{dtype_name}", s.dtype, s.device))
    adapter = str(random_models.random_adapter_folder(
        s.family, bench_dir / f"{s.family}-adapter-random-{dtype_name}", s.dtype, s.device))
    return ModelUnderTest(str(folder), folder, controlnet, adapter,
                          f"full-size {s.family} architecture, random weights from "
                          f"backend/models/configs/{s.family}")


# ------------------------------------------------------------------------ rows

@dataclass
class Case:
    """One row: a path at one batch size, run repeatedly."""
    path: str
    batch: int
    run: Callable[[], CallTiming]
    load_s: Optional[float]
    resident_bytes: int                    # device memory its model holds between jobs
    extra: dict[str, Any] = field(default_factory=dict)
    first_call_s: Optional[float] = None
    timings: list[CallTiming] = field(default_factory=list)
    job_peak_bytes: int = 0                # most device memory one call added on top


def _time_call(case: Case, device: str) -> CallTiming:
    reset_peak_memory(device)
    before = allocated_bytes(device)
    timing = case.run()
    case.job_peak_bytes = max(case.job_peak_bytes, peak_bytes(device) - before)
    return timing


def _row(case: Case, device: str) -> dict[str, Any]:
    totals = [t.total_s for t in case.timings]
    rates = [t.it_per_s for t in case.timings if t.it_per_s is not None]
    previews = [t.first_preview_s for t in case.timings if t.first_preview_s is not None]
    peak = (case.resident_bytes + case.job_peak_bytes) / 2**20 if device.startswith("cuda") else None
    return {"path": case.path, "batch": case.batch, "status": "ok", "repeats": len(totals),
            "s_per_batch": statistics.median(totals),
            "s_per_image": statistics.median(totals) / case.batch,
            "s_per_image_min": min(totals) / case.batch,
            "it_per_s": statistics.median(rates) if rates else None,
            "first_preview_s": statistics.median(previews) if previews else None,
            "peak_gpu_mb": peak, "rss_mb": rss_mb(),
            "load_s": case.load_s, "first_call_s": case.first_call_s, **case.extra}


def _skipped(path: str, batch: int, reason: str) -> dict[str, Any]:
    return {"path": path, "batch": batch, "status": "skipped", "reason": reason}


def _depth_upload(width: int, height: int) -> ImageFrame:
    """A plausible depth map: a tilted plane with a bump, normalised (near = 1)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    depth = 0.3 + 0.4 * y / height + 0.3 * np.exp(-((x - width / 2) ** 2 + (y - height / 2) ** 2)
                                                  / (0.1 * width * height))
    return make_upload(PixelFormat.FLOAT32, width, height,
                       np.clip(depth, 0, 1).astype("<f4").tobytes())


def _loaded(device: str, load: Callable[[], Any]) -> tuple[Any, int]:
    """``load()`` and the device memory it left allocated."""
    before = allocated_bytes(device)
    runner = load()
    return runner, max(0, allocated_bytes(device) - before)


def _cases(s: Settings, model: ModelUnderTest, work: dict[int, WorkCount],
           closers: list[Callable[[], None]]) -> list[Case]:
    """Load every path's model once and list the rows to run."""
    jobs = {b: job_request(s.width, s.height, s.steps, s.guidance, b, s.preview_every)
            for b in s.batches}
    cases: list[Case] = []
    if model.folder is not None:
        stock, resident = _loaded(s.device, lambda: StockRunner(model.folder, s.device, s.dtype))
        closers.append(stock.close)
        for b, job in jobs.items():
            if s.count_flops:   # on the unmodified modules
                work[b] = count_flops(lambda steps, job=job: stock.call(job, steps))
            cases.append(Case("stock", b, lambda job=job: stock(job), stock.load_s, resident))

    options = AccelOptions.for_device(s.device, compile=s.compile, compile_mode=s.compile_mode)
    atelier, resident = _loaded(s.device, lambda: AtelierRunner(
        model.name, s.device, s.atelier_dtype, s.home, options))
    closers.append(atelier.close)
    daemon = DaemonRunner(atelier)
    closers.append(daemon.close)
    levers = {"levers": atelier.accel.report()}
    for b, job in jobs.items():
        cases.append(Case("atelier", b, lambda job=job: atelier(job), atelier.load_s, resident,
                          levers))
        cases.append(Case("daemon", b, lambda job=job: daemon(job), None, resident))
    if s.extras:
        depth = _depth_upload(s.width, s.height)
        for b in s.batches:
            tiled = job_request(s.width, s.height, s.steps, s.guidance, b, s.preview_every,
                                tiling="both")
            conditioned = job_request(
                s.width, s.height, s.steps, s.guidance, b, s.preview_every,
                depth=DepthInput(upload=depth.id, convention="normalized"),
                control=ControlSettings(model=model.controlnet))
            cases.append(Case("atelier+tiling", b, lambda job=tiled: atelier(job), None, resident))
            cases.append(Case("atelier+depth", b,
                              lambda job=conditioned: atelier(job, {depth.id: depth}), None,
                              resident))
            if model.adapter is not None:
                adapted = dataclasses.replace(conditioned, control=ControlSettings(model=model.adapter))
                cases.append(Case("atelier+adapter", b,
                                  lambda job=adapted: atelier(job, {depth.id: depth}), None,
                                  resident))
            for interval in CACHE_INTERVALS:
                cached = dataclasses.replace(jobs[b], cache_interval=interval)
                cases.append(Case(f"atelier+cache{interval}", b,
                                  lambda job=cached: atelier(job), None, resident))
    if s.low_memory:
        low_options = AccelOptions.for_device(s.device, low_memory=True)
        low, low_resident = _loaded(s.device, lambda: AtelierRunner(
            model.name, s.device, s.atelier_dtype, s.home, low_options))
        closers.append(low.close)
        for b, job in jobs.items():
            cases.append(Case("atelier-lowmem", b, lambda job=job: low(job), low.load_s,
                              low_resident, {"levers": low.accel.report()}))
    return cases


def run_benchmark(s: Settings) -> dict[str, Any]:
    """Warm every row up, then run the repetitions round-robin over the rows, so a burst
    of load from elsewhere on the machine falls on all paths alike."""
    model = prepare_model(s)
    work: dict[int, WorkCount] = {}
    closers: list[Callable[[], None]] = []
    rows: list[dict[str, Any]] = []
    try:
        cases = _cases(s, model, work, closers)
        if s.rows is not None:
            cases = [case for case in cases if case.path in s.rows]
        if model.folder is None:
            rows += [_skipped("stock", b, "the stock path loads diffusers folders only")
                     for b in s.batches]
        running = []
        for case in cases:
            try:
                for i in range(s.warmup):
                    timing = _time_call(case, s.device)
                    case.first_call_s = timing.total_s if i == 0 else case.first_call_s
                running.append(case)
            except Exception as exc:  # an optional feature that cannot run here: say why
                if case.path in CORE_PATHS:
                    raise
                print(f"{case.path} (batch {case.batch}) did not run:\n"
                      f"{traceback.format_exc()}", file=sys.stderr)
                rows.append(_skipped(case.path, case.batch, f"{type(exc).__name__}: {exc}"))
        for _ in range(s.repeats):
            for case in running:
                case.timings.append(_time_call(case, s.device))
        rows += [_row(case, s.device) for case in running]
    finally:
        for close in reversed(closers):
            close()
        _free(s.device)

    tflops = matmul_tflops(s.device, s.dtype)
    for row in rows:
        count = work.get(row["batch"])
        if row["status"] == "ok" and count is not None and row["path"] in PLAIN_WORK_PATHS:
            row["floor_share"] = count.total(s.steps) / (tflops * 1e12) / row["s_per_batch"]
    rows.sort(key=lambda r: (r["batch"], ROW_ORDER.index(r["path"])))
    return {"benchmark": "generation", "machine": machine(), "settings": s.describe(),
            "model": model.description,
            "hardware": {"matmul_tflops": tflops, "dtype": str(s.dtype)},
            "work": {str(b): {"fixed_flop": w.fixed, "per_step_flop": w.per_step,
                              "total_flop": w.total(s.steps)} for b, w in work.items()},
            "rows": rows, "summary": summarise(rows, s.batches)}


CORE_PATHS = ("stock", "atelier", "daemon")
CACHE_INTERVALS = (2, 3)         # step-caching rows (GenerateRequest.cache_interval)
ROW_ORDER = ("stock", "atelier", "daemon", "atelier+tiling", "atelier+depth", "atelier+adapter",
             *(f"atelier+cache{n}" for n in CACHE_INTERVALS), "atelier-lowmem")
# Paths whose arithmetic is the counted job's (tiling adds no FLOPs worth counting;
# depth adds a ControlNet, which the count does not include).
PLAIN_WORK_PATHS = ("stock", "atelier", "daemon", "atelier+tiling", "atelier-lowmem")


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def summarise(rows: list[dict[str, Any]], batches: tuple[int, ...]) -> dict[str, Any]:
    """Ratios between rows of the same batch size, from the medians and from the best
    repetitions (``..._best``; steadier on a machine shared with other work)."""
    out: dict[str, Any] = {}
    for b in batches:
        by_path = {r["path"]: r for r in rows if r["batch"] == b and r["status"] == "ok"}
        figures: dict[str, Optional[float]] = {}
        for suffix, key in (("", "s_per_image"), ("_best", "s_per_image_min")):
            def ratio(num: str, den: str) -> Optional[float]:
                if num in by_path and den in by_path:
                    return by_path[num][key] / by_path[den][key]
                return None

            def overhead(path: str) -> Optional[float]:
                r = ratio(path, "atelier")
                return None if r is None else (r - 1.0) * 100

            daemon = ratio("daemon", "atelier")
            figures.update({
                f"speedup_atelier_vs_stock{suffix}": ratio("stock", "atelier"),
                f"speedup_daemon_vs_stock{suffix}": ratio("stock", "daemon"),
                # the daemon's extra time (transport, queue, result frames) as a share of it
                f"protocol_share_pct{suffix}": None if daemon is None else (1 - 1 / daemon) * 100,
                f"tiling_overhead_pct{suffix}": overhead("atelier+tiling"),
                f"depth_overhead_pct{suffix}": overhead("atelier+depth"),
                f"adapter_overhead_pct{suffix}": overhead("atelier+adapter"),
                **{f"speedup_cache{n}_vs_atelier{suffix}": ratio("atelier", f"atelier+cache{n}")
                   for n in CACHE_INTERVALS},
                f"lowmem_overhead_pct{suffix}": overhead("atelier-lowmem"),
            })
        out[str(b)] = figures
    return out


# ------------------------------------------------------------------------ output

def print_report(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"# {report['model']}: {s['width']}x{s['height']}, {s['steps']} steps, guidance "
          f"{s['guidance']}, {s['dtype']} (Atelier {s['atelier_dtype']}) on {s['device']} "
          f"({report['machine'].get('gpu') or str(report['machine']['cpu_count']) + ' CPU cores'}),"
          f" matmul {report['hardware']['matmul_tflops']:.3g} TFLOP/s measured, compile "
          f"{ {None: 'on GPUs', True: 'on', False: 'off'}[s['compile']]} (mode {s['compile_mode']})")
    memory = "peak GPU MB" if s["device"].startswith("cuda") else "RSS MB"
    table = []
    for r in report["rows"]:
        if r["status"] != "ok":
            table.append([r["path"], r["batch"], None, None, None, None, None, None, None, None,
                          "skipped: " + r["reason"][:60]])
            continue
        share = r.get("floor_share")
        table.append([r["path"], r["batch"], r["s_per_image"], r["s_per_image_min"],
                      r["it_per_s"], r["first_preview_s"],
                      r["peak_gpu_mb"] if s["device"].startswith("cuda") else r["rss_mb"],
                      r["load_s"], r["first_call_s"],
                      None if share is None else f"{share * 100:.1f}%", ""])
    print(format_table(["path", "batch", "s/image", "best s/image", "it/s", "1st preview s",
                        memory, "load s", "1st call s", "floor", "note"], table))
    for b, summary in report["summary"].items():
        shown = ", ".join(f"{k} {v:.3g}" for k, v in summary.items() if v is not None)
        print(f"batch {b}: {shown}")


def parse_args(argv: list[str] | None) -> tuple[Settings, Optional[Path]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help='"tiny" or "tiny-sdxl", or a local model path; default: '
                                   "random weights of --family")
    p.add_argument("--family", choices=random_models.FAMILIES, default="sd15")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu", "mps"])
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    p.add_argument("--atelier-dtype", choices=list(DTYPES),
                   help="run the Atelier paths in another dtype than stock (e.g. bf16 on an "
                        "H100: no per-job fp32 upcast of the VAE, which fp16 needs)")
    p.add_argument("--size", type=int, nargs="+", metavar="PX",
                   help="width [height]; default: the model's native size (64 for tiny)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--preview-every", type=int, default=1)
    p.add_argument("--low-memory", action="store_true", help="add the low-memory (8 GB) rows")
    p.add_argument("--no-extras", action="store_true", help="skip the tiling, depth, adapter and step-cache rows")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile UNet and VAE decoder (default: on for cuda only)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                   help="inductor mode when compiling (reduce-overhead adds CUDA graphs)")
    p.add_argument("--no-flops", action="store_true", help="skip counting FLOPs")
    p.add_argument("--home", type=Path, default=Path(os.environ.get(
        "ATELIER_HOME", Path.home() / ".cache" / "atelier")),
                   help="where tiny and random-weight benchmark models are kept")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--rows", nargs="+", metavar="PATH", choices=ROW_ORDER,
                   help="run only these rows (e.g. stock atelier daemon atelier+tiling), to "
                        "fit a time budget; models are still loaded as the options say")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    dtype = pick_dtype(device) if args.dtype == "auto" else DTYPES[args.dtype]
    if args.size:
        width, height = args.size[0], args.size[-1]
    elif args.model in TINY_MODELS:
        width = height = TINY_SIDE
    else:
        width = height = 1024 if args.family == "sdxl" and args.model is None else 512
    atelier_dtype = DTYPES[args.atelier_dtype] if args.atelier_dtype else dtype
    return Settings(model=args.model, family=args.family, device=device, dtype=dtype,
                    atelier_dtype=atelier_dtype,
                    width=width, height=height, steps=args.steps, guidance=args.guidance,
                    batches=tuple(args.batch), repeats=args.repeats, warmup=args.warmup,
                    preview_every=args.preview_every, low_memory=args.low_memory,
                    extras=not args.no_extras, compile=args.compile,
                    count_flops=not args.no_flops, home=args.home.expanduser(),
                    rows=tuple(args.rows) if args.rows else None,
                    compile_mode=args.compile_mode), args.json


def main(argv: list[str] | None = None) -> int:
    settings, json_path = parse_args(argv)
    report = run_benchmark(settings)
    print_report(report)
    if json_path:
        write_json(json_path, report)
        print(f"wrote {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
