"""The token clock, the learning-rate schedule and the stopping rule.

One clock drives everything: `tokens` counts the target tokens actually trained on (after
truncation, padding excluded), summed over the global batch. SLW trains fewer tokens per step early
on, so the paper stops on tokens and decays the LR over tokens (Section 5.1, Appendix A.2): with a
step-wise decay, SLW would decay faster per token than the baseline and lose the comparison.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from seqwarm.config import TrainConfig


@dataclass
class Clock:
    """Where training is. Saved in every checkpoint and written in every log row."""

    step: int = 0
    """Optimizer steps completed."""
    tokens: int = 0
    """Target tokens trained on so far, global batch."""
    decay_start_tokens: int | None = None
    """Tokens trained when a step-wise warmup ended: where a token-wise decay starts (as in Megatron-LM)."""

    def tick(self, tokens: int, cfg: TrainConfig) -> None:
        """Count one optimizer step that trained `tokens` tokens."""
        self.step += 1
        self.tokens += tokens
        if cfg.warmup_steps and self.step >= cfg.warmup_steps and self.decay_start_tokens is None:
            self.decay_start_tokens = self.tokens

    def after(self, tokens: int, cfg: TrainConfig) -> Clock:
        """The clock as it will read once a step of `tokens` tokens is done (the LR uses it)."""
        nxt = replace(self)
        nxt.tick(tokens, cfg)
        return nxt

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.decay_start_tokens = state["decay_start_tokens"]


def learning_rate(clock: Clock, cfg: TrainConfig) -> float:
    """LR for the update that brings training to `clock` (use `Clock.after`).

    Linear warmup over `warmup_steps` or `warmup_tokens`, so the first update already has a
    non-zero LR, then a decay from `lr` to `min_lr` that ends at `lr_decay_tokens` (token-wise) or
    `lr_decay_steps` (step-wise) and stays at `min_lr` after.
    """
    if cfg.warmup_tokens and clock.tokens < cfg.warmup_tokens:
        return cfg.lr * clock.tokens / cfg.warmup_tokens
    if cfg.warmup_steps and clock.step < cfg.warmup_steps:
        return cfg.lr * clock.step / cfg.warmup_steps
    if cfg.lr_decay_unit == "tokens":
        # The decay starts where the warmup ended: at warmup_tokens, or at the tokens trained by the
        # end of a step-wise warmup, which depend on the curriculum and so are recorded by the clock.
        origin = cfg.warmup_tokens or (clock.decay_start_tokens if cfg.warmup_steps else 0)
        done, total = clock.tokens - origin, cfg.decay_tokens - origin
    else:
        done, total = clock.step - cfg.warmup_steps, cfg.decay_steps - cfg.warmup_steps
    progress = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
    if cfg.lr_decay_style == "constant":
        factor = 1.0
    elif cfg.lr_decay_style == "linear":
        factor = 1.0 - progress
    else:  # single-cycle cosine (Sections 3 and 5)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * factor


def finished(clock: Clock, cfg: TrainConfig) -> bool:
    """Stop on tokens (runs compare at equal tokens, Section 5.1) or on steps, whichever comes first."""
    if cfg.max_tokens is not None and clock.tokens >= cfg.max_tokens:
        return True
    return cfg.max_steps is not None and clock.step >= cfg.max_steps
