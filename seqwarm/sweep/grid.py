"""The grid of a sweep: its axes, read from a sweep file and `--grid`, and the runs they span.

Nothing here trains or writes: `build_cells` builds and validates every run's config, so a bad
value fails before the first run starts, naming the field.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqwarm.config import Config, check_key, load_config, resolve_config
from seqwarm.errors import ConfigError

METHOD = "method"
CURRICULUM_KEYS = ("curriculum.length", "curriculum.batch", "curriculum.kind")
"""Grid keys that name a method when there is no `method` axis (`curriculum.kind`: seqwarm 0.2's)."""


@dataclass(frozen=True)
class Axis:
    """One dimension of the grid: a config field and its values, or the named `method` bundles."""

    key: str
    values: tuple[str, ...]  # override texts of a field's values, or the method names
    bundles: dict[str, tuple[str, ...]] = field(default_factory=dict)  # method name -> overrides

    def overrides(self, value: str) -> list[str]:
        return list(self.bundles[value]) if self.key == METHOD else [f"{self.key}={value}"]


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    name: str
    coords: dict[str, Any]  # axis key -> the value the config resolved (the method's name for `method`)
    cfg: Config

    @property
    def dir(self) -> Path:
        return Path(self.cfg.run.dir)


@dataclass
class Sweep:
    config: str | None  # the base training config (None: seqwarm's defaults)
    overrides: list[str]
    axes: list[Axis]
    out: Path | None = None  # the report's directory
    # Where the run directories live (default: `out`). Sweeps that share it share the runs they
    # have in common (same name, same config): proxy-grid and proxy-controls both need the baseline.
    runs: Path | None = None


def _text(value: Any) -> str:
    """An override text for a YAML value (JSON is YAML: strings, numbers, lists, null)."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_grid(item: str) -> Axis:
    """`train.lr=[1e-3, 2e-3]` -> Axis (the values stay as written: YAML 1.1 reads 1e-3 as a string)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"--grid {item!r}: expected section.field=[value, ...]")
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError:
        values = None
    if not isinstance(values, list):
        raise ConfigError(f"--grid {key}: expected a list of values such as [1, 2], got {text!r}")
    return field_axis(key, values)


def field_axis(key: str, values: list) -> Axis:
    if key == METHOD:
        raise ConfigError("--grid method: methods are defined by a sweep file's `methods:` mapping")
    section, _, name = key.partition(".")
    check_key(section, name)
    if not values:
        raise ConfigError(f"grid {key}: the list of values is empty")
    texts = tuple(_text(v) for v in values)
    if len(set(texts)) != len(texts):
        raise ConfigError(f"grid {key}: a value is listed twice")
    return Axis(key, texts)


def method_axis(methods: dict) -> Axis:
    if not isinstance(methods, dict) or not methods:
        raise ConfigError("sweep.methods: expected a non-empty mapping of method name -> {section.field: value}")
    bundles = {}
    for name, overrides in methods.items():
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"sweep.methods.{name}: expected a mapping of section.field: value")
        for key in overrides:
            section, _, fname = str(key).partition(".")
            check_key(section, fname)
        bundles[str(name)] = tuple(f"{k}={_text(v)}" for k, v in overrides.items())
    return Axis(METHOD, tuple(bundles), bundles)


def load_sweep_file(path: Path) -> Sweep:
    """A sweep file: `sweep: {config, overrides, out, runs, grid: {field: [values]}, methods: {name: {field: value}}}`."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the sweep file ({e})") from e
    spec = raw.get("sweep") if isinstance(raw, dict) else None
    if not isinstance(spec, dict) or set(raw) != {"sweep"}:
        raise ConfigError(f"{path}: a sweep file has a single top-level `sweep:` mapping")
    unknown = set(spec) - {"config", "overrides", "out", "runs", "grid", "methods"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown sweep key(s) {', '.join(sorted(unknown))} (config, overrides, out, runs, grid, methods)"
        )
    config = spec.get("config")
    if config is not None:
        local = path.parent / config
        config = str(local if local.exists() else resolve_config(config))
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: sweep.overrides is a mapping of section.field: value")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: sweep.grid is a mapping of section.field: [values]")
    axes = []
    for key, values in grid.items():
        if not isinstance(values, list):
            raise ConfigError(f"{path}: sweep.grid.{key} must be a list of values")
        axes.append(field_axis(str(key), values))
    if "methods" in spec:
        axes.append(method_axis(spec["methods"]))  # innermost: each cell's methods run back to back
    return Sweep(
        config=config,
        overrides=[f"{k}={_text(v)}" for k, v in overrides.items()],
        axes=axes,
        out=Path(spec["out"]) if spec.get("out") else None,
        runs=Path(spec["runs"]) if spec.get("runs") else None,
    )


def is_sweep_file(path: str | Path) -> bool:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "sweep" in raw


def merge_axes(axes: list[Axis], extra: list[Axis]) -> list[Axis]:
    """Command-line axes replace the file's axis of the same field, or are appended."""
    out = list(axes)
    for axis in extra:
        keys = [a.key for a in out]
        if axis.key in keys:
            out[keys.index(axis.key)] = axis
        else:
            out.append(axis)
    return out


def command_line_sweep(target: str | None, overrides: Sequence[str], grids: Sequence[str], out: str | None) -> Sweep:
    """`seqwarm sweep CONFIG|SWEEP_FILE [overrides] --grid ... [--out DIR]` -> the Sweep, its `out` resolved.

    The command line adds to a sweep file's overrides and replaces its axis of the same field; the
    output directory is `--out`, else the file's `out`, else runs/sweep-STEM.
    """
    if target is not None and is_sweep_file(target):
        sweep = load_sweep_file(Path(target))
    else:
        sweep = Sweep(config=target, overrides=[], axes=[])
    sweep.overrides += list(overrides)
    sweep.axes = merge_axes(sweep.axes, [parse_grid(g) for g in grids])
    if out is not None:
        sweep.out = Path(out)
    elif sweep.out is None:
        sweep.out = Path("runs") / f"sweep-{Path(target).stem if target else 'defaults'}"
    return sweep


def short_keys(axes: list[Axis]) -> dict[str, str]:
    """`train.lr` -> `lr` unless two axes end alike."""
    last = [a.key.rpartition(".")[2] for a in axes]
    return {a.key: (s if last.count(s) == 1 else a.key) for a, s in zip(axes, last)}


def format_value(value: Any) -> str:
    """A coordinate as it appears in a run's name and the report (`0.003`, `slw`), safe in a path."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text.replace("/", "-").replace(" ", "")


def _resolved(cfg: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def build_cells(sweep: Sweep, out: Path) -> list[Cell]:
    """Every run of the grid, its config built and validated (nothing is trained or written); the
    runs live in `sweep.runs`, else in `out`."""
    if not sweep.axes:
        raise ConfigError(
            "sweep: no grid; give at least one --grid section.field=[...] (or a sweep file with grid/methods)"
        )
    keys = [a.key for a in sweep.axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"sweep: an axis is given twice ({', '.join(keys)})")
    method = next((a for a in sweep.axes if a.key == METHOD), None)
    for name, bundle in (method.bundles if method else {}).items():
        clash = {o.partition("=")[0] for o in bundle} & set(keys)
        if clash:
            raise ConfigError(f"sweep.methods.{name}: sets {', '.join(sorted(clash))}, which is also a grid axis")
    short = short_keys(sweep.axes)
    cells = []
    for values in itertools.product(*(a.values for a in sweep.axes)):
        overrides = [o for a, v in zip(sweep.axes, values) for o in a.overrides(v)]
        cfg = load_config(sweep.config, [*sweep.overrides, *overrides])
        # Named by the values the config resolved, so `1e-3` and `0.001` name the same run.
        coords = {a.key: (v if a.key == METHOD else _resolved(cfg, a.key)) for a, v in zip(sweep.axes, values)}
        name = "__".join(f"{short[k]}={format_value(v)}" for k, v in coords.items())
        cfg.run.dir = str((sweep.runs or out) / name)
        cells.append(Cell(name, coords, cfg))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError("sweep: two grid values resolve to the same setting (e.g. 1e-3 and 0.001)")
    return cells


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard I/N` as (I, N), 1 <= I <= N: this process trains every N-th run of the grid, from the I-th."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i = n = 0
    if not 1 <= i <= n:
        raise ConfigError(f"--shard: expected I/N with 1 <= I <= N, got {text!r}")
    return i, n


def shard_cells(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """The runs of shard I of N: the grid's I-th, (I+N)-th, ... run. Shards are disjoint and cover
    the grid, so N processes (on N cores or machines) never train the same run directory."""
    if shard is None:
        return cells
    i, n = shard
    return cells[i - 1 :: n]


@dataclass(frozen=True)
class Layout:
    """The grid as Table 5 lays it out: a column per method, a row per setting of the other axes."""

    keys: list[str]  # every axis, in grid order
    method_key: str | None  # the axis whose values are the columns (None: a single column "run")
    methods: list[str]  # the columns, in grid order; the first is the reference (the baseline)
    row_keys: list[str]  # the other axes

    @classmethod
    def of(cls, results: list[dict], keys: list[str]) -> Layout:
        method_key = METHOD if METHOD in keys else next((k for k in CURRICULUM_KEYS if k in keys), None)
        methods = list(dict.fromkeys(r[method_key] for r in results)) if method_key else ["run"]
        return cls(list(keys), method_key, methods, [k for k in keys if k != method_key])

    @property
    def baseline(self) -> str:
        return self.methods[0]

    def method_of(self, r: dict) -> str:
        return r[self.method_key] if self.method_key else "run"

    def groups(self, results: list[dict]) -> dict[tuple, dict[str, dict]]:
        """{row coordinates: {method: result}}, rows in grid order."""
        groups: dict[tuple, dict[str, dict]] = {}
        for r in results:
            groups.setdefault(tuple(r[k] for k in self.row_keys), {})[self.method_of(r)] = r
        return groups
