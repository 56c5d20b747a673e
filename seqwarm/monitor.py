"""Training-stability instruments (paper, Section 3)."""

from __future__ import annotations

import math


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
