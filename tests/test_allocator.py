"""The daemon's malloc settings (backend/allocator.py) keep freed memory for reuse.

A probe process allocates 384 MiB in 8 MiB blocks, touches every page, frees it all, and
does that four times, counting minor page faults per round. With glibc's defaults every
round faults the whole 384 MiB in again (it hands the freed heap back to the kernel);
with ``keep_freed_memory`` the later rounds reuse it: what each denoising step does with
its activations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.allocator import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import ctypes, ctypes.util, json, resource, sys
if sys.argv[1] == "keep":
    from backend.allocator import keep_freed_memory
    assert keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
BLOCK, COUNT = 8 * 2 ** 20, 48
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(BLOCK) for _ in range(COUNT)]
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)
    for block in reversed(blocks):
        libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def probe(kind: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", PROBE, kind], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return json.loads(out.splitlines()[-1])


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    if not keep_freed_memory():
        pytest.skip("this C library has no mallopt")
    pages = 48 * 8 * 2 ** 20 // 4096
    default, keep = probe("default"), probe("keep")
    assert keep[0] >= pages // 2                 # the first round maps the memory once
    assert max(keep[1:]) < pages // 100          # later rounds reuse it
    assert min(default[1:]) > pages // 2         # the defaults fault it all in again
