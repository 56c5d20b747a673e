"""The tuner's knobs: `tune.field=value` on the command line, checked when parsed. Defaults are the paper's (Section 4)."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import yaml

from seqwarm.config import coerce
from seqwarm.errors import ConfigError


@dataclass
class TuneSettings:
    """The tuner's knobs (`tune.field=value` on the command line). Defaults are the paper's."""

    factor: float = 1.3
    """A validation perplexity above factor x the best one before it is a significant fluctuation (Section 4: 1.3)."""
    seqlen_candidates: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    """Steps 1-2: seqlen_s values, increasing; the smallest is tried first (Section 4: 8). Values >= seqlen_end are skipped."""
    t_start_warmups: float = 4.0
    """Step 1: T of the seqlen_s probes, in LR warmups ("a few multiples of LR warmup steps")."""
    begin_warmups: float = 1.0
    """Step 2's window, "the very beginning": the first begin_warmups x LR warmup steps (seqlen_s probes train that long)."""
    horizon_warmups: float = 10 / 3
    """Step 3's window and the T probes' length, in LR warmups (the paper: the first 10K steps with a 3K-step warmup)."""
    horizon_steps: int | None = None
    """Step 3's window in steps, instead of horizon_warmups; required when the config has no LR warmup."""
    t_min: int | None = None
    """Smallest T searched, in steps. Default: one LR warmup."""
    t_max: int | None = None
    """Largest T searched, in steps. Default: the full run's steps at full length (its baseline's step count)."""
    t_step: int | None = None
    """Resolution of T: the search runs over t_min, t_min + t_step, ... <= t_max. Default: one LR warmup."""
    eval_every_steps: int | None = None
    """Validate at least every this many steps in a probe. Default: a tenth of the LR warmup, at least 1."""
    eval_sequences: int | None = None
    """Full-length validation sequences per probe evaluation (the split's first ones). Default: eval.max_sequences."""

    def __post_init__(self):
        if not self.factor > 1.0:
            raise ConfigError(f"tune.factor: must be > 1 (a ratio to the best perplexity so far), got {self.factor}")
        c = self.seqlen_candidates
        if not c:
            raise ConfigError("tune.seqlen_candidates: the search range is empty")
        if any(s <= 0 for s in c) or any(a >= b for a, b in zip(c, c[1:])):
            raise ConfigError(f"tune.seqlen_candidates: need positive, strictly increasing lengths, got {c}")
        for name in ("t_start_warmups", "begin_warmups", "horizon_warmups"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"tune.{name}: must be positive, got {getattr(self, name)}")
        for name in ("horizon_steps", "t_min", "t_max", "t_step", "eval_every_steps", "eval_sequences"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"tune.{name}: must be positive, got {value}")
        if self.t_min is not None and self.t_max is not None and self.t_min > self.t_max:
            raise ConfigError(f"tune.t_min ({self.t_min}) > tune.t_max ({self.t_max}): the T bounds are inverted")


def parse_settings(items: Sequence[str]) -> TuneSettings:
    """`tune.field=value` overrides (YAML values) -> TuneSettings; an unknown field is a ConfigError."""
    hints = typing.get_type_hints(TuneSettings)
    names = [f.name for f in fields(TuneSettings)]
    kwargs = {}
    for item in items:
        key, _, text = item.partition("=")
        name = key.strip().removeprefix("tune.")
        if name not in names:
            raise ConfigError(f"tune.{name}: unknown tune setting (known: {', '.join(names)})")
        value = yaml.safe_load(text) if text.strip() else None
        kwargs[name] = coerce(value, hints[name], f"tune.{name}")
    return TuneSettings(**kwargs)
