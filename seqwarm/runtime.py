"""Process-level settings that make CPU training faster."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def keep_freed_memory() -> bool:
    """Stop glibc from returning large freed blocks to the OS after every step.

    By default glibc serves each large allocation (above a threshold that adapts up to 32 MiB;
    a chunk of logits over GPT-2's 50257-word vocabulary is ~100 MB) with a fresh mmap and unmaps
    it on free, so every step pays page faults to zero the same memory again. Raising
    the mmap and trim thresholds lets the heap keep and reuse those blocks: 1.5x more tokens/s for
    the tiny CPU configs on this project's 2-core machine (docs/PERFORMANCE.md). The cost is a
    resident heap the size of the step's peak, which training reaches anyway.
    Returns whether the setting took effect (only on Linux with glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 31))
