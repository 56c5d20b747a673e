"""The stability toolkit for loops that are not seqwarm's trainer (issue 25; docs/STABILITY.md, docs/INTEGRATIONS.md):
z-loss as a function of the logits a model returns, skip-step and ZClip as a guard around `optimizer.step`.

    guard = StepGuard(skip_spikes="both", grad_clip_mode="zscore", grad_clip=1.0)
    guard.wrap(optimizer, slw=slw)          # its state then travels in slw.state_dict()
    for batch in ...:
        logits = model(inputs)
        ce = F.cross_entropy(...)
        loss = ce + gradient_only(z_loss(logits, targets, 1e-4, shift=False))   # the value stays ce
        loss.backward(); guard.add_loss(loss)
        optimizer.step()                   # the guard decides: skip (no step), clip, or step as is
        scheduler.step()

Why a wrapper of `optimizer.step` and not a callback: a skipped update must leave the weights, Adam's moments and
its step count untouched (OLMo-core's SkipStepAdamW), which only not calling the optimizer's step does; a hook before
the step cannot cancel it, and zeroed gradients would still move Adam (momentum, weight decay, the step count). The
wrapper also sits where every framework already calls: the Hugging Face Trainer (through accelerate) and Lightning
(with its closure) both end a step with the torch optimizer's `step`. And since SLW's LR pre-hook runs inside that
step, a skipped update is a step whose tokens do not count on the clock, exactly as in seqwarm's trainer.

The decisions are seqwarm's own (`seqwarm.stability.decide`, `seqwarm.guards`), built from the same config fields
(`monitor.skip_*`, `train.grad_clip_mode`, `train.zclip_*`, `train.grad_clip`) and checked the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from seqwarm import stability
from seqwarm.config import config_from_dict
from seqwarm.errors import ConfigError
from seqwarm.integrations.loop import _innermost
from seqwarm.loss import IGNORE_INDEX

TRAIN_ARGS = ("grad_clip", "grad_clip_mode", "zclip_alpha", "zclip_z", "zclip_warmup")
MONITOR_ARGS = ("skip_spikes", "skip_sigma", "skip_window", "skip_warmup")


def check_z_loss(coef: float) -> float:
    """The z-loss coefficient, checked as `train.z_loss` is (a ConfigError naming it)."""
    config_from_dict({"train": {"max_tokens": 1, "z_loss": coef}})
    return float(coef)


def z_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    coef: float,
    *,
    shift: bool = True,
    num_items: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """PaLM's z-loss (Chowdhery et al. 2022, Section 5; Wortsman et al. 2023, Section 3.2): coef x the sum of
    (log Z)^2 over the positions with a target, log Z = logsumexp of the position's logits; divided by `num_items`
    (a Trainer's step-wide target count) or else by the number of those positions (a mean, as the loss).

    `shift=True` is Hugging Face's convention (labels aligned with input_ids; position i predicts labels[i + 1]);
    `shift=False` for targets already shifted (seqwarm's rows, `shift_labels`). The value is seqwarm's `aux/z_loss`;
    add it to the objective through `gradient_only` so that the loss you log (and the loss ratio) stays the
    cross-entropy, as seqwarm's trainer keeps it.
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != ignore_index
    logz = torch.logsumexp(logits[mask].float(), dim=-1)  # the target positions only: no copy of the padding
    count = mask.sum().clamp(min=1) if num_items is None else num_items
    return coef * logz.pow(2).sum() / count


def gradient_only(term: torch.Tensor) -> torch.Tensor:
    """A term's gradient with the value 0 (exactly: x - x), to add to a loss whose value must not change:
    `ce + gradient_only(z)` backpropagates ce + z and reads ce, the trainer's rule for auxiliary terms."""
    return term - term.detach()


class StepGuard:
    """Skip-step (`monitor.skip_spikes`, OLMo-core's rule) and ZClip (`train.grad_clip_mode: zscore`) around a torch
    optimizer's step, with the trainer's semantics; the arguments are those config fields, checked as they are.

    At each `optimizer.step()` the guard reads the step's loss (`add_loss`, or the `step_loss` its integration gives)
    and the gradients' global norm in one host sync, then `seqwarm.stability.decide`s: a skipped update (a spike, or a
    non-finite loss or norm) is not applied and the gradients are zeroed; otherwise the gradients are clipped to
    ZClip's value (or to `grad_clip` in `norm` mode) and the optimizer steps. Clip with the guard, not before it: the
    guard must see the raw norm, as the trainer's does. `last` is the last step's decision; `state_dict` holds the
    guards' histories (in `SequenceLengthWarmup.state_dict` once `wrap(..., slw=)`).
    """

    def __init__(
        self,
        *,
        skip_spikes: str = "none",
        skip_sigma: float = 6.0,
        skip_window: int = 128,
        skip_warmup: int = 64,
        grad_clip_mode: str = "norm",
        grad_clip: float = 0.0,
        zclip_alpha: float = 0.97,
        zclip_z: float = 2.5,
        zclip_warmup: int = 25,
    ):
        given = locals()
        self.settings = {k: given[k] for k in (*MONITOR_ARGS, *TRAIN_ARGS)}
        cfg = config_from_dict(
            {
                "train": {"max_tokens": 1, **{k: given[k] for k in TRAIN_ARGS}},
                "monitor": {k: given[k] for k in MONITOR_ARGS},
            }
        )
        self.skip_guard = cfg.monitor.skip_guard()
        self.zclip = cfg.train.zclip()
        self.grad_clip = cfg.train.grad_clip if cfg.train.grad_clip_mode == "norm" else 0.0
        self.watches_loss = self.skip_guard is not None and "loss" in self.skip_guard.signals
        self.nonfinite = 0  # updates not applied for a non-finite loss or norm
        self.last: dict[str, Any] = {}
        self._loss: torch.Tensor | float | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    # --- the step -------------------------------------------------------------------------------------

    def add_loss(self, loss: torch.Tensor | float) -> None:
        """Add a micro-batch's loss (as it enters the step's gradient) to the step's loss, for a loop without
        `step_loss`; the sum is what skip-step watches."""
        loss = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)
        self._loss = loss if self._loss is None else self._loss + loss

    def wrap(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        slw=None,
        step_loss: Callable[[], torch.Tensor | float | None] | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.optim.Optimizer:
        """Guard `optimizer`'s step (the innermost torch optimizer's, so wrappers that forward `step()` keep working);
        returns `optimizer`. `slw`: a SequenceLengthWarmup whose state carries the guard's. `step_loss`: the step's
        loss so far (the integrations' own sum of its micro-batches); `reduce`: a mean over the data-parallel
        processes, so that every process takes the same decision."""
        inner = _innermost(optimizer)
        original = getattr(inner, "_seqwarm_unguarded_step", None) or inner.step
        self._optimizer, self._step_loss, self._reduce = inner, step_loss, reduce

        def step(closure=None):
            return self._guarded_step(original, closure)

        inner._seqwarm_unguarded_step = original
        inner.step = step
        if slw is not None:
            slw.attach("step_guard", self)
        return optimizer

    def _guarded_step(self, original, closure):
        extra = None
        if closure is not None:  # Lightning's: the last micro-batch's forward and backward, whose loss it returns
            with torch.enable_grad():
                extra = closure()
        loss = self._take_loss(extra)
        params = [p for g in self._optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
        if loss is None and self.watches_loss:
            raise RuntimeError(
                "StepGuard: skip-step watches the loss; call guard.add_loss(loss) before optimizer.step()"
            )
        values = torch.stack([torch.as_tensor(0.0 if loss is None else loss, device=norm.device).float(), norm.float()])
        if self._reduce is not None and loss is not None:
            values[0] = self._reduce(values[0])
        loss_f, norm_f = values.tolist()  # the step's one host sync
        if not (math.isfinite(loss_f) and math.isfinite(norm_f)):
            reason, clip = "non-finite", None  # never applied, as the trainer's NonFiniteGuard has it
            self.nonfinite += 1
        else:
            reason, clip = stability.decide(self, loss_f, norm_f)
        if clip is None and reason is None and 0 < self.grad_clip < norm_f:
            clip = self.grad_clip
        self.last = {"grad_norm": norm_f, "skipped": reason, "clip_norm": clip}
        if reason is not None:
            self._optimizer.zero_grad(set_to_none=True)
            return extra
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
        original()
        return extra

    def _take_loss(self, extra: torch.Tensor | None) -> torch.Tensor | float | None:
        loss = self._step_loss() if self._step_loss is not None else self._loss
        self._loss = None
        if extra is not None:
            loss = extra.detach() if loss is None else loss + extra.detach()
        return loss

    def metrics(self) -> dict[str, float]:
        """For a log row: the counts of the switches that are on (summary.json's names) and the last raw norm."""
        out = {}
        if self.skip_guard is not None:
            out["spike_skips"] = self.skip_guard.skipped
        if self.zclip is not None:
            out["zclip_clipped"] = self.zclip.clipped
        if self.last:
            out["grad_norm"] = self.last["grad_norm"]
        return out

    # --- state ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "settings": dict(self.settings),
            "skip_guard": None if self.skip_guard is None else self.skip_guard.state_dict(),
            "zclip": None if self.zclip is None else self.zclip.state_dict(),
            "nonfinite": self.nonfinite,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved guard; another setting than the saved one is refused (a ConfigError naming it), as
        `seqwarm train --resume` refuses a change of what is computed."""
        for key, value in state["settings"].items():
            if self.settings.get(key) != value:
                section = "monitor" if key in MONITOR_ARGS else "train"
                raise ConfigError(
                    f"{section}.{key}: the saved step guard has {value!r}, this one {self.settings.get(key)!r}"
                )
        if self.skip_guard is not None:
            self.skip_guard.load_state_dict(state["skip_guard"])
        if self.zclip is not None:
            self.zclip.load_state_dict(state["zclip"])
        self.nonfinite = int(state["nonfinite"])


__all__ = ["StepGuard", "check_z_loss", "gradient_only", "z_loss"]
