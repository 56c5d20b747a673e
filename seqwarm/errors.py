"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

import dataclasses
import math


class SeqwarmError(Exception):
    """Base class: bad input detected before any training starts."""


class ConfigError(SeqwarmError):
    """A config field, override or YAML file is invalid. The message names the field."""


class DataError(SeqwarmError):
    """A data path, token file or corpus source is missing, empty or corrupted."""


class DivergedError(SeqwarmError):
    """Training stopped on a non-finite loss or gradient (`monitor.on_nonfinite`); the message names the last checkpoint.

    Not a mistake in the input but an outcome: `seqwarm sweep` records it and goes on with the grid.
    """


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def check_finite(section: object, name: str) -> None:
    """ConfigError for a NaN or infinite float field of a config section: each passes or fails every
    comparison in the wrong way (`nan <= 0` is false, so `x <= 0` checks let it through)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}.{f.name}: must be a finite number, got {value}")
