"""The curriculum's axes as the method's own parameter types (what a config's curriculum section builds),
GPT-3's batch-size warmup formula and the truncation of full-length rows. No torch, no config.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqwarm.curriculum.pacing import Linear, Pacing, Root, Stages


@dataclass(frozen=True)
class LengthAxis:
    """The length axis's parameters: no curriculum (`none`), SLW (`slw`, Section 4) or Shortformer's two
    stages (`shortformer`, Section 5.1). `CurriculumConfig.length_axis()` builds it from a config."""

    kind: str = "none"
    pacing: Pacing | None = None
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
        return "pacing " + {Linear: "linear", Root: "root", Stages: "discrete"}[type(self.pacing)]


@dataclass(frozen=True)
class BatchAxis:
    """The batch axis's parameters: a `constant` batch, or GPT-3's batch-size `warmup` from
    `batch_size_start` sequences over `warmup_tokens` trained tokens."""

    kind: str = "constant"
    batch_size_start: int | None = None
    warmup_tokens: int | None = None


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
