"""Run configuration: one dataclass per concern, YAML files and dotted command-line overrides.

Every field has a docstring below it. Each section checks its own fields in `__post_init__`, and
`Config` checks the fields that depend on each other, so a bad value fails before any training
starts, with a `ConfigError` whose message names the field (`seqwarm` prints it and exits 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seqwarm.config_sections import (  # noqa: F401 (SEED_MAX and the sections: their public home is seqwarm.config)
    SEED_MAX,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    ModelConfig,
    MonitorConfig,
    RunConfig,
    TrainConfig,
)
from seqwarm.curriculum.config import CurriculumConfig
from seqwarm.errors import ConfigError
from seqwarm.files import atomic_write
from seqwarm.runtime import check_precision

PACKAGED_CONFIGS = Path(__file__).parent / "configs"
"""The configs shipped with seqwarm; `seqwarm train tiny-slw` finds `tiny-slw.yaml` here."""


def shipped_config(name: str | Path) -> Path | None:
    """The config shipped with seqwarm under this name (`tiny-slw` or `tiny-slw.yaml`), if there is one."""
    if Path(name).parent != Path("."):  # a path with a directory is never a shipped name
        return None
    for candidate in (PACKAGED_CONFIGS / str(name), PACKAGED_CONFIGS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return None


def resolve_config(name: str | Path) -> Path:
    """A config file path, or the name of a config shipped with seqwarm (`seqwarm/configs/`)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = shipped_config(name)
    if shipped is None:
        names = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
        raise ConfigError(f"{name}: no such config file (shipped configs: {names})")
    return shipped


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        max_seqlen = self.model.gpt().max_seqlen
        cur = self.curriculum
        if cur.seqlen_end is None:
            cur.seqlen_end = max_seqlen
            cur.check_lengths()
        if cur.seqlen_end > max_seqlen:
            raise ConfigError(f"curriculum.seqlen_end ({cur.seqlen_end}) exceeds model.max_seqlen ({max_seqlen})")
        cur.check_batch(self.train.micro_batch_size, self.train.global_batch_size)
        check_precision(self.train.precision, self.train.device)
        if self.eval.batch_size is None:
            self.eval.batch_size = self.train.micro_batch_size
        if self.monitor.rewind and not self.checkpoint.every_steps:
            raise ConfigError("monitor.rewind: needs checkpoint.every_steps (a rewind goes back to a checkpoint)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- loading, overrides and type checks --------------------------------------------------------


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config — a path, or the name of a shipped one (`tiny-slw`) — or start from the defaults
    when path is None, and apply `a.b=value` overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path) if Path(path).exists() else shipped_config(path) or Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text, not a YAML config") from e
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from e
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a config is a mapping of sections (run, data, model, train, ...)")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        section, _, name = key.strip().partition(".")
        check_key(section, name)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: must be a mapping")
        raw[section][name] = yaml.safe_load(value) if value.strip() else None
    return config_from_dict(raw)


def config_from_dict(raw: dict) -> Config:
    sections = {}
    hints = typing.get_type_hints(Config)
    for section, values in raw.items():
        if section not in hints:
            check_key(section, "")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a mapping of fields")
        cls = hints[section]
        field_types = section_fields(cls)
        kwargs = {}
        for name, value in values.items():
            check_key(section, name)
            kwargs[name] = coerce(value, field_types[name], f"{section}.{name}")
        sections[section] = cls(**kwargs)
    return Config(**sections)


def save_config(cfg: Config, path: Path) -> None:
    """The resolved config as YAML (atomically: a crash leaves the old file or the new one)."""
    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def field_docs() -> dict[str, str]:
    """`section.field` -> its docstring, read from the source (for `--help`-style listings); the model's
    options from seqwarm/model.py, where `GPTConfig` declares them."""
    docs = {}
    for section, cls in typing.get_type_hints(Config).items():
        # The options' declarations first, so that a key the section declares itself (`vocab_size: auto`) wins.
        for source in (getattr(cls, "__options__", None), *reversed(cls.__mro__)):
            if dataclasses.is_dataclass(source):
                docs |= {f"{section}.{k}": v for k, v in _docstrings(source).items()}
    keys = set(_all_keys())
    return {k: v for k, v in docs.items() if k in keys}


def _docstrings(cls: type) -> dict[str, str]:
    """A dataclass's field -> the string literal below it in its class body (none for a generated class)."""
    import ast
    import inspect
    import textwrap

    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    return {
        a.target.id: b.value.value
        for a, b in zip(body, body[1:])
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
    }


def section_fields(cls: type) -> dict[str, Any]:
    """A section's keys and their types: its fields, and the keys it still reads from older configs
    (`dataclasses.InitVar`s such as `curriculum.kind`)."""
    hints = typing.get_type_hints(cls)
    return {
        name: hints[name].type if isinstance(hints[name], dataclasses.InitVar) else hints[name]
        for name in cls.__dataclass_fields__
    }


@functools.cache
def _all_keys() -> tuple[str, ...]:
    """Every `section.field`; computed once (type hints are slow, and every override checks its key)."""
    keys = []
    for f in dataclasses.fields(Config):
        keys += [f"{f.name}.{name}" for name in section_fields(typing.get_type_hints(Config)[f.name])]
    return tuple(keys)


def check_key(section: str, name: str) -> None:
    """Raise a ConfigError for an unknown `section` or `section.name`, suggesting the closest key."""
    key = f"{section}.{name}" if name else section
    keys = _all_keys()
    sections = {k.split(".")[0] for k in keys}
    if (name and key in keys) or (not name and section in sections):
        return
    pool = keys if name else sorted(sections)
    close = difflib.get_close_matches(key, pool, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"{key}: unknown config key{hint}")


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(str, typing.get_args(tp)))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is lossless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce(value, inner[0], where)
        for tp in inner:  # `int | Literal["auto"]`: the first type the value passes
            try:
                return coerce(value, tp, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {' or '.join(_describe(tp) for tp in inner)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        # YAML reads 1.5e9 or "157e9" as float/str; accept them when they are whole numbers.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 6e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp} for {where}")
