"""Closed-loop pacing (`pacing: adaptive`): the length (or window) grows only while the run is stable.

The paper tunes T by hand (a binary search over probes, Section 5.1); users describe growing the length "each
time the loss reached a plateau". Here the open-loop pacing (linear over T steps) is driven by a *virtual step*
that advances only on stable steps, with a floor that makes it finish by `max_duration` regardless:

    virtual(s) = max(progress, s * T / T_max)          progress: stable steps counted so far (<= s)
    length(s)  = linear(virtual(s))                      the paper's pacing at the virtual step

Signal: a step is stable when its loss ratio (the loss over the minimum of all earlier losses, Section 3's
spike measure and `seqwarm.monitor.LossRatio`) is finite and below `threshold`. Hysteresis: after an unstable
step the controller holds until `patience` consecutive stable steps have passed, so one spike does not make the
length saw up and down. Bounds, whatever the run: never faster than the open-loop schedule (progress grows by at
most one per step), never slower than linear over `max_duration` steps (the floor). `seqwarm plan` prints both.

The controller is the only curriculum state; its `state_dict` goes into the trainer's checkpoint and into
`SequenceLengthWarmup`'s state, so a resumed run continues with the same virtual step. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Adaptive:
    """The parameters of closed-loop pacing: open-loop T, the slowest T_max, the signal's threshold and the
    hysteresis. `CurriculumConfig` builds it from `duration`, `adaptive_max_duration`, `adaptive_threshold`,
    `adaptive_patience`."""

    duration: int
    max_duration: int
    threshold: float = 1.05
    patience: int = 5

    @property
    def end_step(self) -> int:
        """The first full step at the *fastest* (open-loop); the slowest is `max_duration`."""
        return self.duration


class AdaptiveController:
    """Counts stable steps; `virtual(step)` is the step at which the open-loop pacing is evaluated."""

    def __init__(self, pacing: Adaptive):
        self.pacing = pacing
        self.progress = 0  # stable steps that advanced the pacing
        self.holding = False  # after an unstable step, until `patience` stable steps in a row
        self.calm = 0  # consecutive stable steps while holding

    def virtual(self, step: int) -> float:
        p = self.pacing
        return max(float(self.progress), step * p.duration / p.max_duration)

    def observe(self, signals: dict) -> None:
        """After a step: `signals["loss_ratio"]` (a missing or non-finite ratio counts as unstable)."""
        ratio = signals.get("loss_ratio")
        stable = ratio is not None and math.isfinite(ratio) and ratio < self.pacing.threshold
        if not stable:
            self.holding, self.calm = True, 0
            return
        if self.holding:
            self.calm += 1
            if self.calm < self.pacing.patience:
                return
            self.holding, self.calm = False, 0
        self.progress += 1

    def state_dict(self) -> dict:
        return {"progress": self.progress, "holding": self.holding, "calm": self.calm}

    def load_state_dict(self, state: dict) -> None:
        self.progress, self.holding, self.calm = int(state["progress"]), bool(state["holding"]), int(state["calm"])
