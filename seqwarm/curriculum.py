"""Sequence Length Warmup as pure functions (paper, Section 4).

`seqlen = schedule(step)` is a function of the optimizer step alone, so a resumed run needs no
curriculum state, and `seqwarm plan` can print the whole schedule without training.

A batch is drawn as full-length sequences of `seqlen_end + 1` tokens, indexed once, and truncated
to the step's length (the paper's lightweight truncation: no re-indexing per length). A *segment*
`(start, n)` names the corpus span a row trains on: inputs `tokens[start : start + n]`, targets
`tokens[start + 1 : start + n + 1]`. Truncating a segment to `seqlen` leaves a *tail* segment,
which `drop_tail: false` serves in later steps, so that no token of the corpus is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqwarm.config import CurriculumConfig


def linear_pacing(step: int, seqlen_start: int, seqlen_end: int, duration: int) -> float:
    """seqlen_t = seqlen_s + (seqlen_e - seqlen_s) * min(t / T, 1)   (Section 4)."""
    return seqlen_start + (seqlen_end - seqlen_start) * min(step / duration, 1.0)


def root_pacing(step: int, seqlen_start: int, seqlen_end: int, duration: int, root_degree: float) -> float:
    """seqlen_t = seqlen_s + (seqlen_e - seqlen_s) * min(t / T, 1) ** (1 / r).

    The paper's text writes the exponent as r but calls r the root degree (Section 4); we follow
    the root reading, as DeepSpeed's `fixed_root` does: r = 2 grows fast early, then slows.
    """
    return seqlen_start + (seqlen_end - seqlen_start) * min(step / duration, 1.0) ** (1.0 / root_degree)


def discrete_pacing(step: int, stages: list[list[int]], seqlen_end: int) -> float:
    """Stages `[[until_step, seqlen], ...]`: steps before `until_step` use `seqlen`; then full length.

    Shortformer's 2-stage training (Press et al., 2021; paper Section 5.1) is `[[T, 128]]`.
    """
    for until_step, seqlen in stages:
        if step < until_step:
            return seqlen
    return seqlen_end


def round_seqlen(raw: float, multiple_of: int, seqlen_start: int, seqlen_end: int) -> int:
    """Round down to a multiple of `multiple_of` (Section 5.1: seqlen_t - seqlen_t mod 8), then clamp.

    The clamp comes after the rounding, so the length never falls below seqlen_start (DeepSpeed's
    rounding can), and once the pacing reaches seqlen_end the full length is used even if it is not
    itself a multiple.
    """
    if raw >= seqlen_end:
        return seqlen_end
    seqlen = int(raw) - int(raw) % multiple_of
    return max(seqlen_start, min(seqlen, seqlen_end))


@dataclass(frozen=True)
class SeqlenSchedule:
    """The training length at each step: `schedule(step) -> int`, step counted from 0. Pure; no state to save.

    Built from a config's curriculum section, or directly, for use in any training loop:

        schedule = SeqlenSchedule.linear(seqlen_start=8, seqlen_end=1024, duration=60_000)
        inputs, targets = truncate(rows, schedule(step))
    """

    cfg: CurriculumConfig

    @classmethod
    def linear(cls, *, seqlen_start: int, seqlen_end: int, duration: int, multiple_of: int = 8) -> SeqlenSchedule:
        """The paper's pacing (Section 4): seqlen_s + (seqlen_e - seqlen_s) * min(t / T, 1), T = duration."""
        return cls(
            CurriculumConfig(
                kind="slw",
                pacing="linear",
                seqlen_start=seqlen_start,
                seqlen_end=seqlen_end,
                duration=duration,
                multiple_of=multiple_of,
            )
        )

    @classmethod
    def root(
        cls, *, seqlen_start: int, seqlen_end: int, duration: int, root_degree: float = 2.0, multiple_of: int = 8
    ) -> SeqlenSchedule:
        """Root pacing (DeepSpeed's fixed_root): seqlen_s + (seqlen_e - seqlen_s) * min(t / T, 1) ** (1 / r)."""
        return cls(
            CurriculumConfig(
                kind="slw",
                pacing="root",
                seqlen_start=seqlen_start,
                seqlen_end=seqlen_end,
                duration=duration,
                root_degree=root_degree,
                multiple_of=multiple_of,
            )
        )

    @classmethod
    def discrete(cls, *, stages: list[list[int]], seqlen_end: int, multiple_of: int = 8) -> SeqlenSchedule:
        """Stages `[[until_step, seqlen], ...]`, then seqlen_end (Shortformer's two stages are `[[T, 128]]`)."""
        start = min(seqlen for _, seqlen in stages) if stages else multiple_of
        return cls(
            CurriculumConfig(
                kind="slw",
                pacing="discrete",
                stages=[list(s) for s in stages],
                seqlen_start=start,
                seqlen_end=seqlen_end,
                multiple_of=multiple_of,
            )
        )

    @classmethod
    def constant(cls, seqlen: int) -> SeqlenSchedule:
        """Every step at full length: the baseline."""
        return cls(CurriculumConfig(kind="none", seqlen_end=seqlen))

    def __call__(self, step: int) -> int:
        c = self.cfg
        if c.kind in ("none", "bsz_warmup"):
            return c.seqlen_end
        if c.kind == "shortformer":
            raw = discrete_pacing(step, [[c.duration, c.seqlen_start]], c.seqlen_end)
        elif c.pacing == "linear":
            raw = linear_pacing(step, c.seqlen_start, c.seqlen_end, c.duration)
        elif c.pacing == "root":
            raw = root_pacing(step, c.seqlen_start, c.seqlen_end, c.duration, c.root_degree)
        else:
            raw = discrete_pacing(step, c.stages, c.seqlen_end)
        return round_seqlen(raw, c.multiple_of, c.seqlen_start, c.seqlen_end)

    @property
    def full_length_step(self) -> int:
        """First step at full length (0 for the baseline)."""
        c = self.cfg
        if c.kind in ("none", "bsz_warmup"):
            return 0
        if c.kind == "shortformer":
            return c.duration
        if c.pacing == "discrete":
            return c.stages[-1][0]
        # Before T the raw length is below seqlen_end and rounding only lowers it.
        return c.duration


def batch_size_warmup(tokens: int, batch_start: int, batch_end: int, warmup_tokens: int, unit: int) -> int:
    """GPT-3's batch-size warmup: linear in trained tokens from batch_start to batch_end (Brown et al.,
    2020, Appendix B; the paper's Section 5.1 baseline), rounded down to whole units, never below one.

    `unit` is micro_batch_size x data-parallel processes: every process runs whole micro-batches, so
    the batch can only grow in those steps (the limitation the paper notes for large clusters).
    """
    raw = batch_start + (batch_end - batch_start) * min(tokens / warmup_tokens, 1.0)
    return max(unit, int(raw) // unit * unit)


@dataclass(frozen=True)
class BatchSchedule:
    """The global batch size of the step that starts at `tokens` trained tokens. Pure; no state to save."""

    cfg: CurriculumConfig
    global_batch_size: int
    unit: int  # micro_batch_size x world_size

    @classmethod
    def warmup(cls, *, batch_size_start: int, batch_size_end: int, warmup_tokens: int, unit: int = 1) -> BatchSchedule:
        """GPT-3's batch-size warmup from batch_size_start to batch_size_end sequences over warmup_tokens."""
        cfg = CurriculumConfig(kind="bsz_warmup", batch_size_start=batch_size_start, batch_warmup_tokens=warmup_tokens)
        return cls(cfg, batch_size_end, unit)

    @classmethod
    def constant(cls, batch_size: int) -> BatchSchedule:
        return cls(CurriculumConfig(kind="none"), batch_size, 1)

    def __call__(self, tokens: int) -> int:
        c = self.cfg
        if c.kind != "bsz_warmup":
            return self.global_batch_size
        return batch_size_warmup(tokens, c.batch_size_start, self.global_batch_size, c.batch_warmup_tokens, self.unit)


def truncate(batch: torch.Tensor, seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-length rows (B, seqlen_e + 1) -> inputs and targets (B, seqlen), shifted by one.

    Both come from the same prefix, so the target of input position i is always token i + 1 of
    the row, whatever the length.
    """
    return batch[:, :seqlen], batch[:, 1 : seqlen + 1]


__all__ = [
    "BatchSchedule",
    "SeqlenSchedule",
    "batch_size_warmup",
    "discrete_pacing",
    "linear_pacing",
    "root_pacing",
    "round_seqlen",
    "truncate",
]
