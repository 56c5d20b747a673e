"""The process's device and the process-level settings that make CPU training faster."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import statistics
import sys
import time

import torch

from seqwarm.errors import ConfigError

# torch's own default (the physical cores, or OMP_NUM_THREADS), read before anything here changes it.
_TORCH_DEFAULT_THREADS = torch.get_num_threads()

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


def resolve_device(name: str, local_rank: int = 0, *, option: str = "train.device") -> torch.device:
    """`auto`, `cpu` or `cuda` -> the device to run on: cpu, or this process's GPU (LOCAL_RANK under torchrun).

    `option` names the setting in the error a user sees (`train.device`, or `--device` of eval).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option}: cuda requested but no CUDA device is available")
    if name == "cpu":
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local_rank}: this machine has {torch.cuda.device_count()} CUDA devices")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def check_precision(precision: str, device: str) -> None:
    """ConfigError when `train.precision` cannot run on `device` (a device type, or `auto`).

    The one home of this check: the config calls it with `train.device` (so a sweep's grid fails
    before any run when it says cpu), and `trainer.with_resolved_precision` with the device that
    `auto` became, before the run directory or the data are touched. fp16 needs CUDA: its loss
    scaling is what makes it train, and torch's CPU autocast has no fp16 path worth using.
    """
    if precision == "fp16" and device not in ("cuda", "auto"):
        raise ConfigError(f"train.precision: fp16 needs CUDA (use bf16 or fp32 on {device})")


def cpu_bf16_units() -> list[str]:
    """The CPU's bf16 multiply units among AMX (`amx_bf16`, a tile unit) and AVX-512 BF16 (`avx512_bf16`),
    as the kernels torch dispatches to see them; empty when bf16 would be emulated in fp32."""
    units = []
    for name, probe in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        check = getattr(torch.cpu, probe, None)  # private in torch 2.x: absent means we cannot tell
        if check is not None and check():
            units.append(name)
    return units


def resolve_precision(precision: str, device: torch.device) -> str:
    """`train.precision: auto` -> what the device multiplies fastest without a loss scaler: bf16 on a
    GPU that supports it and on a CPU with AMX or AVX-512 BF16 (docs/PERFORMANCE.md measures what it
    gains there), fp32 otherwise. fp16 is never picked: it needs loss scaling and
    overflows where bf16 does not. Explicit values pass through unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_bf16_units() else "fp32"


# --- CPU threads ------------------------------------------------------------------------------------------------
# OpenMP threads spin while they wait for each other. On a machine that other processes keep busy, one thread per
# core then fights them for every core: a 30-step slice of the demo took 73 s at torch's default against 16 s at one
# thread, at load ~2 on 2 cores (issue 27; docs/PERFORMANCE.md, "Threads on a busy machine"). So when neither
# train.num_threads nor OMP_NUM_THREADS says otherwise, training takes the cores that other processes leave free.


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: taskset, cgroup cpusets), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def other_load(samples: int = 5, interval_s: float = 0.02) -> float:
    """How many cores other processes keep busy: the smaller of the 1-minute load average and the median of a few
    instantaneous counts of runnable tasks, this process's own excluded.

    The load average alone remembers this process's own earlier work (a run just finished on both cores reads as
    load 2 for a minute); the instantaneous count alone misses bursty neighbours. Each errs pessimistic in one of
    those cases, so the smaller is taken. 0 where neither can be read."""
    try:
        average = os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return average
        counts.append(max(0, running - 1))  # this process, running while it reads
        if i + 1 < samples:
            time.sleep(interval_s)
    return min(average, statistics.median(counts))


def default_num_threads(cores: int | None = None, load: float | None = None, local_processes: int = 1) -> int:
    """Threads for one training process when train.num_threads is unset: its share of the usable cores that other
    processes leave free, at least 1 and at most torch's own default (physical cores), so it never oversubscribes."""
    cores = usable_cores() if cores is None else cores
    load = other_load() if load is None else load
    share = max(1, cores // max(1, local_processes))
    free = math.floor(cores - load + 0.5)  # a core busy half the time or less counts as free
    return max(1, min(share, free, _TORCH_DEFAULT_THREADS))


def set_cpu_threads(num_threads: int | None) -> int:
    """Set torch's intra-op threads: `num_threads` when given; else, unless OMP_NUM_THREADS is set (torchrun sets
    it to 1 per process), `default_num_threads`. Returns the threads in use; the progress line shows them against
    the usable cores (`threads_text`), not stderr, which carries errors only."""
    if num_threads:
        torch.set_num_threads(num_threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        torch.set_num_threads(default_num_threads(local_processes=local))
    return torch.get_num_threads()


def threads_text() -> str:
    """`2 threads` on an idle machine, `1 thread of 2 cores` when fewer threads than usable cores run."""
    threads, cores = torch.get_num_threads(), usable_cores()
    text = f"{threads} thread{'s' if threads > 1 else ''}"
    return text if threads >= cores else f"{text} of {cores} cores"
