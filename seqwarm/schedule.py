"""The token clock, the learning-rate schedule, the stopping rule, and the step plan that joins them to
the curriculum.

One clock drives everything: `tokens` counts the target tokens actually trained on (after
truncation, padding excluded), summed over the global batch. SLW trains fewer tokens per step early
on, so the paper stops on tokens and decays the LR over tokens (Section 5.1, Appendix A.2): with a
step-wise decay, SLW would decay faster per token than the baseline and lose the comparison.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from seqwarm.curriculum.plan import Curriculum, StepSpec


@dataclass(frozen=True)
class LRSchedule:
    """The LR schedule and the stopping rule: the method's own parameter type (`TrainConfig.lr_schedule()`
    builds one; any object with these attributes, a `TrainConfig` included, is accepted where one is)."""

    lr: float
    min_lr: float = 0.0
    warmup_steps: int = 0
    warmup_tokens: int = 0
    lr_decay_style: str = "cosine"
    lr_decay_unit: str = "tokens"
    decay_tokens: int | None = None
    decay_steps: int | None = None
    max_tokens: int | None = None
    max_steps: int | None = None


@dataclass
class Clock:
    """Where training is. Saved in every checkpoint and written in every log row."""

    step: int = 0
    """Optimizer steps completed."""
    tokens: int = 0
    """Target tokens trained on so far, global batch."""
    decay_start_tokens: int | None = None
    """Tokens trained when a step-wise warmup ended: where a token-wise decay starts (as in Megatron-LM)."""

    def tick(self, tokens: int, cfg: LRSchedule) -> None:
        """Count one optimizer step that trained `tokens` tokens."""
        self.step += 1
        self.tokens += tokens
        if cfg.warmup_steps and self.step >= cfg.warmup_steps and self.decay_start_tokens is None:
            self.decay_start_tokens = self.tokens

    def after(self, tokens: int, cfg: LRSchedule) -> Clock:
        """The clock as it will read once a step of `tokens` tokens is done (the LR uses it)."""
        nxt = replace(self)
        nxt.tick(tokens, cfg)
        return nxt

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.decay_start_tokens = state["decay_start_tokens"]


def learning_rate(clock: Clock, cfg: LRSchedule) -> float:
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


def finished(clock: Clock, cfg: LRSchedule) -> bool:
    """Stop on tokens (runs compare at equal tokens, Section 5.1) or on steps, whichever comes first."""
    if cfg.max_tokens is not None and clock.tokens >= cfg.max_tokens:
        return True
    return cfg.max_steps is not None and clock.step >= cfg.max_steps


class StepPlan:
    """One step, in the one order every consumer follows: the curriculum's `StepSpec` for the clock ->
    the step's tokens (served by the loader, simulated by `seqwarm plan`, counted by an integration) ->
    the LR of its update (`learning_rate(clock.after(tokens))`) -> the clock's tick.

    The trainer, `seqwarm plan` and `SequenceLengthWarmup` each drive one, so a step's length, batch,
    tokens and LR are computed by the same code in all three (`tests/test_step_plan.py`). With closed-loop pacing
    each also calls `observe` after the tick with the step's loss ratio (`seqwarm plan` with a stable one).
    """

    def __init__(self, curriculum: Curriculum, schedule: LRSchedule, clock: Clock | None = None):
        self.curriculum, self.schedule = curriculum, schedule
        self.clock = clock if clock is not None else Clock()

    def spec(self) -> StepSpec:
        """What the next step trains (a function of the clock)."""
        return self.curriculum.at(self.clock.step, self.clock.tokens)

    def spec_after(self, tokens: int) -> StepSpec:
        """What the step after the next one trains, if the next one trains `tokens` (for prefetching)."""
        return self.curriculum.at(self.clock.step + 1, self.clock.tokens + tokens)

    def lr(self, tokens: int) -> float:
        """The LR of the next step's update, which trains `tokens` tokens."""
        return learning_rate(self.clock.after(tokens, self.schedule), self.schedule)

    def tick(self, tokens: int) -> None:
        """Close the step: it trained `tokens` tokens (0 for an update that was not applied)."""
        self.clock.tick(tokens, self.schedule)

    def observe(self, signals: dict) -> None:
        """After the tick, the step's signals (`loss_ratio`, ...) for closed-loop pacing; the next `spec()` follows
        them. The curriculum's only state (`Curriculum.state_dict`), saved beside the clock."""
        self.curriculum.observe(signals)

    @property
    def finished(self) -> bool:
        return finished(self.clock, self.schedule)
