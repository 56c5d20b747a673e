"""The stability toolkit's switches (issue 25, docs/STABILITY.md): the `train.` and `monitor.` fields they
add, each with its docstring, its check and the pure object it builds (`seqwarm.guards`).

`TrainConfig` and `MonitorConfig` (seqwarm/config.py) inherit these fields, so the keys are `train.z_loss`,
`monitor.skip_spikes`, ... as everywhere else, while the switches' defaults, checks and sources live
beside the method, not in the config module. Every switch is off by default: a config without these
keys trains as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from seqwarm.errors import ConfigError
from seqwarm.guards import SkipStepGuard, ZClip


@dataclass
class TrainStability:
    z_loss: float = 0.0
    """z-loss coefficient: coef x sum over targets of (log Z)^2 joins the objective, never `loss` (PaLM Section 5 and
    Wortsman et al. 2023: 1e-4; OLMo 2: 1e-5). 0: off. Logged as `aux/z_loss`."""
    grad_clip_mode: Literal["norm", "zscore"] = "norm"
    """`norm`: clip the gradient norm to train.grad_clip. `zscore`: ZClip (Kumar et al. 2025), clip to an adaptive
    threshold from an EMA of recent norms, train.grad_clip still a fixed cap on top (0: none)."""
    zclip_alpha: float = 0.97
    """ZClip: EMA factor of the gradient norm's mean and variance (the paper's 0.97)."""
    zclip_z: float = 2.5
    """ZClip: a norm more than this many standard deviations above the EMA mean is clipped (the paper's 2.5)."""
    zclip_warmup: int = 25
    """ZClip: steps whose norms start the EMA, clipped only by train.grad_clip (the paper's 25)."""
    preflight: bool = True
    """Before step 1, one forward and backward at the largest length and micro-batch the run reaches, so that an
    out-of-memory shows at once (exit 2, nothing written), not hours in; the run is bit-identical with or without it."""

    def check_stability(self) -> None:
        if self.z_loss < 0:
            raise ConfigError(f"train.z_loss: must be >= 0 (0: off; PaLM uses 1e-4), got {self.z_loss}")
        if not 0 < self.zclip_alpha < 1:
            raise ConfigError(f"train.zclip_alpha: must be in (0, 1), got {self.zclip_alpha}")
        if self.zclip_z <= 0:
            raise ConfigError(f"train.zclip_z: must be > 0, got {self.zclip_z}")
        if self.zclip_warmup < 1:
            raise ConfigError(f"train.zclip_warmup: must be >= 1, got {self.zclip_warmup}")

    def zclip(self) -> ZClip | None:
        """The ZClip of `grad_clip_mode: zscore` (train.grad_clip its fixed cap), None in `norm` mode."""
        if self.grad_clip_mode != "zscore":
            return None
        cap = (
            self.grad_clip if self.grad_clip > 0 else None
        )  # TrainConfig's field: the fixed cap, as the reference's max_grad_norm
        return ZClip(alpha=self.zclip_alpha, z_thresh=self.zclip_z, warmup=self.zclip_warmup, max_norm=cap)


@dataclass
class MonitorStability:
    skip_spikes: Literal["none", "loss", "grad_norm", "both"] = "none"
    """Skip-step (OLMo-core SkipStepAdamW): drop the update of a step whose loss and/or gradient norm is more than
    skip_sigma std above the mean of the last skip_window applied steps. `none`: off."""
    skip_sigma: float = 6.0
    """Skip-step: standard deviations above the mean that skip a step (OLMo-core: 6)."""
    skip_window: int = 128
    """Skip-step: applied steps whose values make the mean and std (OLMo-core: 128)."""
    skip_warmup: int = 64
    """Skip-step: inactive until this many values are held (OLMo-core: window // 2 = 64)."""
    rewind: int = 0
    """Rewind-and-skip (PaLM Section 5): at most this many rewinds to the newest checkpoint before a spike that
    persists, skipping the batches of the spike; 0: off. Needs checkpoint.every_steps."""
    rewind_after: int = 5
    """Rewind-and-skip: a spike persists after this many spiking steps in a row (a step is spiking when its loss
    ratio exceeds monitor.rewind_ratio or its update was skipped: skip-step or non-finite)."""
    rewind_ratio: float = 1.5
    """Rewind-and-skip: the loss ratio (Section 3) above which a step is spiking (Appendix A.3.1's 1.5)."""
    rewind_lr_factor: float = 1.0
    """Rewind-and-skip: after a rewind, multiply the LR by this for monitor.rewind_lr_steps steps (1: unchanged)."""
    rewind_lr_steps: int = 0
    """Rewind-and-skip: how many steps after a rewind train at the lowered LR."""
    instruments: bool = False
    """Log the instruments every monitor.every steps: per-layer attention max logit and entropy, the output layer's
    log Z and max |logit|, Adam's variance per parameter group; and the collapse and plateau events."""
    every: int = 10
    """The instruments' cadence in steps (each instrumented step computes the attention statistics)."""

    def check_stability(self) -> None:
        if self.skip_sigma <= 0:
            raise ConfigError(f"monitor.skip_sigma: must be > 0, got {self.skip_sigma}")
        if self.skip_window < 2:
            raise ConfigError(f"monitor.skip_window: must be >= 2, got {self.skip_window}")
        if not 2 <= self.skip_warmup <= self.skip_window:
            raise ConfigError(
                f"monitor.skip_warmup: must be in [2, monitor.skip_window = {self.skip_window}], got {self.skip_warmup}"
            )
        if self.rewind < 0:
            raise ConfigError(f"monitor.rewind: must be >= 0 (0: off), got {self.rewind}")
        if self.rewind_after < 1:
            raise ConfigError(f"monitor.rewind_after: must be >= 1, got {self.rewind_after}")
        if self.rewind_ratio <= 1:
            raise ConfigError(
                f"monitor.rewind_ratio: must be > 1 (a loss ratio of 1 is no spike), got {self.rewind_ratio}"
            )
        if not 0 < self.rewind_lr_factor <= 1:
            raise ConfigError(f"monitor.rewind_lr_factor: must be in (0, 1], got {self.rewind_lr_factor}")
        if self.rewind_lr_steps < 0:
            raise ConfigError(f"monitor.rewind_lr_steps: must be >= 0, got {self.rewind_lr_steps}")
        if self.every < 1:
            raise ConfigError(f"monitor.every: must be positive, got {self.every}")

    def skip_guard(self) -> SkipStepGuard | None:
        """The SkipStepGuard of `skip_spikes`, None when off."""
        if self.skip_spikes == "none":
            return None
        signals = ("loss", "grad_norm") if self.skip_spikes == "both" else (self.skip_spikes,)
        return SkipStepGuard(sigma=self.skip_sigma, window=self.skip_window, warmup=self.skip_warmup, signals=signals)
