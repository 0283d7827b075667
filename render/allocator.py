"""Opt-in tuning of the C allocator for PyTorch CPU work.

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold
(128 KB to 32 MB, adaptive) with fresh ``mmap`` calls and hands freed memory back to the
system, so code that creates many short-lived tensors of a few hundred KB, like the
rasterizer, spends much of its time in page faults. :func:`tune_cpu_allocator` raises the
mmap and trim thresholds so such blocks are reused instead; the price is that the process
keeps freed memory for reuse rather than returning it to the system at once.

It changes a process-wide setting, so the library never calls it on import: programs opt
in (the demos and benchmarks do). Setting the environment variables
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_TOP_PAD_`` before
Python starts has the same effect; so does preloading jemalloc or tcmalloc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["tune_cpu_allocator"]

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def tune_cpu_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30, top_pad: int = 256 << 20) -> bool:
    """Make glibc keep and reuse large freed blocks (see the module docstring).

    Returns True when the settings were applied, False where glibc's ``mallopt`` is not
    available (other C libraries, macOS, Windows); calling it there is harmless.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # glibc caps the mmap threshold at HEAP_MAX (32 MB on 64-bit) and rejects larger
    # values; fall back to the cap.
    ok = bool(mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, 2**31 - 1)))
    if not ok:
        ok = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    ok &= bool(mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)))
    ok &= bool(mallopt(_M_TOP_PAD, min(top_pad, 2**31 - 1)))
    return ok
