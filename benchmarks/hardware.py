"""The machine side of a benchmark: synchronising, memory readings, the arithmetic a job
does (counted, not assumed) and the arithmetic rate the device reaches on large matmuls."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

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
