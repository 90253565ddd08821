"""The machine side of a benchmark: synchronising, memory readings, the arithmetic a job
does (counted, not assumed) and the arithmetic rate the device reaches on large matmuls."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def allocated_bytes(device: str) -> int:
    """Device memory torch holds now; 0 off the GPU."""
    return torch.cuda.memory_allocated() if device.startswith("cuda") else 0


def peak_bytes(device: str) -> int:
    """Most device memory torch held since the last reset; 0 off the GPU."""
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0


def rss_mb() -> Optional[float]:
    """This process's resident memory now (Linux), the CPU stand-in for device memory."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


def matmul_tflops(device: str, dtype: torch.dtype, size: Optional[int] = None,
                  repeats: int = 10, rounds: int = 5) -> float:
    """Measured dense matmul rate (TFLOP/s), the best of ``rounds``: the practical ceiling
    the floor is set by (a ceiling, so interference from elsewhere must not lower it)."""
    size = size or (8192 if device.startswith("cuda") else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(rounds):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * repeats / best / 1e12


@dataclass(frozen=True)
class WorkCount:
    """FLOPs of one pipeline call: ``fixed`` (text encoders, VAE decode) + ``per_step`` x steps."""
    fixed: float
    per_step: float

    def total(self, steps: int) -> float:
        return self.fixed + self.per_step * steps


def count_flops(run: Callable[[int], object]) -> WorkCount:
    """Count matmul/conv/attention FLOPs of ``run(steps)`` at 1 and 2 steps.

    Attention is forced onto the math kernel while counting so it decomposes into
    counted matmuls (the fused CPU kernel is invisible to the counter); the count is the
    same arithmetic whichever kernel runs it."""
    counts = []
    for steps in (1, 2):
        with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            run(steps)
        counts.append(counter.get_total_flops())
    per_step = counts[1] - counts[0]
    return WorkCount(fixed=counts[0] - per_step, per_step=per_step)


def step_costs(generate: Callable[[Any, Callable[..., None]], object],
               jobs: Mapping[str, Callable[[int], Any]], plain: str, repeat: int,
               steps: int) -> dict[str, dict[str, float]]:
    """What one step of each job costs, against the job named ``plain``.

    ``jobs``: row -> a request of that many steps; ``generate(request, on_step)`` runs one,
    calling ``on_step`` at every step's end. Each row is warmed up by a 2-step job, then
    ``repeat`` jobs of ``steps`` steps run round-robin (so drift from other load falls on
    every row alike); a step's time is the gap between two step ends, so per-job work
    drops out. Per row: the median and the fastest step (s_per_step, best_s_per_step), its
    FLOPs (count_flops), and each relative to ``plain``'s."""
    def intervals_of(job: Callable[[int], Any], count: int) -> list[float]:
        ends: list[float] = []
        generate(job(count), lambda *_: ends.append(time.perf_counter()))
        return [b - a for a, b in zip(ends, ends[1:])]

    for job in jobs.values():
        intervals_of(job, 2)
    intervals: dict[str, list[float]] = {row: [] for row in jobs}
    for _ in range(repeat):
        for row, job in jobs.items():
            intervals[row].extend(intervals_of(job, steps))
    work = {row: count_flops(lambda count, j=job: generate(j(count), lambda *_: None)).per_step
            for row, job in jobs.items()}
    median0, best0 = statistics.median(intervals[plain]), min(intervals[plain])
    out = {}
    for row in jobs:
        median, best = statistics.median(intervals[row]), min(intervals[row])
        out[row] = {"s_per_step": median, "relative": median / median0,
                    "best_s_per_step": best, "best_relative": best / best0,
                    "flop_per_step": work[row], "flop_relative": work[row] / work[plain]}
    return out


def txt2img_step_costs(generator: Any, uploads: Mapping[str, Any],
                       rows: Mapping[str, Mapping[str, Any]], plain: str, repeat: int,
                       steps: int, side: int) -> dict[str, dict[str, float]]:
    """``step_costs`` of the same txt2img job on ``generator`` (a DiffusionGenerator; "a
    stone wall", ``side`` px, seed 1, Euler) with the request fields each row sets (its
    controls, references or regions; the uploads they name in ``uploads``)."""
    from protocol.messages import GenerateRequest

    def generate(request: Any, on_step: Callable[..., None]) -> None:
        generator.generate(request, uploads, on_step, lambda: False)

    jobs = {row: (lambda count, f=fields: GenerateRequest(
        prompt="a stone wall", width=side, height=side, steps=count, seed=1, scheduler="euler",
        **f)) for row, fields in rows.items()}
    return step_costs(generate, jobs, plain, repeat, steps)
