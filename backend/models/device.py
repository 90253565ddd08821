"""Choosing the torch device and dtype, and reading device memory for status messages."""

from __future__ import annotations

import os

import torch

from protocol.errors import ErrorCode, ProtocolError

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
DTYPE_CHOICES = ("auto", "fp16", "bf16", "fp32")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def pick_device(preference: str = "auto") -> str:
    """"auto" -> cuda, else mps, else cpu. An explicit device that is absent is an error."""
    if preference not in DEVICE_CHOICES:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"device must be one of {', '.join(DEVICE_CHOICES)}, not {preference!r}",
                            field="device")
    if preference == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    available = {"cuda": torch.cuda.is_available, "mps": _mps_available, "cpu": lambda: True}
    if not available[preference]():
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"device {preference!r} is not available to this torch build",
                            field="device")
    return preference


def pick_dtype(device: str, preference: str = "auto") -> torch.dtype:
    """"auto" -> fp16 on cuda and mps, fp32 on cpu. Half precision on the CPU is refused:
    many of its kernels are missing or far slower there."""
    if preference not in DTYPE_CHOICES:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"dtype must be one of {', '.join(DTYPE_CHOICES)}, not {preference!r}",
                            field="dtype")
    if preference == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    if device == "cpu" and preference != "fp32":
        raise ProtocolError(ErrorCode.UNSUPPORTED, f"{preference} is not supported on the cpu; use fp32",
                            field="dtype")
    return _DTYPES[preference]


def _cpu_memory() -> tuple[int, int]:
    page = os.sysconf("SC_PAGE_SIZE")
    total = os.sysconf("SC_PHYS_PAGES") * page
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident = int(statm.read().split()[1]) * page
    except OSError:
        resident = 0
    return resident, total


def device_memory(device: str) -> tuple[int, int]:
    """(bytes allocated, bytes total) on ``device``; for the cpu the process's resident
    memory and the machine's RAM; (0, 0) where unknown."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return torch.cuda.memory_allocated(index), torch.cuda.get_device_properties(index).total_memory
    if device == "mps" and _mps_available():
        return torch.mps.current_allocated_memory(), torch.mps.recommended_max_memory()
    if device == "cpu" and hasattr(os, "sysconf"):
        return _cpu_memory()
    return 0, 0


def free_device_cache(device: str) -> None:
    """Give cached, unused blocks back to the driver after a model is released."""
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device == "mps" and _mps_available():
        torch.mps.empty_cache()
