"""Two answers to a single bad step, as pure objects on the step's loss and gradient norm: skip it
(`SkipStepGuard`, OLMo-core's `SkipStepAdamW`) or clip it to what recent steps make plausible (`ZClip`).

Both see plain floats: the trainer already reads each step's loss and gradient norm back before the
optimizer step (the finiteness check, the loss ratio, the logs), so deciding on the host adds no device
sync. Both have `state_dict`/`load_state_dict` of JSON values, so a resumed run decides as the
uninterrupted one would. Non-finite values are the NonFiniteGuard's (seqwarm.monitor): they are never
recorded here.
"""

from __future__ import annotations

import math
from collections import deque


class SkipStepGuard:
    """Skip an update whose loss and/or gradient norm is more than `sigma` standard deviations above the
    mean of the last `window` applied steps (OLMo-core `SkipStepOptimizer`, used by OLMo 2's recipes;
    MaxText has the same switch).

    OLMo-core's rule, read from `olmo_core/optim/skip_step_optimizer.py` (2026-06): skip when
    value - mean > sigma * std, mean and std (Bessel-corrected, `torch.std_mean`) over up to the last 128
    previous values; with both signals, either one past its threshold skips; defaults sigma 6, window 128,
    inactive until the history holds window // 2 values (here `warmup` = 64, a parameter of its own).
    A skipped update there leaves the weights, Adam's moments and Adam's step count untouched.

    One deliberate difference: here a skipped step's values do **not** enter the history (OLMo-core appends
    every step's). A spike kept in a 128-step window inflates the std for the next 128 steps (one value 10
    sigma out raises the std of 128 values by a third: sqrt((127 + 100) / 128) = 1.33) and so hides the
    spikes that follow it, which come in clusters; the window should describe the steps the model actually took. The cost: after a lasting
    upward shift (not a spike) every step would be skipped. `in_a_row` counts consecutive skips so that the
    trainer can stop, or rewind (`monitor.rewind`), after too many, as the NonFiniteGuard does.
    """

    SIGNALS = ("loss", "grad_norm")

    def __init__(self, *, sigma: float = 6.0, window: int = 128, warmup: int = 64, signals=SIGNALS):
        if sigma <= 0:
            raise ValueError(f"sigma: must be > 0, got {sigma}")
        if window < 2 or not 2 <= warmup <= window:
            raise ValueError(f"window and warmup: need 2 <= warmup <= window, got warmup {warmup}, window {window}")
        if not signals or set(signals) - set(self.SIGNALS):
            raise ValueError(f"signals: a non-empty subset of {self.SIGNALS}, got {signals}")
        self.sigma, self.window, self.warmup, self.signals = float(sigma), int(window), int(warmup), tuple(signals)
        self.history = {s: deque(maxlen=self.window) for s in self.signals}
        self.skipped = 0  # over the whole run
        self.in_a_row = 0

    def threshold(self, signal: str) -> float | None:
        """mean + sigma * std of the signal's history; None while the guard is inactive (warm-up)."""
        h = self.history[signal]
        if len(h) < self.warmup:
            return None
        mean = sum(h) / len(h)
        std = math.sqrt(sum((x - mean) ** 2 for x in h) / (len(h) - 1))
        return mean + self.sigma * std

    def check(self, loss: float, grad_norm: float | None = None) -> str | None:
        """Decide one step: None to apply it (its values join the history), or the reason to skip it.

        `grad_norm` is needed when the guard watches it. A non-finite value is skipped and not recorded.
        """
        values = {"loss": loss, "grad_norm": grad_norm}
        if any(values[s] is None for s in self.signals):
            raise ValueError(f"check: the guard watches {', '.join(self.signals)}; got {values}")
        if not all(math.isfinite(values[s]) for s in self.signals):
            return "non-finite"  # the NonFiniteGuard's to count and act on
        for s in self.signals:
            limit = self.threshold(s)
            if limit is not None and values[s] > limit:
                self.skipped += 1
                self.in_a_row += 1
                return f"{s} {values[s]:.4g} > {limit:.4g} (mean + {self.sigma:g} std of the last {len(self.history[s])} steps)"
        for s in self.signals:
            self.history[s].append(float(values[s]))
        self.in_a_row = 0
        return None

    def state_dict(self) -> dict:
        return {
            "history": {s: list(h) for s, h in self.history.items()},
            "skipped": self.skipped,
            "in_a_row": self.in_a_row,
        }

    def load_state_dict(self, state: dict) -> None:
        for s in self.signals:
            self.history[s] = deque((float(x) for x in state["history"][s]), maxlen=self.window)
        self.skipped, self.in_a_row = int(state["skipped"]), int(state["in_a_row"])


class ZClip:
    """Z-score adaptive gradient clipping (Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM
    Pre-Training"), on the global gradient norm before clipping.

    The reference implementation (github.com/bluorion-com/ZClip, `zclip/zclip.py`, 2025-10), which this
    follows: the first `warmup` (25) norms are collected, then mean and variance start as their mean and
    population variance. At each later step, z = (g - mean) / (std + eps). If z > `z_thresh` (2.5) the
    norm is clipped to

    - `adaptive_scaling` (the default): mean + z_thresh * std / (z / z_thresh), times `clip_factor`
      (the reference multiplies the whole threshold, though its docstring says only the std term; equal at
      its default 1.0). The further out the spike, the harder the clip.
    - `mean`: the EMA mean.
    - `threshold`: mean + z_thresh * std (the reference's "percentile" mode).

    Then the EMA moves with alpha (0.97): mean <- alpha mean + (1 - alpha) x, then var <- alpha var +
    (1 - alpha) (x - mean)^2 with the *updated* mean, where x is the clipped value on a spike and the raw
    norm otherwise (the reference's default; `skip_update_on_spike` leaves the EMA alone on a spike instead).

    `max_norm` is a fixed cap on top, as the reference's `max_grad_norm` (default 1.0 there, None here:
    the trainer passes `train.grad_clip`): during warm-up the norm is clipped to it, afterwards to the
    smaller of it and the adaptive value. The EMA never sees the cap.
    """

    OPTIONS = ("adaptive_scaling", "mean", "threshold")

    def __init__(
        self,
        *,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        warmup: int = 25,
        clip_option: str = "adaptive_scaling",
        clip_factor: float = 1.0,
        max_norm: float | None = None,
        skip_update_on_spike: bool = False,
        eps: float = 1e-6,
    ):
        if not 0 < alpha < 1:
            raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
        if z_thresh <= 0 or warmup < 1 or clip_factor <= 0 or (max_norm is not None and max_norm <= 0):
            raise ValueError("z_thresh, warmup, clip_factor and max_norm must be > 0")
        if clip_option not in self.OPTIONS:
            raise ValueError(f"clip_option: one of {self.OPTIONS}, got {clip_option!r}")
        self.alpha, self.z_thresh, self.warmup, self.eps = alpha, z_thresh, warmup, eps
        self.clip_option, self.clip_factor, self.max_norm = clip_option, clip_factor, max_norm
        self.skip_update_on_spike = skip_update_on_spike
        self.buffer: list[float] = []  # the warm-up's norms
        self.mean: float | None = None
        self.var: float | None = None
        self.clipped = 0  # steps whose adaptive value applied (spikes), over the run

    @property
    def initialized(self) -> bool:
        return self.mean is not None

    def z_score(self, grad_norm: float) -> float | None:
        return None if self.mean is None else (grad_norm - self.mean) / (math.sqrt(self.var) + self.eps)

    def _adaptive(self, grad_norm: float) -> float | None:
        """The clip value on a spike (z > z_thresh), None otherwise or during warm-up; the cap not applied."""
        z = self.z_score(grad_norm)
        if z is None or z <= self.z_thresh:
            return None
        std = math.sqrt(self.var)
        if self.clip_option == "mean":
            return self.mean
        if self.clip_option == "threshold":
            return self.mean + self.z_thresh * std
        return (self.mean + self.z_thresh * std / (z / self.z_thresh)) * self.clip_factor

    def clip_value(self, grad_norm: float) -> float | None:
        """The max_norm to clip this step's gradients to, or None for no clipping. Changes no state."""
        if not math.isfinite(grad_norm):
            return None
        limit = self._adaptive(grad_norm)
        if self.max_norm is not None:
            limit = self.max_norm if limit is None else min(limit, self.max_norm)
        return limit if limit is not None and limit < grad_norm else None

    def update(self, grad_norm: float) -> None:
        """Record this step's raw gradient norm (after `clip_value`, once per applied step)."""
        if not math.isfinite(grad_norm):
            return
        if not self.initialized:
            self.buffer.append(float(grad_norm))
            if len(self.buffer) >= self.warmup:
                n = len(self.buffer)
                self.mean = sum(self.buffer) / n
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / n
                self.buffer = []
            return
        spike = self._adaptive(grad_norm)
        if spike is not None:
            self.clipped += 1
            if self.skip_update_on_spike:
                return
        x = grad_norm if spike is None else spike
        self.mean = self.alpha * self.mean + (1 - self.alpha) * x
        self.var = self.alpha * self.var + (1 - self.alpha) * (x - self.mean) ** 2

    def step(self, grad_norm: float) -> float | None:
        """`clip_value` then `update`: the max_norm for this step's gradients, or None."""
        limit = self.clip_value(grad_norm)
        self.update(grad_norm)
        return limit

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer), "mean": self.mean, "var": self.var, "clipped": self.clipped}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = [float(x) for x in state["buffer"]]
        self.mean = None if state["mean"] is None else float(state["mean"])
        self.var = None if state["var"] is None else float(state["var"])
        self.clipped = int(state["clipped"])
