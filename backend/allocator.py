"""How the daemon process asks glibc's malloc to keep freed memory.

PyTorch on the CPU allocates every activation with malloc. glibc serves blocks above its
mmap threshold with fresh mmaps and gives freed memory back to the kernel soon after, so
each denoising step maps its activations anew and the kernel zeroes every page again: on
a full-size SD1.5 job at 256 px that is over two million page faults and about a fifth of
the job's CPU time spent in the kernel (``benchmarks.allocator`` measures it). Raising the
mmap and trim thresholds keeps freed blocks in the heap for the next step to reuse; the
process holds on to its peak working set, which a daemon that runs the same jobs again
and again reaches anyway.

glibc reads the same settings from MALLOC_*_ environment variables at start-up; this sets
them for a process that is already running. Other C libraries (musl, macOS) have no
``mallopt`` and are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("atelier.allocator")

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2 ** 20      # glibc's ceiling: blocks above it are always mmapped
TRIM_THRESHOLD = 2 ** 30           # free heap kept before it is handed back (fits a C int)
TOP_PAD = 256 * 2 ** 20            # the heap grows in steps this large, not page by page


def keep_freed_memory() -> bool:
    """Set the thresholds above on this process's glibc malloc; False where the C
    library has no ``mallopt`` (nothing changed)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version   # glibc only: musl's mallopt is a no-op
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (M_TOP_PAD, TOP_PAD)))
    if not done:
        log.warning("glibc refused a malloc setting; freed memory goes back to the kernel "
                    "as usual")
    return done
