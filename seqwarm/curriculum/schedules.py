"""The axes as schedules, each a pure function: the length of a step, the batch size at a token count.

`seqlen = SeqlenSchedule(...)(step)` is a function of the optimizer step alone, so a resumed run
needs no curriculum state, and `seqwarm plan` can print the whole schedule without training.
`batch = BatchSchedule(...)(tokens)` is a function of the tokens trained so far (GPT-3's batch-size
warmup). The axes combine (`seqwarm.curriculum.plan.Curriculum`): SLW with batch-size warmup is
both at once. No torch here: a schedule is integer arithmetic.
"""

from __future__ import annotations

from seqwarm.curriculum.adaptive import Adaptive
from seqwarm.curriculum.axes import BatchAxis, LengthAxis, WindowAxis, batch_size_warmup
from seqwarm.curriculum.config import CurriculumConfig
from seqwarm.curriculum.pacing import Linear, Pacing, Root, Stages, round_seqlen


class SeqlenSchedule:
    """The training length at each step: `schedule(step) -> int`, step counted from 0. Pure; no state to save.

    Built from a config's curriculum section (`SeqlenSchedule(cfg.curriculum)`), a `LengthAxis`, or directly,
    for use in any training loop:

        schedule = SeqlenSchedule.linear(seqlen_start=8, seqlen_end=1024, duration=60_000)
        inputs, targets = truncate(rows, schedule(step))
    """

    def __init__(self, spec):
        self.axis: LengthAxis = spec if isinstance(spec, LengthAxis) else spec.length_axis()
        # Adaptive pacing is the paper's linear pacing at a virtual step that `Curriculum` computes from the run.
        self._curve = _open_loop(self.axis.pacing)

    @classmethod
    def linear(cls, *, seqlen_start: int, seqlen_end: int, duration: int, multiple_of: int = 8) -> SeqlenSchedule:
        """The paper's pacing (Section 4): seqlen_s + (seqlen_e - seqlen_s) * min(t / T, 1), T = duration."""
        return cls(_checked(Linear(duration), seqlen_start, seqlen_end, multiple_of))

    @classmethod
    def root(
        cls, *, seqlen_start: int, seqlen_end: int, duration: int, root_degree: float = 2.0, multiple_of: int = 8
    ) -> SeqlenSchedule:
        """Root pacing (DeepSpeed's fixed_root): seqlen_s + (seqlen_e - seqlen_s) * min(t / T, 1) ** (1 / r)."""
        return cls(_checked(Root(duration, root_degree), seqlen_start, seqlen_end, multiple_of))

    @classmethod
    def discrete(cls, *, stages: list[list[int]], seqlen_end: int, multiple_of: int = 8) -> SeqlenSchedule:
        """Stages `[[until_step, seqlen], ...]`, then seqlen_end (Shortformer's two stages are `[[T, 128]]`)."""
        start = min(seqlen for _, seqlen in stages) if stages else multiple_of
        return cls(_checked(Stages(tuple(tuple(s) for s in stages)), start, seqlen_end, multiple_of))

    @classmethod
    def constant(cls, seqlen: int) -> SeqlenSchedule:
        """Every step at full length: the baseline."""
        return cls(LengthAxis(seqlen_end=seqlen))

    def __call__(self, step: float) -> int:
        a = self.axis
        if a.pacing is None:
            return a.seqlen_end
        return round_seqlen(
            self._curve(step, a.seqlen_start, a.seqlen_end), a.multiple_of, a.seqlen_start, a.seqlen_end
        )

    @property
    def full_length_step(self) -> int:
        """First step at full length (0 for the baseline)."""
        return 0 if self.axis.pacing is None else self.axis.pacing.end_step


def _checked(pacing: Pacing, seqlen_start: int, seqlen_end: int, multiple_of: int) -> LengthAxis:
    """A length axis built directly (the library API), checked as a config would check it."""
    kw = {"seqlen_start": seqlen_start, "seqlen_end": seqlen_end, "multiple_of": multiple_of}
    if isinstance(pacing, Stages):
        cfg = CurriculumConfig(length="slw", pacing="discrete", stages=[list(s) for s in pacing.stages], **kw)
    elif isinstance(pacing, Root):
        cfg = CurriculumConfig(
            length="slw", pacing="root", duration=pacing.duration, root_degree=pacing.root_degree, **kw
        )
    else:
        cfg = CurriculumConfig(length="slw", pacing="linear", duration=pacing.duration, **kw)
    return cfg.length_axis()


def _open_loop(pacing):
    return Linear(pacing.duration) if isinstance(pacing, Adaptive) else pacing


class WindowSchedule:
    """The attention window at each step: `schedule(step) -> int` tokens, from window_start to seqlen_end by the
    axis's pacing, rounded down to a whole token (a mask takes any integer, so there is no multiple to keep);
    seqlen_end from the end of the pacing on. Pure, as `SeqlenSchedule`."""

    def __init__(self, spec):
        self.axis: WindowAxis = spec if isinstance(spec, WindowAxis) else spec.window_axis()
        self._curve = _open_loop(self.axis.pacing)

    def __call__(self, step: float) -> int:
        a = self.axis
        if a.pacing is None:
            return a.seqlen_end
        return round_seqlen(self._curve(step, a.window_start, a.seqlen_end), 1, a.window_start, a.seqlen_end)


class BatchSchedule:
    """The global batch size of the step that starts at `tokens` trained tokens. Pure; no state to save."""

    def __init__(self, spec, global_batch_size: int, unit: int = 1):
        self.axis: BatchAxis = spec if isinstance(spec, BatchAxis) else spec.batch_axis()
        self.global_batch_size = global_batch_size
        self.unit = unit  # micro_batch_size x world_size

    @classmethod
    def warmup(cls, *, batch_size_start: int, batch_size_end: int, warmup_tokens: int, unit: int = 1) -> BatchSchedule:
        """GPT-3's batch-size warmup from batch_size_start to batch_size_end sequences over warmup_tokens."""
        return cls(BatchAxis("warmup", batch_size_start, warmup_tokens), batch_size_end, unit)

    @classmethod
    def constant(cls, batch_size: int) -> BatchSchedule:
        return cls(BatchAxis(), batch_size, 1)

    @property
    def varies(self) -> bool:
        return self.axis.warmup_tokens is not None or self.axis.matched

    def __call__(self, tokens: int) -> int:
        a = self.axis
        if a.warmup_tokens is None:  # constant; the matched control is `Curriculum.at`'s (it needs the length)
            return self.global_batch_size
        return batch_size_warmup(tokens, a.batch_size_start, self.global_batch_size, a.warmup_tokens, self.unit)
