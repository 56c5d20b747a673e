"""The `curriculum:` section of a config: its axes, their checks, and the key of seqwarm 0.2 (`kind`).

Each axis is chosen on its own and validated on its own; they combine:

- `length`: `none` (every step at full length), `slw` (Sequence Length Warmup, Section 4) or
  `shortformer` (Press et al., 2021: a short first stage, Section 5.1);
- `batch`: `constant`, `warmup` (GPT-3's batch-size warmup, Section 5.1), or `matched` (full-length rows, as many
  as SLW's step trains tokens: the control that separates SLW's short context from its small early batch);
- `packing`: how a short step is made of the full-length rows: `truncate` (the paper's) or `melt` (every row split
  into full/L rows of the step's length L, so tokens per step stay constant; `seqwarm.curriculum.packing`);
- `window`: the attention window: `none` (full causal attention) or `warmup` (a sliding causal window grown
  from `window_start` over full-length rows, SkyLadder-style).

`pacing: adaptive` (on the length or the window axis) is closed-loop: `seqwarm.curriculum.adaptive`.

seqwarm 0.2 had one exclusive `kind` (none, slw, shortformer, bsz_warmup). It is still read, from
configs, overrides (`curriculum.kind=slw`), saved runs and integration states, and sets both the length
and the batch axis as it always meant; reading `cfg.curriculum.kind` gives the name of the axes set
(`slw+bsz_warmup` for a combination 0.2 could not express). No yaml or torch here.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Literal

from seqwarm.curriculum.adaptive import Adaptive
from seqwarm.curriculum.axes import BatchAxis, LengthAxis, WindowAxis
from seqwarm.curriculum.pacing import Cosine, Linear, Root, Sine, Stages
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
    pacing: Literal["linear", "root", "discrete", "sine", "cosine", "adaptive"] = "linear"
    """How SLW grows the length: `linear` (the paper's), `root` (DeepSpeed's fixed_root), `discrete` stages, `sine`
    or `cosine` (SkyLadder's shapes), `adaptive` (linear over T, advanced only on stable steps; adaptive_* fields)."""
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
    packing: Literal["truncate", "melt"] = "truncate"
    """How a step shorter than seqlen_end is made of full-length rows: `truncate` (the paper's: each row cut to the
    step's length, so a short step trains fewer tokens) or `melt` (each row split into seqlen_end / L rows of length
    L, the largest divisor of seqlen_end that is a multiple of multiple_of and <= the paced length: every step trains
    the same tokens; OLMo-core's truncate=False)."""
    batch: Literal["constant", "warmup", "matched"] = "constant"
    """The batch axis. `constant`: train.global_batch_size every step. `warmup`: GPT-3's batch-size warmup, linear
    in trained tokens from batch_size_start to train.global_batch_size (Section 5.1). `matched`: full-length rows,
    as many (in whole micro-batches) as make the tokens SLW's step would train (the length axis's paced length x
    train.global_batch_size): the length axis sets the token target, the rows stay full length."""
    batch_size_start: int | None = None
    """batch warmup: global batch (sequences) at token 0 (GPT-3: 16 sequences of 2048 tokens = 32K tokens)."""
    batch_warmup_tokens: int | None = None
    """batch warmup: trained tokens over which the batch grows linearly to train.global_batch_size (GPT-3: 4B)."""
    window: Literal["none", "warmup"] = "none"
    """The attention window axis. `none`: full causal attention at every step. `warmup`: a sliding causal window (each
    position sees itself and the window - 1 before it) from window_start to seqlen_end by window_pacing."""
    window_start: int = 32
    """window warmup: the window at step 0, in tokens (SkyLadder starts at 32)."""
    window_pacing: Literal["linear", "root", "sine", "cosine", "adaptive"] = "linear"
    """window warmup: how the window grows (the length's pacings; `sine`/`cosine` SkyLadder's shapes; SkyLadder's
    released rule, +1 token every k steps from 32, is `linear` with window_duration = (seqlen_end - 32) x k)."""
    window_duration: int | None = None
    """window warmup: steps over which the window reaches seqlen_end."""
    adaptive_threshold: float = 1.05
    """adaptive pacing: a step is stable when its loss ratio (loss / minimum of earlier losses) is below this."""
    adaptive_patience: int = 5
    """adaptive pacing: after an unstable step, stable steps in a row before the pacing moves again (hysteresis)."""
    adaptive_max_duration: int | None = None
    """adaptive pacing: steps by which the axis reaches full regardless of the signal. Default: 2 x its duration."""
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
        self._check_window()
        self._check_adaptive()
        self._check_packing()
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
        if self.batch != "warmup":  # constant, or matched (no parameters of its own)
            return
        if self.batch_size_start is None or self.batch_size_start <= 0:
            raise ConfigError(
                f"curriculum.batch_size_start: a positive batch size is required for batch warmup, got {self.batch_size_start}"
            )
        if self.batch_warmup_tokens is None or self.batch_warmup_tokens <= 0:
            raise ConfigError(
                f"curriculum.batch_warmup_tokens: a positive token count is required for batch warmup, got {self.batch_warmup_tokens}"
            )

    def _check_window(self) -> None:
        if self.window == "none":
            return
        if self.window_start <= 0:
            raise ConfigError(f"curriculum.window_start: must be a positive number of tokens, got {self.window_start}")
        if self.window_duration is None or self.window_duration <= 0:
            raise ConfigError(
                f"curriculum.window_duration: steps over which the window grows, a positive integer, got {self.window_duration}"
            )
        if self.window_pacing == "root" and self.root_degree <= 0:
            raise ConfigError(f"curriculum.root_degree: must be positive, got {self.root_degree}")

    def _adaptive_duration(self) -> tuple[str, int] | None:
        """(field, T) of the axis whose pacing is adaptive, if one is."""
        if self.length == "slw" and self.pacing == "adaptive":
            return "curriculum.duration", self.duration
        if self.window == "warmup" and self.window_pacing == "adaptive":
            return "curriculum.window_duration", self.window_duration
        return None

    def _check_adaptive(self) -> None:
        if self.length == "slw" and self.pacing == "adaptive" and self.window == "warmup":
            if self.window_pacing == "adaptive":
                raise ConfigError(
                    "curriculum.window_pacing: adaptive pacing drives one axis at a time; the length is already "
                    "adaptive (set window_pacing to linear, or pacing to linear)"
                )
        which = self._adaptive_duration()
        if which is None:
            return
        if not self.adaptive_threshold > 1.0:
            raise ConfigError(
                f"curriculum.adaptive_threshold: a loss ratio above 1 (e.g. 1.05), got {self.adaptive_threshold}"
            )
        if self.adaptive_patience < 0:
            raise ConfigError(f"curriculum.adaptive_patience: must be >= 0, got {self.adaptive_patience}")
        field, duration = which
        if self.adaptive_max_duration is not None and self.adaptive_max_duration < duration:
            raise ConfigError(
                f"curriculum.adaptive_max_duration ({self.adaptive_max_duration}) must be >= {field} ({duration}): "
                "the slowest schedule cannot end before the fastest"
            )

    def _check_packing(self) -> None:
        if self.batch == "matched":
            if self.length == "none":
                raise ConfigError(
                    "curriculum.batch: matched follows SLW's tokens per step; set curriculum.length to slw or shortformer"
                )
            if self.packing != "truncate":
                raise ConfigError(
                    "curriculum.packing: melt keeps tokens per step constant, which the matched batch controls for; "
                    "use packing truncate with batch matched"
                )
        if self.packing == "melt" and not self.drop_tail:
            raise ConfigError(
                "curriculum.drop_tail: melt cuts no tails (every token of a row is trained in its step); remove "
                "drop_tail: false"
            )

    def check_lengths(self) -> None:
        """The checks that need seqlen_end (`Config` calls this once it has filled in the default)."""
        if self.window == "warmup" and self.window_start > self.seqlen_end:
            raise ConfigError(
                f"curriculum.window_start ({self.window_start}) must be <= curriculum.seqlen_end ({self.seqlen_end})"
            )
        if self.length == "none":
            return
        if self.packing == "melt":
            # Melted rows must tile a full-length row; the start is the shortest, and a stage trains at exactly its
            # length, so each must divide seqlen_end (packing.melt_seqlen floors the paced lengths between them).
            lengths = [self.seqlen_start] + [s[1] for s in (self.stages or []) if self.pacing == "discrete"]
            bad = [x for x in lengths if self.seqlen_end % x]
            if bad:
                raise ConfigError(
                    f"curriculum.seqlen_start: with packing melt every row is split into seqlen_end / L rows, so "
                    f"{bad[0]} must divide curriculum.seqlen_end ({self.seqlen_end})"
                )
        if self.seqlen_start > self.seqlen_end:
            raise ConfigError(
                f"curriculum.seqlen_start ({self.seqlen_start}) must be <= curriculum.seqlen_end ({self.seqlen_end})"
            )
        if self.length == "slw" and self.pacing == "discrete" and any(s[1] > self.seqlen_end for s in self.stages):
            raise ConfigError(f"curriculum.stages: a stage length exceeds curriculum.seqlen_end ({self.seqlen_end})")

    def check_batch(self, micro_batch_size: int, global_batch_size: int, processes: int = 1) -> None:
        """The checks that need the train section: the batch grows in whole micro-batches of every process."""
        if self.batch != "warmup":
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

    def _pacing(self, name: str, duration: int):
        if name == "root":
            return Root(duration, self.root_degree)
        if name == "adaptive":
            slowest = self.adaptive_max_duration or 2 * duration
            return Adaptive(duration, slowest, self.adaptive_threshold, self.adaptive_patience)
        return {"sine": Sine, "cosine": Cosine}.get(name, Linear)(duration)

    def length_axis(self) -> LengthAxis:
        if self.length == "none":
            return LengthAxis(seqlen_end=self.seqlen_end, multiple_of=self.multiple_of)
        if self.length == "shortformer":
            pacing = Stages(((self.duration, self.seqlen_start),))
        elif self.pacing == "discrete":
            pacing = Stages(tuple((int(a), int(b)) for a, b in self.stages))
        else:
            pacing = self._pacing(self.pacing, self.duration)
        return LengthAxis(self.length, pacing, self.seqlen_start, self.seqlen_end, self.multiple_of)

    def batch_axis(self) -> BatchAxis:
        if self.batch == "constant":
            return BatchAxis()
        if self.batch == "matched":
            return BatchAxis(self.batch, matched=True)
        return BatchAxis(self.batch, self.batch_size_start, self.batch_warmup_tokens)

    def window_axis(self) -> WindowAxis:
        if self.window == "none":
            return WindowAxis(seqlen_end=self.seqlen_end)
        pacing = self._pacing(self.window_pacing, self.window_duration)
        return WindowAxis(self.window, pacing, self.window_start, self.seqlen_end)

    @property
    def melts(self) -> bool:
        """Whether short steps are melted (tokens per step constant) rather than truncated."""
        return self.packing == "melt"


def _kind(self: CurriculumConfig) -> str:
    """seqwarm 0.2's name of this curriculum (`none`, `slw`, `shortformer`, `bsz_warmup`), or the axes set,
    joined by `+` (`slw+bsz_warmup`), for a combination it had no name for."""
    for name, axes in LEGACY_KINDS.items():
        if axes == (self.length, self.batch) and self.window == "none" and self.packing == "truncate":
            return name
    parts = [self.length] if self.length != "none" else []
    parts += ["bsz_warmup"] if self.batch == "warmup" else []
    parts += [f"batch={self.batch}"] if self.batch == "matched" else []
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
