"""The grid report: sweep.md, sweep.csv, the final-loss-vs-LR figure and the most unstable cell's report.

Everything comes from the runs' own metrics.jsonl (and summary.json, which only marks a run
finished), so the report can be written mid-sweep (`--report-only`): an unfinished run shows its
numbers so far, marked `*`. The layout is the paper's Table 5 (Appendix A.3.1): one column per
method (the `method` axis, else a curriculum axis: `curriculum.length`, `curriculum.batch`, `curriculum.kind`), one row per setting of the other axes, the
first method being the reference (the baseline). The pure core turns one run's rows into a result
(`summarise_cell`) and the results into Markdown (`render_markdown`); `write_sweep_report` reads
the runs and writes the files. With a `run.seed` axis, `seed_statistics` adds each cell's mean over
seeds with its bootstrap interval and each method's comparison with the baseline, paired by seed
(`seqwarm.stats`), to sweep.md and to sweep_stats.csv (sweep.csv keeps its columns); with an LR axis too,
each seed's LR sensitivity and its paired comparison (`seqwarm.sweep.sensitivity`, sweep_lr_sensitivity.csv).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqwarm.files import atomic_write
from seqwarm.metrics import METRICS, eval_rows, loss_ratio_table, read_metrics
from seqwarm.report import fmt, write_csv, write_report
from seqwarm.rundir import SUMMARY
from seqwarm.sweep import sensitivity
from seqwarm.sweep.grid import Cell, Layout, format_value
from seqwarm.sweep.seeds import (  # noqa: F401 (re-exported: the report's sections, named here by callers and tests)
    PAIRED,
    SEED,
    SPIKE,
    _interval,
    _p_text,
    _paired_sections,
    _seed_ci_section,
    by_seed,
    metric_value,
    seed_statistics,
)
from seqwarm.sweep.sensitivity import lr_sensitivity  # noqa: F401 (re-exported: callers and tests name it here)
from seqwarm.sweep.state import status
from seqwarm.tables import markdown_table

REPORT = "sweep.md"
RUNS_CSV = "sweep.csv"
STATS_CSV = "sweep_stats.csv"  # the statistics over seeds, one row per cell and per paired comparison
FIGURE = "final_val_loss_vs_lr.png"
UNSTABLE = "most-unstable"  # `seqwarm report` of the grid cell with the most loss spikes


# --- one run -------------------------------------------------------------------------------------


def summarise_cell(name: str, coords: dict, state: str, rows: list[dict], summary: dict) -> dict:
    """What the report needs of one run: its coordinates, outcome and stability counts.

    `state` is `seqwarm.sweep.state.status`; `summary` the run's summary.json ({} until it finishes).
    A run with no metrics yet is "not run"; one that stopped with a checkpoint or without is "unfinished".
    """
    evals = eval_rows(rows)
    table = loss_ratio_table(rows)
    return {
        "run": name,
        **coords,
        "status": {"restart": "unfinished", "resume": "unfinished"}.get(state, state if rows else "not run"),
        "steps": table["steps"],
        "tokens": rows[-1]["tokens"] if rows else None,
        "wall_s": summary.get("wall_s"),
        "initial_val_loss": evals[0]["val/loss"] if evals and evals[0]["step"] == 0 else None,
        "final_val_loss": summary.get("final_val_loss"),
        f"steps_loss_ratio_gt_{SPIKE}": table[f"steps_loss_ratio_gt_{SPIKE}"],
        "steps_loss_ratio_gt_1.2": table["steps_loss_ratio_gt_1.2"],
        "max_loss_ratio": table["max_loss_ratio"],
        "_evals": evals,  # for the time-to-reach table; not a column of sweep.csv
    }


def cell_result(cell: Cell) -> dict:
    """`summarise_cell` of a run read from its directory (missing or unfinished runs included)."""
    state = status(cell)
    summary = json.loads((cell.dir / SUMMARY).read_text()) if state == "finished" else {}
    return summarise_cell(cell.name, cell.coords, state, read_metrics(cell.dir / METRICS), summary)


def csv_rows(results: list[dict]) -> list[dict]:
    """sweep.csv: one row per run, its raw values (the private `_` keys left out)."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]


# --- statistics ----------------------------------------------------------------------------------


def first_reaching(evals: list[dict], target: float) -> dict | None:
    """The first eval row whose validation loss is at or below `target`."""
    return next((r for r in evals if r["val/loss"] <= target), None)


def mean_std(values: list[float]) -> str:
    """'4.917 ± 0.009' over seeds; one value alone, 'n/a' for none."""
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def method_curves(results: list[dict], layout: Layout) -> dict[str, tuple[dict, float | None]]:
    """`sensitivity.method_curves` for the grid's methods."""
    return sensitivity.method_curves(results, layout.methods, layout.method_of)


def most_unstable(groups: dict[tuple, dict[str, dict]], baseline: str) -> tuple | None:
    """The row whose baseline run has the most steps with loss ratio > SPIKE (ties: the larger max ratio)."""
    scored = [
        (r[f"steps_loss_ratio_gt_{SPIKE}"], r["max_loss_ratio"] or 0.0, key)
        for key, g in groups.items()
        if (r := g.get(baseline)) is not None and r["status"] != "not run"
    ]
    return max(scored, key=lambda s: s[:2])[2] if scored else None


# --- the Markdown --------------------------------------------------------------------------------


def _spikes(r: dict | None, threshold: float = SPIKE) -> str:
    if r is None or r["status"] == "not run":
        return "-"
    n = r[f"steps_loss_ratio_gt_{threshold}"]
    return f"{n} (diverged)" if r["status"] == "diverged" else (f"{n}*" if r["status"] == "unfinished" else f"{n}")


def _final(r: dict | None) -> str:
    if r is None or r["status"] == "not run":
        return "-"
    if r["status"] == "diverged":
        return "diverged"
    return fmt(r["final_val_loss"], "{:.3f}") + ("*" if r["status"] == "unfinished" else "")


def _grid_table(layout: Layout, groups: dict[tuple, dict[str, dict]], cell_text: Callable[[str, dict], str]) -> str:
    """One row per setting of the row axes, one column per method: `cell_text(method, group)`."""
    columns = [(k, lambda g, i=i: format_value(g[0][i])) for i, k in enumerate(layout.row_keys)]
    columns += [(m, lambda g, m=m: cell_text(m, g[1])) for m in layout.methods]
    return markdown_table(columns, list(groups.items()))


def _seed_section(results: list[dict], layout: Layout) -> list[str]:
    seed_free = [k for k in layout.row_keys if k != "run.seed"]
    by: dict[tuple, dict[str, list]] = {}
    diverged: Counter[tuple] = Counter()
    for r in results:
        key = tuple(r[k] for k in seed_free)
        if r["status"] == "finished":
            by.setdefault(key, {}).setdefault(layout.method_of(r), []).append(r["final_val_loss"])
        elif r["status"] == "diverged":
            diverged[(key, layout.method_of(r))] += 1

    def cell(g, m: str) -> str:
        return mean_std(g[1].get(m, [])) + (f" ({diverged[(g[0], m)]} diverged)" if (g[0], m) in diverged else "")

    columns = [(k, lambda g, i=i: format_value(g[0][i])) for i, k in enumerate(seed_free)]
    columns += [(m, lambda g, m=m: cell(g, m)) for m in layout.methods]
    return [
        "## Final validation loss, mean ± std over seeds (finished runs)",
        "",
        markdown_table(columns, sorted(by.items(), key=lambda kv: kv[0])),
        "",
    ]


def _sensitivity_axes(layout: Layout) -> list[str]:
    """The axes that LR sensitivity is computed per setting of: all but the method, the LR and the seed."""
    return [k for k in layout.row_keys if k not in ("train.lr", SEED)]


def _reach_section(layout: Layout, groups: dict[tuple, dict[str, dict]]) -> list[str]:
    """Tokens and wall time each method needed to reach the baseline's final validation loss."""
    baseline = layout.baseline

    def reach(m: str, g: dict) -> str:
        base, r = g.get(baseline), g.get(m)
        if not base or not r or base["status"] != "finished" or r["status"] == "not run":
            return "-"
        hit = first_reaching(r["_evals"], base["final_val_loss"])
        if hit is None:
            return "not reached"
        return f"{hit['tokens']:,} tok, {hit['time_s']:.0f} s"

    return [
        f"## Tokens and wall time to reach {baseline}'s final validation loss",
        "",
        "The first validation point at or below it (so within one `eval.every_tokens` interval).",
        "",
        _grid_table(layout, groups, reach),
        "",
    ]


def render_markdown(results: list[dict], keys: list[str]) -> str:
    """sweep.md for the results of a grid whose axes are `keys` (the figure and most-unstable report are linked)."""
    layout = Layout.of(results, keys)
    groups = layout.groups(results)
    spike_total = {
        m: sum(r[f"steps_loss_ratio_gt_{SPIKE}"] for r in results if layout.method_of(r) == m) for m in layout.methods
    }
    lines = [
        "# Sweep report",
        "",
        f"{len(results)} runs: "
        + ", ".join(f"{n} {s}" for s, n in Counter(r["status"] for r in results).items())
        + ".",
        f"Axes: {', '.join(f'`{k}`' for k in keys)}. `*`: unfinished run (its numbers so far).",
        "",
        f"## Steps with loss ratio > {SPIKE} (Appendix A.3.1, Table 5 layout)",
        "",
        _grid_table(layout, groups, lambda m, g: _spikes(g.get(m))),
        "",
        "Totals: " + ", ".join(f"{m} {n}" for m, n in spike_total.items()) + ".",
        "",
        "## Steps with loss ratio > 1.2 (Table 1's threshold)",
        "",
        _grid_table(layout, groups, lambda m, g: _spikes(g.get(m), 1.2)),
        "",
        "## Final validation loss",
        "",
        _grid_table(layout, groups, lambda m, g: _final(g.get(m))),
        "",
    ]
    if SEED in layout.row_keys:
        lines += _seed_section(results, layout)
        stats = seed_statistics(results, layout)
        lines += _seed_ci_section(results, layout, stats)
        if layout.method_key:
            lines += _paired_sections(layout, stats)
    if "train.lr" in keys:
        lines += sensitivity.mean_curve_section(results, layout.methods, layout.method_of)
        if SEED in layout.row_keys:
            other = _sensitivity_axes(layout)
            stats = sensitivity.sensitivity_statistics(
                results, layout.methods, layout.method_of, other, paired=layout.method_key is not None
            )
            lines += sensitivity.sensitivity_section(stats, other, layout.baseline if layout.method_key else None)
        lines += [f"![final validation loss vs learning rate]({FIGURE})", ""]
    if layout.method_key:
        lines += _reach_section(layout, groups)
    unstable = most_unstable(groups, layout.baseline)
    if unstable is not None:
        where = ", ".join(f"{k} = {format_value(v)}" for k, v in zip(layout.row_keys, unstable)) or "the grid"
        lines += [
            "## The most unstable cell",
            "",
            f"{where} (most steps with loss ratio > {SPIKE} for {layout.baseline}): Table 1, Table 3 and figures in",
            f"[{UNSTABLE}/report.md]({UNSTABLE}/report.md).",
            "",
        ]
    return "\n".join(lines)


# --- the figure ----------------------------------------------------------------------------------


def draw_final_vs_lr(results: list[dict], layout: Layout) -> bytes:
    """The PNG of final validation loss vs peak LR, one line per method (mean, min-max over seeds)."""
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for m in layout.methods:
        rs = [r for r in results if layout.method_of(r) == m and r["status"] in ("finished", "diverged")]
        lrs = sorted({r["train.lr"] for r in rs})
        if not lrs:
            continue
        init = [r["initial_val_loss"] for r in rs if r["initial_val_loss"] is not None]
        cap = max(init) if init else math.nan
        # A diverged run is drawn at the initial loss, as the LR sensitivity counts it.
        ys = [
            [r["final_val_loss"] if r["status"] == "finished" else cap for r in rs if r["train.lr"] == lr] for lr in lrs
        ]
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
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    return png.getvalue()


# --- writing -------------------------------------------------------------------------------------


def write_sweep_report(cells: list[Cell], out: Path) -> Path:
    """sweep.md, sweep.csv (+ sweep_stats.csv over seeds), the final-loss-vs-LR figure, the most unstable cell's report."""
    results = [cell_result(c) for c in cells]
    keys = list(cells[0].coords)
    layout = Layout.of(results, keys)
    out.mkdir(parents=True, exist_ok=True)
    if "train.lr" in keys:
        atomic_write(out / FIGURE, draw_final_vs_lr(results, layout))
    unstable = most_unstable(layout.groups(results), layout.baseline)
    if unstable is not None:
        row = [c for c in cells if tuple(c.coords[k] for k in layout.row_keys) == unstable]
        write_report([c.dir for c in row if (c.dir / METRICS).exists()], out / UNSTABLE)
    write_csv(out / RUNS_CSV, csv_rows(results))
    if SEED in layout.row_keys:
        write_csv(out / STATS_CSV, seed_statistics(results, layout))
        if "train.lr" in keys:
            other = _sensitivity_axes(layout)
            write_csv(
                out / sensitivity.CSV,
                sensitivity.sensitivity_statistics(
                    results, layout.methods, layout.method_of, other, paired=layout.method_key is not None
                ),
            )
    atomic_write(out / REPORT, render_markdown(results, keys))
    return out / REPORT
