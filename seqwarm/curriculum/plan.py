"""The composed curriculum: what one step trains, from every axis at once.

`Curriculum.at(step, tokens)` is the single place where a step's shape is decided: its length (a
function of the step), its batch in sequences (a function of the trained tokens), its packing and
its attention window. The trainer, `seqwarm plan` and `SequenceLengthWarmup` all ask it, through
`seqwarm.schedule.StepPlan`, so the schedule is computed in one place. A new axis adds a field to
`StepSpec` and a line to `at`.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqwarm.curriculum.schedules import BatchSchedule, SeqlenSchedule


@dataclass(frozen=True)
class StepSpec:
    """What one optimizer step trains."""

    seqlen: int
    """Length of the step's rows (inputs and targets)."""
    batch_size: int
    """Global batch, in sequences (rows), over all processes and micro-batches."""
    packing: str = "truncate"
    """How the rows are cut from full-length sequences (`curriculum.packing`)."""
    window: int | None = None
    """Attention window in tokens; None: full causal attention."""


class Curriculum:
    """Every axis of a config's curriculum section, composed: `curriculum.at(step, tokens) -> StepSpec`.

    `unit` is micro_batch_size x processes: a batch that changes does so in whole micro-batches.
    """

    def __init__(self, cfg, global_batch_size: int, unit: int = 1):
        self.length = SeqlenSchedule(cfg)
        self.batch = BatchSchedule(cfg, global_batch_size, unit)
        self.packing = cfg.packing
        self.seqlen_end = cfg.seqlen_end

    def at(self, step: int, tokens: int) -> StepSpec:
        """The step that starts after `step` steps and `tokens` trained tokens."""
        return StepSpec(seqlen=self.length(step), batch_size=self.batch(tokens), packing=self.packing)

    @property
    def full_length_step(self) -> int:
        """First step (0-based) whose rows are full length."""
        return self.length.full_length_step

    @property
    def varies_length(self) -> bool:
        """Whether the rows' length changes during the run (so a compiled model must take it as dynamic)."""
        return self.length.axis.varies

    @property
    def max_batch_size(self) -> int:
        return self.batch.global_batch_size
