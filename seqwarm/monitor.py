"""Training-stability instruments (paper, Section 3) and the finiteness guard.

The paper's evidence for the stability-efficiency dilemma is the *loss ratio* (Table 1) and the
extreme values of Adam's variance state, measured as the l1 norm and the max element of
sqrt(v_t) (footnote 5, Figures 1 and 4), whose Pearson correlation with the loss ratio is Table 3.
seqwarm records them at every step, reduced on the device and read back as a few scalars.
"""

from __future__ import annotations

import math

import torch

from seqwarm.distributed import local


class LossRatio:
    """Current training loss over the minimum loss of all previous steps (Section 3, Table 1).

    1.0 at the first step; a ratio well above 1 marks a loss spike. Non-finite losses do not
    lower the minimum.
    """

    def __init__(self):
        self.min_loss = math.inf

    def __call__(self, loss: float) -> float:
        ratio = 1.0 if math.isinf(self.min_loss) else loss / self.min_loss
        if math.isfinite(loss):
            self.min_loss = min(self.min_loss, loss)
        return ratio

    def state_dict(self) -> dict:
        return {"min_loss": None if math.isinf(self.min_loss) else self.min_loss}

    def load_state_dict(self, state: dict) -> None:
        self.min_loss = math.inf if state["min_loss"] is None else float(state["min_loss"])


ADAM_KEYS = ("adam/var_l1", "adam/var_max", "adam/mom_l1")


@torch.no_grad()
def adam_statistics(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """[l1 norm of sqrt(v_t), max element of sqrt(v_t), l1 norm of m_t] over all parameters, on device.

    sqrt(v_t) is Adam's per-coordinate gradient scale (footnote 5: "variance norm/max"); m_t is
    the momentum whose l1 norm Figure 10b plots. One reduction per tensor, combined on the device;
    the caller reads the three numbers back at once. (torch._foreach_norm looked cheaper but is 4x
    slower on CPU and off by ~1% on a GPT-2 117M state; per-tensor `sum` is exact to fp32 rounding.)
    None before the first step (no state yet).
    """
    var_l1, var_max, mom_l1 = [], [], []
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "exp_avg_sq" in state:
                v = local(state["exp_avg_sq"])  # under FSDP, this rank's shard (the caller combines ranks)
                if v.numel() == 0:  # a shard can be empty; v >= 0, so 0 is neutral for every statistic
                    v = torch.zeros(1, device=v.device)
                var_l1.append(v.sqrt().sum(dtype=torch.float32))
                var_max.append(v.max())  # sqrt is monotone: take it once, of the max
                mom_l1.append(local(state["exp_avg"]).abs().sum(dtype=torch.float32))
    if not var_l1:
        return None
    return torch.stack(
        [torch.stack(var_l1).sum(), torch.stack(var_max).max().float().sqrt(), torch.stack(mom_l1).sum()]
    )


class NonFiniteGuard:
    """What to do when a step's loss or gradient norm is NaN/Inf (the update is never applied).

    `stop`: raise at once. `skip`: drop the batch and go on, but stop after `max_consecutive`
    skipped steps in a row, since then training has diverged rather than hit one bad batch.
    """

    def __init__(self, policy: str, max_consecutive: int):
        self.policy, self.max_consecutive = policy, max_consecutive
        self.skipped = 0  # over the whole run
        self.in_a_row = 0

    def observe(self, finite: bool) -> str | None:
        """Record a step; return a reason to stop, or None."""
        if finite:
            self.in_a_row = 0
            return None
        self.skipped += 1
        self.in_a_row += 1
        if self.policy == "stop":
            return "monitor.on_nonfinite is stop"
        if self.in_a_row >= self.max_consecutive:
            return f"{self.in_a_row} non-finite steps in a row (monitor.max_consecutive_skips)"
        return None

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.in_a_row = int(state["skipped"]), int(state["in_a_row"])


def all_finite(params) -> bool:
    """One device reduction and one host sync for the whole model (checked before every save)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())
