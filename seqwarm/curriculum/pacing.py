"""Pacing functions: how a curriculum grows a quantity (a length, a window) from a start to its end.

Pure functions of the step; no torch, no config. The paper's linear pacing (Section 4), DeepSpeed's
`fixed_root`, and discrete stages (Shortformer's two stages are one stage, Section 5.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def linear_pacing(step: int, seqlen_start: int, seqlen_end: int, duration: int) -> float:
    """seqlen_t = seqlen_s + (seqlen_e - seqlen_s) * min(t / T, 1)   (Section 4)."""
    return seqlen_start + (seqlen_end - seqlen_start) * min(step / duration, 1.0)


def root_pacing(step: int, seqlen_start: int, seqlen_end: int, duration: int, root_degree: float) -> float:
    """seqlen_t = seqlen_s + (seqlen_e - seqlen_s) * min(t / T, 1) ** (1 / r).

    The paper's text writes the exponent as r but calls r the root degree (Section 4); we follow
    the root reading, as DeepSpeed's `fixed_root` does: r = 2 grows fast early, then slows.
    """
    return seqlen_start + (seqlen_end - seqlen_start) * min(step / duration, 1.0) ** (1.0 / root_degree)


def discrete_pacing(step: int, stages: list[list[int]], seqlen_end: int) -> float:
    """Stages `[[until_step, seqlen], ...]`: steps before `until_step` use `seqlen`; then full length.

    Shortformer's 2-stage training (Press et al., 2021; paper Section 5.1) is `[[T, 128]]`.
    """
    for until_step, seqlen in stages:
        if step < until_step:
            return seqlen
    return seqlen_end


def round_seqlen(raw: float, multiple_of: int, seqlen_start: int, seqlen_end: int) -> int:
    """Round down to a multiple of `multiple_of` (Section 5.1: seqlen_t - seqlen_t mod 8), then clamp.

    The clamp comes after the rounding, so the length never falls below seqlen_start (DeepSpeed's
    rounding can), and once the pacing reaches seqlen_end the full length is used even if it is not
    itself a multiple.
    """
    if raw >= seqlen_end:
        return seqlen_end
    seqlen = int(raw) - int(raw) % multiple_of
    return max(seqlen_start, min(seqlen, seqlen_end))


# The pacing of an axis as a value, so that a consumer (export-schedule, tune) asks what it is by type,
# never by a name matched in its own module.


@dataclass(frozen=True)
class Linear:
    """The paper's pacing over `duration` steps (T)."""

    duration: int

    def __call__(self, step: int, start: int, end: int) -> float:
        return linear_pacing(step, start, end, self.duration)

    @property
    def end_step(self) -> int:
        # Before T the raw value is below the end and rounding only lowers it.
        return self.duration


@dataclass(frozen=True)
class Root:
    """DeepSpeed's `fixed_root` over `duration` steps with root degree r."""

    duration: int
    root_degree: float

    def __call__(self, step: int, start: int, end: int) -> float:
        return root_pacing(step, start, end, self.duration, self.root_degree)

    @property
    def end_step(self) -> int:
        return self.duration


@dataclass(frozen=True)
class Stages:
    """Fixed values until given steps, then the end value: `[[until_step, value], ...]`."""

    stages: tuple[tuple[int, int], ...]

    def __call__(self, step: int, start: int, end: int) -> float:
        return discrete_pacing(step, [list(s) for s in self.stages], end)

    @property
    def end_step(self) -> int:
        return self.stages[-1][0]


@dataclass(frozen=True)
class Sine:
    """start + (end - start) * sin(pi/2 * min(t/T, 1)): fast early, slow late (one of the shapes SkyLadder, 2025,
    compares for its context window; the formula is ours, as its released code implements the linear rule only)."""

    duration: int

    def __call__(self, step: int, start: int, end: int) -> float:
        return start + (end - start) * math.sin(0.5 * math.pi * min(step / self.duration, 1.0))

    @property
    def end_step(self) -> int:
        return self.duration


@dataclass(frozen=True)
class Cosine:
    """start + (end - start) * (1 - cos(pi * min(t/T, 1))) / 2: slow at both ends (SkyLadder's cosine shape; ours)."""

    duration: int

    def __call__(self, step: int, start: int, end: int) -> float:
        return start + (end - start) * 0.5 * (1.0 - math.cos(math.pi * min(step / self.duration, 1.0)))

    @property
    def end_step(self) -> int:
        return self.duration


Pacing = Linear | Root | Stages | Sine | Cosine
