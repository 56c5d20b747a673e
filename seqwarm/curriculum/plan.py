"""The composed curriculum: what one step trains, from every axis at once.

`Curriculum.at(step, tokens)` is the single place where a step's shape is decided: its length (a
function of the step), its batch in sequences (a function of the trained tokens), its packing and
its attention window. The trainer, `seqwarm plan` and `SequenceLengthWarmup` all ask it, through
`seqwarm.schedule.StepPlan`, so the schedule is computed in one place. A new axis adds a field to
`StepSpec` and a line to `at`.

The one piece of state is closed-loop pacing's controller (`pacing: adaptive`, `seqwarm.curriculum.adaptive`):
`observe(signals)` after each step (the step plan's `observe`), `state_dict()` in every checkpoint. Every other
axis is a pure function of the step or of the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqwarm.curriculum.adaptive import AdaptiveController
from seqwarm.curriculum.axes import matched_batch
from seqwarm.curriculum.packing import melt_seqlen
from seqwarm.curriculum.schedules import BatchSchedule, SeqlenSchedule, WindowSchedule


@dataclass(frozen=True)
class StepSpec:
    """What one optimizer step trains."""

    seqlen: int
    """Length of the step's rows (inputs and targets)."""
    batch_size: int
    """Global batch, in full-length sequences drawn from the data, over all processes and micro-batches."""
    packing: str = "truncate"
    """How the rows are cut from full-length sequences (`curriculum.packing`)."""
    window: int | None = None
    """Attention window in tokens (each position sees itself and window - 1 before it); None: full causal attention
    (no window, or one that covers the rows)."""
    split: int = 1
    """Rows of `seqlen` made of each drawn sequence: seqlen_end / seqlen when melted, else 1. The step trains
    batch_size x split rows; a micro-batch holds micro_batch_size x split of them (the same tokens as unmelted)."""
    token_target: int | None = None
    """The tokens-matched control only: SLW's tokens for this step (paced length x global batch), which its
    full-length batch follows."""

    @property
    def rows(self) -> int:
        return self.batch_size * self.split

    @property
    def draw_length(self) -> int:
        """Targets drawn per sequence: the step's length, or the full length when it is melted."""
        return self.seqlen * self.split

    @property
    def full_tokens(self) -> int:
        """The step's target tokens when no row is a short tail (`drop_tail: true`)."""
        return self.batch_size * self.draw_length


class Curriculum:
    """Every axis of a config's curriculum section, composed: `curriculum.at(step, tokens) -> StepSpec`.

    `unit` is micro_batch_size x processes: a batch that changes does so in whole micro-batches.
    """

    def __init__(self, cfg, global_batch_size: int, unit: int = 1):
        self.length = SeqlenSchedule(cfg)
        self.batch = BatchSchedule(cfg, global_batch_size, unit)
        self.window = WindowSchedule(cfg)
        self.packing = cfg.packing
        self.melts = cfg.melts
        self.seqlen_end = cfg.seqlen_end
        self.multiple_of = cfg.multiple_of
        adaptive = [a for a in (self.length.axis, self.window.axis) if a.adaptive]
        self.adaptive_axis = adaptive[0] if adaptive else None
        self.controller = AdaptiveController(adaptive[0].pacing) if adaptive else None

    def _step_of(self, axis, step: int) -> float:
        """The step at which an axis's pacing is evaluated: the step, or the adaptive controller's virtual step."""
        return self.controller.virtual(step) if axis is self.adaptive_axis else step

    def at(self, step: int, tokens: int) -> StepSpec:
        """The step that starts after `step` steps and `tokens` trained tokens."""
        paced = self.length(self._step_of(self.length.axis, step))
        seqlen, batch, split, target = paced, self.batch(tokens), 1, None
        if self.batch.axis.matched:  # full-length rows, as many as SLW's tokens for this step
            target = paced * self.batch.global_batch_size
            seqlen, batch = self.seqlen_end, matched_batch(target, self.seqlen_end, self.batch.unit)
        elif self.melts:
            seqlen = melt_seqlen(paced, self.seqlen_end, self.multiple_of)
            split = self.seqlen_end // seqlen
        window = self.window(self._step_of(self.window.axis, step)) if self.window.axis.varies else None
        if window is not None and window >= seqlen:
            window = None  # a window over the whole row is full causal attention
        return StepSpec(seqlen, batch, self.packing, window, split, target)

    def observe(self, signals: dict) -> None:
        """After each step, its signals (`loss_ratio`): the adaptive controller's input; nothing otherwise."""
        if self.controller is not None:
            self.controller.observe(signals)

    @property
    def stateful(self) -> bool:
        """Whether the curriculum has state to checkpoint (closed-loop pacing)."""
        return self.controller is not None

    def state_dict(self) -> dict:
        return self.controller.state_dict() if self.controller is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.controller is not None and state:  # a state from before closed-loop pacing starts it afresh
            self.controller.load_state_dict(state)

    @property
    def full_length_step(self) -> int:
        """First step (0-based) whose rows are full length (for adaptive pacing: at the fastest)."""
        return 0 if self.batch.axis.matched else self.length.full_length_step

    @property
    def adaptive_bounds(self) -> tuple[int, int] | None:
        """(fastest, slowest) step at which the adaptive axis reaches full; None without adaptive pacing."""
        if self.adaptive_axis is None:
            return None
        return self.adaptive_axis.pacing.duration, self.adaptive_axis.pacing.max_duration

    @property
    def varies_length(self) -> bool:
        """Whether the rows' length changes during the run (so a compiled model must take it as dynamic)."""
        return self.length.axis.varies and not self.batch.axis.matched

    @property
    def varies_rows(self) -> bool:
        """Whether the rows of a micro-batch change in number (melted steps), so the batch dimension is dynamic too."""
        return self.melts and self.length.axis.varies

    @property
    def max_batch_size(self) -> int:
        return self.batch.global_batch_size
