"""The `curriculum:` section of a config: its axes, their checks, and the key of seqwarm 0.2 (`kind`).

Each axis is chosen on its own and validated on its own; they combine:

- `length`: `none` (every step at full length), `slw` (Sequence Length Warmup, Section 4) or
  `shortformer` (Press et al., 2021: a short first stage, Section 5.1);
- `batch`: `constant`, or `warmup` (GPT-3's batch-size warmup, Section 5.1);
- `packing`: how a short step is made of the full-length rows: `truncate` (the paper's);
- `window`: the attention window: `none` (full causal attention).

seqwarm 0.2 had one exclusive `kind` (none, slw, shortformer, bsz_warmup). It is still read, from
configs, overrides (`curriculum.kind=slw`), saved runs and integration states, and sets both the length
and the batch axis as it always meant; reading `cfg.curriculum.kind` gives the name of the axes set
(`slw+bsz_warmup` for a combination 0.2 could not express). No yaml or torch here.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Literal

from seqwarm.curriculum.axes import BatchAxis, LengthAxis
from seqwarm.curriculum.pacing import Linear, Root, Stages
from seqwarm.errors import ConfigError, check_finite

LEGACY_KINDS = {
    "none": ("none", "constant"),
    "slw": ("slw", "constant"),
    "shortformer": ("shortformer", "constant"),
    "bsz_warmup": ("none", "warmup"),
}
"""seqwarm 0.2's `curriculum.kind` -> (length, batch)."""


@dataclass
class CurriculumConfig:
    length: Literal["none", "slw", "shortformer"] = "none"
    """The length axis. `none`: every step at full length (the baseline). `slw`: Sequence Length Warmup
    (Section 4). `shortformer`: seqlen_start for the first `duration` steps, then full length (Press et al., 2021)."""
    pacing: Literal["linear", "root", "discrete"] = "linear"
    """How SLW grows the length: `linear` (the paper's), `root` (DeepSpeed's fixed_root), `discrete` stages."""
    seqlen_start: int = 8
    """seqlen_s: length at step 0 (the paper: 8 for GPT-2 117M, 64 for 1.5B, 72 for GPT-3 125M; Shortformer: 128)."""
    seqlen_end: int | None = None
    """seqlen_e: the full length the data is indexed at and the length after warmup. Default: model.max_seqlen."""
    duration: int | None = None
    """T: steps over which SLW grows the length (linear and root pacing); Shortformer's first-stage steps."""
    root_degree: float = 2.0
    """r for root pacing: seqlen_s + (seqlen_e - seqlen_s) * min(t/T, 1) ** (1/r)."""
    stages: list[list[int]] | None = None
    """Discrete pacing: [[until_step, seqlen], ...]; steps < until_step use seqlen; after the last, seqlen_end."""
    multiple_of: int = 8
    """Round the length down to a multiple of this (Section 5.1: 8, for tensor cores)."""
    drop_tail: bool = True
    """True: drop the truncated part of each sequence (the paper). False: serve it in later steps."""
    packing: Literal["truncate"] = "truncate"
    """How a step shorter than seqlen_end is made of full-length rows: `truncate` (the paper's: each row cut to the
    step's length, so a short step trains fewer tokens)."""
    batch: Literal["constant", "warmup"] = "constant"
    """The batch axis. `constant`: train.global_batch_size every step. `warmup`: GPT-3's batch-size warmup, linear
    in trained tokens from batch_size_start to train.global_batch_size (Section 5.1)."""
    batch_size_start: int | None = None
    """batch warmup: global batch (sequences) at token 0 (GPT-3: 16 sequences of 2048 tokens = 32K tokens)."""
    batch_warmup_tokens: int | None = None
    """batch warmup: trained tokens over which the batch grows linearly to train.global_batch_size (GPT-3: 4B)."""
    window: Literal["none"] = "none"
    """The attention window axis. `none`: full causal attention at every step."""
    kind: InitVar[Literal["none", "slw", "shortformer", "bsz_warmup"] | None] = None
    """seqwarm 0.2's exclusive curriculum (none, slw, shortformer, bsz_warmup): sets `length` and `batch` as it
    meant then (bsz_warmup: length none, batch warmup). Read, never written."""

    def __post_init__(self, kind: str | None):
        if kind is not None:
            if kind not in LEGACY_KINDS:
                raise ConfigError(f"curriculum.kind: {kind!r} is not one of {', '.join(LEGACY_KINDS)}")
            self.length, self.batch = LEGACY_KINDS[kind]
        check_finite(self, "curriculum")
        if self.multiple_of <= 0:
            raise ConfigError(f"curriculum.multiple_of: must be a positive integer, got {self.multiple_of}")
        self._check_length()
        self._check_batch()
        if self.seqlen_end is not None:
            self.check_lengths()

    # --- each axis checked on its own ---------------------------------------------------------------

    def _check_length(self) -> None:
        if self.length == "none":
            return
        if self.seqlen_start <= 0:
            raise ConfigError(f"curriculum.seqlen_start: must be positive, got {self.seqlen_start}")
        if self.multiple_of > self.seqlen_start:
            raise ConfigError(
                f"curriculum.multiple_of ({self.multiple_of}) must not exceed curriculum.seqlen_start ({self.seqlen_start})"
            )
        if self.seqlen_start % self.multiple_of:
            # Section 5.1: every length a multiple of 8. Rounding the start up or down silently would
            # train at a length nobody asked for, so the config says which one it means.
            m, lo = self.multiple_of, self.seqlen_start - self.seqlen_start % self.multiple_of
            raise ConfigError(
                f"curriculum.seqlen_start ({self.seqlen_start}) must be a multiple of curriculum.multiple_of ({m}): "
                f"use {lo} or {lo + m}"
            )
        if self.length == "slw" and self.pacing == "discrete":
            if not self.stages:
                raise ConfigError("curriculum.stages: required for discrete pacing, e.g. [[20000, 128]]")
            if any(len(s) != 2 or s[0] <= 0 or s[1] <= 0 for s in self.stages):
                raise ConfigError("curriculum.stages: each stage is [until_step > 0, seqlen > 0]")
            if any(a[0] >= b[0] for a, b in zip(self.stages, self.stages[1:])):
                raise ConfigError("curriculum.stages: until_step values must increase")
            bad = [s[1] for s in self.stages if s[1] % self.multiple_of or s[1] < self.seqlen_start]
            if bad:
                raise ConfigError(
                    f"curriculum.stages: stage length {bad[0]} must be a multiple of curriculum.multiple_of "
                    f"({self.multiple_of}) and >= curriculum.seqlen_start ({self.seqlen_start}); a stage trains at "
                    "exactly its length"
                )
            return
        what = "Shortformer's first-stage steps" if self.length == "shortformer" else "T"
        if self.duration is None or self.duration <= 0:
            raise ConfigError(f"curriculum.duration: {what} must be a positive number of steps, got {self.duration}")
        if self.length == "slw" and self.pacing == "root" and self.root_degree <= 0:
            raise ConfigError(f"curriculum.root_degree: must be positive, got {self.root_degree}")

    def _check_batch(self) -> None:
        if self.batch == "constant":
            return
        if self.batch_size_start is None or self.batch_size_start <= 0:
            raise ConfigError(
                f"curriculum.batch_size_start: a positive batch size is required for batch warmup, got {self.batch_size_start}"
            )
        if self.batch_warmup_tokens is None or self.batch_warmup_tokens <= 0:
            raise ConfigError(
                f"curriculum.batch_warmup_tokens: a positive token count is required for batch warmup, got {self.batch_warmup_tokens}"
            )

    def check_lengths(self) -> None:
        """The checks that need seqlen_end (`Config` calls this once it has filled in the default)."""
        if self.length == "none":
            return
        if self.seqlen_start > self.seqlen_end:
            raise ConfigError(
                f"curriculum.seqlen_start ({self.seqlen_start}) must be <= curriculum.seqlen_end ({self.seqlen_end})"
            )
        if self.length == "slw" and self.pacing == "discrete" and any(s[1] > self.seqlen_end for s in self.stages):
            raise ConfigError(f"curriculum.stages: a stage length exceeds curriculum.seqlen_end ({self.seqlen_end})")

    def check_batch(self, micro_batch_size: int, global_batch_size: int, processes: int = 1) -> None:
        """The checks that need the train section: the batch grows in whole micro-batches of every process."""
        if self.batch == "constant":
            return
        unit = micro_batch_size * processes
        if not micro_batch_size <= self.batch_size_start <= global_batch_size:
            raise ConfigError(
                f"curriculum.batch_size_start ({self.batch_size_start}) must lie between train.micro_batch_size "
                f"({micro_batch_size}) and train.global_batch_size ({global_batch_size})"
            )
        if self.batch_size_start % unit:
            # The batch grows in whole micro-batches; a start between two would silently train the one below.
            who = f"processes x train.micro_batch_size ({processes} x {micro_batch_size} = {unit})"
            if processes == 1:
                who = f"train.micro_batch_size ({micro_batch_size})"
            raise ConfigError(
                f"curriculum.batch_size_start ({self.batch_size_start}) must be a multiple of {who}: the batch grows "
                "in whole micro-batches" + (" per process" if processes > 1 else "")
            )

    # --- the axes as the method's own parameter types ---------------------------------------------------

    def length_axis(self) -> LengthAxis:
        if self.length == "none":
            return LengthAxis(seqlen_end=self.seqlen_end, multiple_of=self.multiple_of)
        if self.length == "shortformer":
            pacing = Stages(((self.duration, self.seqlen_start),))
        elif self.pacing == "discrete":
            pacing = Stages(tuple((int(a), int(b)) for a, b in self.stages))
        elif self.pacing == "root":
            pacing = Root(self.duration, self.root_degree)
        else:
            pacing = Linear(self.duration)
        return LengthAxis(self.length, pacing, self.seqlen_start, self.seqlen_end, self.multiple_of)

    def batch_axis(self) -> BatchAxis:
        if self.batch == "constant":
            return BatchAxis()
        return BatchAxis(self.batch, self.batch_size_start, self.batch_warmup_tokens)


def _kind(self: CurriculumConfig) -> str:
    """seqwarm 0.2's name of this curriculum (`none`, `slw`, `shortformer`, `bsz_warmup`), or the axes set,
    joined by `+` (`slw+bsz_warmup`), for a combination it had no name for."""
    for name, axes in LEGACY_KINDS.items():
        if axes == (self.length, self.batch) and self.window == "none" and self.packing == "truncate":
            return name
    parts = [self.length] if self.length != "none" else []
    parts += ["bsz_warmup"] if self.batch == "warmup" else []
    parts += [f"packing={self.packing}"] if self.packing != "truncate" else []
    parts += [f"window={self.window}"] if self.window != "none" else []
    return "+".join(parts) or "none"


# Set after the class is made: the dataclass took `kind`'s default (None) for __init__ already, and a
# property of the same name in the class body would have become that default instead.
CurriculumConfig.kind = property(_kind)


def slw_overrides(seqlen_start: int, duration: int, *, root: bool = False) -> dict:
    """The curriculum fields that make a section SLW with these settings (tune's probes and its recommendation):
    linear pacing unless `root` keeps root pacing; no stages."""
    return {
        "length": "slw",
        "pacing": "root" if root else "linear",
        "seqlen_start": seqlen_start,
        "duration": duration,
        "stages": None,
    }


def length_warmup_section(**fields) -> dict:
    """A curriculum section (raw, as in YAML) with SLW on the length axis and these fields
    (`SequenceLengthWarmup`'s constructor arguments)."""
    return {"length": "slw", **fields}
