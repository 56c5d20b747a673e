"""`seqwarm sweep`: a grid of runs, trained one after another, and the grid's report.

The paper's stability claim rests on grids: 5 seeds x 4 learning rates, baseline vs SLW, counting
the steps whose loss ratio exceeds 1.5 (Appendix A.3.1, Table 5), and on comparisons with
Shortformer and batch-size warmup (Section 5.1). A sweep is the Cartesian product of axes:

- a config field with a list of values: `--grid 'train.lr=[1e-3,2e-3]'`;
- `method`, a named list of override bundles (a sweep file's `methods:`), so that "SLW" and "the
  baseline with a long LR warmup", which differ in more than one field, are values of one axis.

Runs are named by their coordinates (`method=slw__lr=0.002__seed=1`) inside the output directory
and trained in product order (the first axis outermost). Every config is built and checked before
the first run starts. A rerun of the same command skips finished runs, resumes an interrupted one
from its last checkpoint (or restarts it, when it had none), and refuses a run directory whose
saved config differs from the one the grid now asks for. A run stopped by a non-finite loss
(`monitor.on_nonfinite`) is an outcome, not an error: it is recorded as diverged and the sweep
goes on.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqwarm.checkpoint import checkpoint_dir, latest_checkpoint
from seqwarm.config import Config, check_key, load_config, resolve_config
from seqwarm.distributed import env_from_torchrun
from seqwarm.errors import ConfigError, DivergedError, SeqwarmError
from seqwarm.report import eval_rows, fmt, loss_ratio_table, markdown_table, write_csv, write_report
from seqwarm.metrics import METRICS, read_metrics
from seqwarm.data.corpus import open_data
from seqwarm.train import train

METHOD = "method"
DIVERGED = "diverged.json"  # written into a run directory that stopped on a non-finite loss
REPORT = "sweep.md"
RUNS_CSV = "sweep.csv"
FIGURE = "final_val_loss_vs_lr.png"
UNSTABLE = "most-unstable"  # `seqwarm report` of the grid cell with the most loss spikes
SPIKE = 1.5  # Table 5 counts the steps with loss ratio > 1.5 (Appendix A.3.1)


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
    out: Path | None = None


# --- building the grid ---------------------------------------------------------------------------


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
    """A sweep file: `sweep: {config, overrides, out, grid: {field: [values]}, methods: {name: {field: value}}}`."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the sweep file ({e})") from e
    spec = raw.get("sweep") if isinstance(raw, dict) else None
    if not isinstance(spec, dict) or set(raw) != {"sweep"}:
        raise ConfigError(f"{path}: a sweep file has a single top-level `sweep:` mapping")
    unknown = set(spec) - {"config", "overrides", "out", "grid", "methods"}
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {', '.join(sorted(unknown))} (config, overrides, out, grid, methods)")
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


def _short_keys(axes: list[Axis]) -> dict[str, str]:
    """`train.lr` -> `lr` unless two axes end alike."""
    last = [a.key.rpartition(".")[2] for a in axes]
    return {a.key: (s if last.count(s) == 1 else a.key) for a, s in zip(axes, last)}


def _format(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text.replace("/", "-").replace(" ", "")


def _resolved(cfg: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def build_cells(sweep: Sweep, out: Path) -> list[Cell]:
    """Every run of the grid, its config built and validated (nothing is trained or written)."""
    if not sweep.axes:
        raise ConfigError("sweep: no grid; give at least one --grid section.field=[...] (or a sweep file with grid/methods)")
    keys = [a.key for a in sweep.axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"sweep: an axis is given twice ({', '.join(keys)})")
    method = next((a for a in sweep.axes if a.key == METHOD), None)
    for name, bundle in (method.bundles if method else {}).items():
        clash = {o.partition("=")[0] for o in bundle} & set(keys)
        if clash:
            raise ConfigError(f"sweep.methods.{name}: sets {', '.join(sorted(clash))}, which is also a grid axis")
    short = _short_keys(sweep.axes)
    cells = []
    for values in itertools.product(*(a.values for a in sweep.axes)):
        overrides = [o for a, v in zip(sweep.axes, values) for o in a.overrides(v)]
        cfg = load_config(sweep.config, [*sweep.overrides, *overrides])
        # Named by the values the config resolved, so `1e-3` and `0.001` name the same run.
        coords = {a.key: (v if a.key == METHOD else _resolved(cfg, a.key)) for a, v in zip(sweep.axes, values)}
        name = "__".join(f"{short[k]}={_format(v)}" for k, v in coords.items())
        cfg.run.dir = str(out / name)
        cells.append(Cell(name, coords, cfg))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError("sweep: two grid values resolve to the same setting (e.g. 1e-3 and 0.001)")
    return cells


# --- running it ----------------------------------------------------------------------------------


def status(cell: Cell) -> str:
    """finished | diverged | resume (has a checkpoint) | restart (started, no checkpoint) | new."""
    d = cell.dir
    if (d / "summary.json").exists():
        return "finished"
    if (d / DIVERGED).exists():
        return "diverged"
    if latest_checkpoint(d) is not None:
        return "resume"
    return "restart" if d.exists() and any(d.iterdir()) else "new"


def check_existing(cells: list[Cell]) -> None:
    """Refuse, before training anything, run directories that are not this grid's runs."""
    for cell in cells:
        d = cell.dir
        if not d.exists() or not any(d.iterdir()):
            continue
        saved = d / "config.yaml"
        if not saved.exists():
            raise SeqwarmError(f"{d}: exists but is not a seqwarm run (no config.yaml); move it or choose another --out")
        old, new = load_config(saved).to_dict(), cell.cfg.to_dict()
        diff = [f"{s}.{k}: {old[s][k]!r} -> {new[s][k]!r}" for s in new for k in new[s] if old[s][k] != new[s][k]]
        if diff:
            raise SeqwarmError(
                f"{d}: trained with a different config ({'; '.join(diff[:3])}); use another --out or remove the run"
            )


def run_sweep(sweep: Sweep, out: Path, *, prune_checkpoints: bool = False, progress: bool = True, log=print) -> list[Cell]:
    """Train every run of the grid that is not done yet, then write the grid report."""
    cells = build_cells(sweep, out)
    check_existing(cells)
    for cfg in {c.cfg.data.path: c.cfg for c in cells}.values():
        open_data(cfg, progress)  # a missing or corrupted corpus fails now, not at run 7
    log(f"sweep: {len(cells)} runs in {out} ({' x '.join(f'{len(a.values)} {a.key}' for a in sweep.axes)})")
    for i, cell in enumerate(cells, 1):
        state = status(cell)
        head = f"[{i}/{len(cells)}] {cell.name}"
        if state in ("finished", "diverged"):
            log(f"{head}: {state}, skipped")
            continue
        log(f"{head}: {'resuming' if state == 'resume' else 'training'}")
        try:
            summary = train(cell.cfg, resume=state == "resume", force=state == "restart", progress=progress)
        except DivergedError as e:
            (cell.dir / DIVERGED).write_text(json.dumps({"error": str(e)}) + "\n")
            log(f"{head}: diverged ({e})")
            continue
        if prune_checkpoints:
            shutil.rmtree(checkpoint_dir(cell.dir), ignore_errors=True)
        ppl = summary["final_val_ppl"]
        log(f"{head}: done, {summary['tokens']:,} tokens, {summary['wall_s']:.0f} s" + (f", val ppl {ppl:.2f}" if ppl else ""))
    write_sweep_report(cells, out)
    return cells


# --- the grid report -----------------------------------------------------------------------------


def cell_result(cell: Cell) -> dict:
    """What the report needs of one run, read from its directory (missing or unfinished runs included)."""
    rows = read_metrics(cell.dir / METRICS)
    evals = eval_rows(rows)
    state = status(cell)
    summary = json.loads((cell.dir / "summary.json").read_text()) if state == "finished" else {}
    table = loss_ratio_table(rows)
    return {
        "run": cell.name,
        **cell.coords,
        "status": {"restart": "unfinished", "resume": "unfinished"}.get(state, state if rows else "not run"),
        "steps": table["steps"],
        "tokens": rows[-1]["tokens"] if rows else None,
        "wall_s": summary.get("wall_s"),
        "initial_val_loss": evals[0]["val/loss"] if evals and evals[0]["step"] == 0 else None,
        "final_val_loss": summary.get("final_val_loss"),
        f"steps_loss_ratio_gt_{SPIKE}": table[f"steps_loss_ratio_gt_{SPIKE}"],
        "steps_loss_ratio_gt_1.2": table["steps_loss_ratio_gt_1.2"],
        "max_loss_ratio": table["max_loss_ratio"],
        "_evals": evals,
    }


def lr_sensitivity(final_by_lr: dict[float, float | None], initial: float | None) -> float | None:
    """Wortsman et al. (2023), Section 3: E_lr[min(L(lr), L0)] - min_lr L(lr), over the LR grid.

    L(lr) is the final validation loss at that LR, L0 the loss at initialization; a diverged run
    counts as L0 (its loss no better than the untrained model's). 0 means every LR in the range
    does as well as the best one.
    """
    if initial is None or not final_by_lr:
        return None
    capped = [initial if loss is None else min(loss, initial) for loss in final_by_lr.values()]
    reached = [loss for loss in final_by_lr.values() if loss is not None]
    best = min(reached, default=initial)
    return float(np.mean(capped)) - min(best, initial)


def first_reaching(evals: list[dict], target: float) -> dict | None:
    """The first eval row whose validation loss is at or below `target`."""
    return next((r for r in evals if r["val/loss"] <= target), None)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def write_sweep_report(cells: list[Cell], out: Path) -> Path:
    """sweep.md, sweep.csv, the final-loss-vs-LR figure and the most unstable cell's `seqwarm report`."""
    results = [cell_result(c) for c in cells]
    keys = list(cells[0].coords)
    method_key = METHOD if METHOD in keys else ("curriculum.kind" if "curriculum.kind" in keys else None)
    methods = list(dict.fromkeys(r[method_key] for r in results)) if method_key else ["run"]
    row_keys = [k for k in keys if k != method_key]
    baseline = methods[0]  # the first method is the reference (the baseline in a Table 5 layout)

    def method_of(r: dict) -> str:
        return r[method_key] if method_key else "run"

    groups: dict[tuple, dict[str, dict]] = {}
    for r in results:
        groups.setdefault(tuple(r[k] for k in row_keys), {})[method_of(r)] = r

    def table(cell_text) -> str:
        columns = [(k, lambda g, k=k: _format(g[0][row_keys.index(k)])) for k in row_keys]
        columns += [(m, lambda g, m=m: cell_text(g[1].get(m))) for m in methods]
        return markdown_table(columns, list(groups.items()))

    def spikes(r: dict | None, threshold: float = SPIKE) -> str:
        if r is None or r["status"] == "not run":
            return "-"
        n = r[f"steps_loss_ratio_gt_{threshold}"]
        return f"{n} (diverged)" if r["status"] == "diverged" else (f"{n}*" if r["status"] == "unfinished" else f"{n}")

    def final(r: dict | None) -> str:
        if r is None or r["status"] == "not run":
            return "-"
        if r["status"] == "diverged":
            return "diverged"
        return fmt(r["final_val_loss"], "{:.3f}") + ("*" if r["status"] == "unfinished" else "")

    lines = [
        "# Sweep report",
        "",
        f"{len(results)} runs: " + ", ".join(f"{n} {s}" for s, n in Counter(r["status"] for r in results).items()) + ".",
        f"Axes: {', '.join(f'`{k}`' for k in keys)}. `*`: unfinished run (its numbers so far).",
        "",
        f"## Steps with loss ratio > {SPIKE} (Appendix A.3.1, Table 5 layout)",
        "",
        table(spikes),
        "",
        "Totals: "
        + ", ".join(f"{m} {sum(r[f'steps_loss_ratio_gt_{SPIKE}'] for r in results if method_of(r) == m)}" for m in methods)
        + ".",
        "",
        "## Steps with loss ratio > 1.2 (Table 1's threshold)",
        "",
        table(lambda r: spikes(r, 1.2)),
        "",
        "## Final validation loss",
        "",
        table(final),
        "",
    ]
    seed_free = [k for k in row_keys if k != "run.seed"]
    if "run.seed" in row_keys:
        lines += ["## Final validation loss, mean ± std over seeds (finished runs)", ""]
        by = {}
        for r in results:
            if r["status"] == "finished":
                by.setdefault(tuple(r[k] for k in seed_free), {}).setdefault(method_of(r), []).append(r["final_val_loss"])
        diverged = {}
        for r in results:
            if r["status"] == "diverged":
                key = (tuple(r[k] for k in seed_free), method_of(r))
                diverged[key] = diverged.get(key, 0) + 1
        columns = [(k, lambda g, k=k: _format(g[0][seed_free.index(k)])) for k in seed_free]
        columns += [
            (m, lambda g, m=m: _mean_std(g[1].get(m, [])) + (f" ({diverged[(g[0], m)]} diverged)" if (g[0], m) in diverged else ""))
            for m in methods
        ]
        lines += [markdown_table(columns, sorted(by.items(), key=lambda kv: kv[0])), ""]

    if "train.lr" in keys:
        lines += _lr_sensitivity_section(results, methods, method_of)
        _draw_final_vs_lr(results, methods, method_of, out / FIGURE)
        lines += [f"![final validation loss vs learning rate]({FIGURE})", ""]

    if method_key:
        lines += _reach_section(groups, row_keys, methods, baseline)

    unstable = _most_unstable(groups, baseline)
    if unstable is not None:
        run_dirs = [c.dir for c in cells if tuple(c.coords[k] for k in row_keys) == unstable and (c.dir / METRICS).exists()]
        write_report(run_dirs, out / UNSTABLE)
        where = ", ".join(f"{k} = {_format(v)}" for k, v in zip(row_keys, unstable)) or "the grid"
        lines += [
            "## The most unstable cell",
            "",
            f"{where} (most steps with loss ratio > {SPIKE} for {baseline}): Table 1, Table 3 and figures in",
            f"[{UNSTABLE}/report.md]({UNSTABLE}/report.md).",
            "",
        ]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / RUNS_CSV, [{k: v for k, v in r.items() if not k.startswith("_")} for r in results])
    (out / REPORT).write_text("\n".join(lines))
    return out / REPORT


def _method_curves(results: list[dict], methods: list[str], method_of) -> dict[str, tuple[dict, float | None]]:
    """Per method: {lr: mean final loss over seeds (None if any run diverged)} and the mean initial loss.

    Only complete LRs count: a run not finished yet leaves its LR out rather than bias the mean.
    """
    curves = {}
    for m in methods:
        rs = [r for r in results if method_of(r) == m]
        by_lr: dict[float, list] = {}
        for r in rs:
            by_lr.setdefault(r["train.lr"], []).append(r)
        final = {}
        for lr, group in sorted(by_lr.items()):
            if any(r["status"] == "diverged" for r in group):
                final[lr] = None
            elif all(r["status"] == "finished" for r in group):
                final[lr] = float(np.mean([r["final_val_loss"] for r in group]))
        inits = [r["initial_val_loss"] for r in rs if r["initial_val_loss"] is not None]
        curves[m] = (final, float(np.mean(inits)) if inits else None)
    return curves


def _lr_sensitivity_section(results, methods, method_of) -> list[str]:
    curves = _method_curves(results, methods, method_of)
    columns = [
        ("method", lambda m: m),
        ("LRs complete", lambda m: f"{len(curves[m][0])}"),
        ("best final val loss", lambda m: fmt(min((v for v in curves[m][0].values() if v is not None), default=None), "{:.3f}")),
        ("initial val loss", lambda m: fmt(curves[m][1], "{:.3f}")),
        ("LR sensitivity", lambda m: fmt(lr_sensitivity(*curves[m]), "{:.3f}")),
    ]
    return [
        "## LR sensitivity (Wortsman et al., 2023)",
        "",
        "E over the LR grid of min(final val loss, initial val loss), minus the best final val loss; the",
        "final loss of an LR is the mean over its runs, and a diverged run counts as the initial loss.",
        "Lower is more robust to the choice of LR.",
        "",
        markdown_table(columns, methods),
        "",
    ]


def _draw_final_vs_lr(results, methods, method_of, path: Path) -> None:
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for m in methods:
        rs = [r for r in results if method_of(r) == m and r["status"] in ("finished", "diverged")]
        lrs = sorted({r["train.lr"] for r in rs})
        if not lrs:
            continue
        init = [r["initial_val_loss"] for r in rs if r["initial_val_loss"] is not None]
        cap = max(init) if init else math.nan
        # A diverged run is drawn at the initial loss, as the LR sensitivity counts it.
        ys = [[r["final_val_loss"] if r["status"] == "finished" else cap for r in rs if r["train.lr"] == lr] for lr in lrs]
        means = [np.mean(y) for y in ys]
        err = [[m_ - min(y) for m_, y in zip(means, ys)], [max(y) - m_ for m_, y in zip(means, ys)]]
        ax.errorbar(lrs, means, yerr=err, marker="o", capsize=3, label=m)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss")
    ax.set_title("Final validation loss vs LR (mean, min-max over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _reach_section(groups, row_keys, methods, baseline) -> list[str]:
    """Tokens and wall time each method needed to reach the baseline's final validation loss."""

    def reach(g: dict, m: str) -> str:
        base, r = g.get(baseline), g.get(m)
        if not base or not r or base["status"] != "finished" or r["status"] == "not run":
            return "-"
        hit = first_reaching(r["_evals"], base["final_val_loss"])
        if hit is None:
            return "not reached"
        return f"{hit['tokens']:,} tok, {hit['time_s']:.0f} s"

    columns = [(k, lambda item, k=k: _format(item[0][row_keys.index(k)])) for k in row_keys]
    columns += [(m, lambda item, m=m: reach(item[1], m)) for m in methods]
    return [
        f"## Tokens and wall time to reach {baseline}'s final validation loss",
        "",
        "The first validation point at or below it (so within one `eval.every_tokens` interval).",
        "",
        markdown_table(columns, list(groups.items())),
        "",
    ]


def _most_unstable(groups: dict[tuple, dict[str, dict]], baseline: str) -> tuple | None:
    scored = [
        (r[f"steps_loss_ratio_gt_{SPIKE}"], r["max_loss_ratio"] or 0.0, key)
        for key, g in groups.items()
        if (r := g.get(baseline)) is not None and r["status"] != "not run"
    ]
    return max(scored, key=lambda s: s[:2])[2] if scored else None


def main_sweep(
    target: str | None,
    overrides: Sequence[str],
    grids: Sequence[str],
    out: str | None,
    *,
    report_only: bool = False,
    prune_checkpoints: bool = False,
    progress: bool = True,
) -> Path:
    """`seqwarm sweep CONFIG|SWEEP_FILE [overrides] --grid ...`: train what is missing, then report."""
    if env_from_torchrun().enabled:
        raise ConfigError("sweep: runs its trainings one after another in one process; do not launch it with torchrun")
    if target is not None and is_sweep_file(target):
        sweep = load_sweep_file(Path(target))
    else:
        sweep = Sweep(config=target, overrides=[], axes=[])
    sweep.overrides += list(overrides)
    sweep.axes = merge_axes(sweep.axes, [parse_grid(g) for g in grids])
    if out is None and sweep.out is None:
        stem = Path(target).stem if target else "defaults"
        out_dir = Path("runs") / f"sweep-{stem}"
    else:
        out_dir = Path(out) if out is not None else sweep.out
    if report_only:
        return write_sweep_report(build_cells(sweep, out_dir), out_dir)
    run_sweep(sweep, out_dir, prune_checkpoints=prune_checkpoints, progress=progress)
    return out_dir / REPORT
