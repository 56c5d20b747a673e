"""The process's device and the process-level settings that make CPU training faster."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch

from seqwarm.errors import ConfigError

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
