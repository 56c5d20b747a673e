"""The curriculum's axes as the method's own parameter types (what a config's curriculum section builds),
GPT-3's batch-size warmup formula and the truncation of full-length rows. No torch, no config.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqwarm.curriculum.adaptive import Adaptive
from seqwarm.curriculum.pacing import Cosine, Linear, Pacing, Root, Sine, Stages


@dataclass(frozen=True)
class LengthAxis:
    """The length axis's parameters: no curriculum (`none`), SLW (`slw`, Section 4) or Shortformer's two
    stages (`shortformer`, Section 5.1). `CurriculumConfig.length_axis()` builds it from a config."""

    kind: str = "none"
    pacing: Pacing | Adaptive | None = None
    seqlen_start: int = 8
    seqlen_end: int | None = None
    multiple_of: int = 8

    @property
    def varies(self) -> bool:
        """Whether the length changes during the run (what `torch.compile` must be told)."""
        return self.pacing is not None

    @property
    def user_stages(self) -> bool:
        """SLW with stages the config lists (`pacing: discrete`), rather than a pacing function of T."""
        return self.kind == "slw" and isinstance(self.pacing, Stages)

    def describe(self) -> str:
        """How the length changes, in a message's words: `shortformer`, `pacing root`, ..."""
        if self.kind != "slw":
            return self.kind
        return "pacing " + PACING_NAMES[type(self.pacing)]

    @property
    def adaptive(self) -> bool:
        """Whether the pacing is closed-loop (its schedule depends on the run)."""
        return isinstance(self.pacing, Adaptive)


PACING_NAMES = {
    Linear: "linear",
    Root: "root",
    Stages: "discrete",
    Sine: "sine",
    Cosine: "cosine",
    Adaptive: "adaptive",
}


@dataclass(frozen=True)
class WindowAxis:
    """The attention-window axis: `none` (full causal attention), or a `warmup` of a sliding causal window from
    `window_start` keys to the full length by `pacing` (SkyLadder, 2025; modded-nanogpt's window warmup), over
    full-length rows. A window that covers the step's rows is full causal attention (`StepSpec.window` None)."""

    kind: str = "none"
    pacing: Pacing | Adaptive | None = None
    window_start: int = 32
    seqlen_end: int | None = None

    @property
    def varies(self) -> bool:
        return self.pacing is not None

    @property
    def adaptive(self) -> bool:
        return isinstance(self.pacing, Adaptive)


@dataclass(frozen=True)
class BatchAxis:
    """The batch axis's parameters: a `constant` batch, GPT-3's batch-size `warmup` from `batch_size_start`
    sequences over `warmup_tokens` trained tokens, or the tokens-`matched` control (`matched`: full-length rows,
    as many as SLW's step would train tokens)."""

    kind: str = "constant"
    batch_size_start: int | None = None
    warmup_tokens: int | None = None
    matched: bool = False


def matched_batch(target_tokens: int, seqlen_end: int, unit: int) -> int:
    """The tokens-matched control's batch: full-length sequences whose tokens are nearest to `target_tokens`
    (SLW's step: its paced length x the global batch), in whole units (micro_batch_size x processes), at least
    one unit. Ties round up (Python's round would round half to even, a step to a step, for no reason)."""
    per_unit = seqlen_end * unit
    units = (2 * target_tokens + per_unit) // (2 * per_unit)  # nearest, in integers
    return max(unit, units * unit)


def batch_size_warmup(tokens: int, batch_start: int, batch_end: int, warmup_tokens: int, unit: int) -> int:
    """GPT-3's batch-size warmup: linear in trained tokens from batch_start to batch_end (Brown et al.,
    2020, Appendix B; the paper's Section 5.1 baseline), rounded down to whole units, never below one.

    `unit` is micro_batch_size x data-parallel processes: every process runs whole micro-batches, so
    the batch can only grow in those steps (the limitation the paper notes for large clusters).
    """
    raw = batch_start + (batch_end - batch_start) * min(tokens / warmup_tokens, 1.0)
    return max(unit, int(raw) // unit * unit)


def truncate(batch, seqlen: int):
    """Full-length rows (B, seqlen_e + 1) -> inputs and targets (B, seqlen), shifted by one.

    Both come from the same prefix, so the target of input position i is always token i + 1 of
    the row, whatever the length. Any 2-D sliceable works (a torch tensor, a numpy array).
    """
    return batch[:, :seqlen], batch[:, 1 : seqlen + 1]
