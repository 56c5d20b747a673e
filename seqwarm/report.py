"""`seqwarm report`: the paper's stability tables and curves, read back from run directories.

For one or more run directories (config.yaml, metrics.jsonl and, once finished, summary.json), or
logs of runs seqwarm did not train (TensorBoard events, a Hugging Face trainer_state.json, CSV or
JSON Lines; read by `seqwarm.external_logs`, with `--map` naming their keys), the report writes
into one output directory:

- Table 1 (Section 3): the steps whose loss ratio exceeds 1.2 and 1.5, and the maximum loss ratio;
- Table 3 (Section 3): the Pearson correlation between the loss ratio and the l1 norm / max
  element of Adam's variance state;
- a summary: tokens, steps, wall time, validation loss/perplexity, clipped and skipped steps;
- the zero-shot results of `seqwarm eval` (Tables 2 and 6 style), for the runs that have them
  (RUN_DIR/eval.json);

as `report.md` and as CSV files, and PNG figures with all runs overlaid (Figures 1 and 4 style).
Files of an earlier report in that directory are replaced, a figure that is no longer drawn removed.

Everything is computed from the rows of metrics.jsonl, so a run in progress (or killed) is
reported up to its last complete line. summary.json only marks a run finished and supplies the
parameter count when config.yaml does not load.

Decisions:

- Missing data is "n/a", never 0: a statistic no row logged (older runs, no Adam statistics, no
  eval rows), or a correlation over fewer than 3 points or of a constant series. Skipped steps
  are the exception: a row has `skipped` (its reason) only when its update was skipped, and runs
  from before skipping existed stopped at the first non-finite step, so none is 0.
- Loss-ratio counts and the maximum are over finite ratios, as in summary.json; a step with a
  non-finite loss counts in the total (the percentages' denominator) and as a skipped step.
- A run with no parseable train row (just started, or every line cut) is not an error: it gets
  a row with 0 steps and n/a, and a note in report.md, so that `seqwarm report runs/*` works
  while a run is starting. A path that does not exist, or a directory with neither metrics.jsonl
  nor config.yaml, is a `ReportError` (the CLI exits with code 2); nothing is written then.
- Runs are labelled by their directory names, lengthened with parent directories until no two
  are equal; a directory given twice is reported once.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from seqwarm.config import load_config
from seqwarm.errors import SeqwarmError
from seqwarm.eval.results import EVAL_FILE, format_counts, format_value, metric_label, read_eval
from seqwarm.external_logs import log_kind, read_external
from seqwarm.files import atomic_write
from seqwarm.metrics import (
    METRICS,
    RATIO_THRESHOLDS,
    eval_rows,
    finite,
    loss_ratio_table,
    number,
    read_metrics,
    train_rows,
)
from seqwarm.model_config import model_config
from seqwarm.report_figures import AXIS_LABELS, PLOTS, Plot, Run, draw
from seqwarm.report_instruments import describe, instrument_keys, write_instrument_figures
from seqwarm.tables import Column, markdown_table

REPORT = "report.md"
TABLE1_CSV = "table1_loss_ratio.csv"
TABLE3_CSV = "table3_correlation.csv"
SUMMARY_CSV = "summary.csv"
ZEROSHOT_CSV = "zeroshot.csv"
# Table 3 correlates the loss ratio with the l1 norm and the max element of sqrt(v_t).
ADAM_VARIANCE = ("adam/var_l1", "adam/var_max")
MIN_POINTS = 3  # fewer points leave r meaningless (two points always give |r| = 1)
NA = "n/a"


class ReportError(SeqwarmError):
    """A report input is not a run directory, or the report cannot be written; the message names the path."""


# --- the tables (pure functions of one run's metrics rows) ---------------------------------------


def paired(rows: list[dict], x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    """The values of two keys over the train rows where both are finite."""
    pairs = [(finite(r.get(x_key)), finite(r.get(y_key))) for r in train_rows(rows)]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    xs, ys = np.array(pairs, dtype=float).reshape(-1, 2).T
    return xs, ys


def pearson(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float] | None:
    """Pearson r and its p-value; None with fewer than MIN_POINTS points or a constant series (r undefined)."""
    if len(xs) < MIN_POINTS or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None
    result = stats.pearsonr(xs, ys)
    return float(result.statistic), float(result.pvalue)


def correlation_table(rows: list[dict]) -> list[dict]:
    """One run's rows of Table 3 (Section 3): the loss ratio against each Adam variance statistic, then against
    each instrument the run logged (`report_instruments.instrument_keys`: per layer attention max logit and entropy,
    output log Z and max |logit|, Adam's variance per parameter group; docs/STABILITY.md).

    Adam statistics and instruments may be logged every k steps only, so each pair uses the steps that have both.
    """
    table = []
    for y_key in (*ADAM_VARIANCE, *instrument_keys(rows)):
        xs, ys = paired(rows, "loss_ratio", y_key)
        r_p = pearson(xs, ys)
        table.append(
            {
                "x": "loss_ratio",
                "y": y_key,
                "n": len(xs),
                "pearson_r": r_p[0] if r_p else None,
                "p_value": r_p[1] if r_p else None,
            }
        )
    return table


def clip_count(train: list[dict]) -> int | None:
    """Steps whose gradient norm was clipped; None when no row logged `clipped` (unknown, not zero)."""
    flags = [r["clipped"] for r in train if r.get("clipped") is not None]
    return sum(bool(f) for f in flags) if flags else None


def skipped_reasons(train: list[dict]) -> Counter[str]:
    """Skipped updates by reason (`fp16 overflow` is routine loss scaling, `non-finite` is not)."""
    return Counter(str(r["skipped"]) for r in train if r.get("skipped"))


def summary_table(rows: list[dict]) -> dict:
    """One run's cost and outcome (Section 5.1): tokens, steps, wall time, validation loss/perplexity
    (Figure 4a-b), and the steps whose gradient was clipped or whose update was skipped.

    Keys shared with summary.json mean the same; `skipped_reasons` reads 'fp16 overflow: 3, non-finite: 1'.
    """
    train, evals = train_rows(rows), eval_rows(rows)
    last = train[-1] if train else {}
    ppls = [x for r in evals if (x := finite(r.get("val/ppl"))) is not None]
    skipped = skipped_reasons(train)
    return {
        "tokens": last.get("tokens", None if train else 0),  # None: a foreign log without token counts
        "steps": last.get("step", 0),
        "wall_s": max((x for r in rows if (x := finite(r.get("time_s"))) is not None), default=None),
        "final_val_loss": number(evals[-1].get("val/loss")) if evals else None,
        "final_val_ppl": number(evals[-1].get("val/ppl")) if evals else None,
        "best_val_ppl": min(ppls, default=None),
        "clip_count": clip_count(train),
        "skipped_steps": sum(skipped.values()),
        "skipped_reasons": ", ".join(f"{reason}: {n}" for reason, n in skipped.items()),
    }


# --- reading runs --------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / METRICS).exists() or (path / "config.yaml").exists())


def check_run_dir(path: Path) -> None:
    """A seqwarm run directory, or a foreign log `seqwarm.external_logs` reads; else a ReportError naming it."""
    if not path.exists():
        raise ReportError(f"{path}: no such run directory or log file")
    if is_run_dir(path) or log_kind(path) is not None:
        return
    if not path.is_dir():
        raise ReportError(
            f"{path}: not a run directory nor a log file (.csv, .jsonl, trainer_state.json, TensorBoard events)"
        )
    raise ReportError(
        f"{path}: not a run directory (no {METRICS} or config.yaml) nor TensorBoard events or trainer_state.json"
    )


def label_path(path: Path) -> Path:
    """The path a run is labelled by: a log file's name without its suffix, a trainer_state.json's directory."""
    if path.is_file():
        return (
            path.parent
            if path.name == "trainer_state.json" or log_kind(path) == "tensorboard"
            else path.with_suffix("")
        )
    return path


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Each directory's name, with as many parent directories as it takes to tell equal names apart."""
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(p.parts[-d:]) for p, d in zip(paths, depth)]
        clashing = [i for i, label in enumerate(labels) if labels.count(label) > 1 and depth[i] < len(paths[i].parts)]
        if not clashing:
            return labels
        for i in clashing:
            depth[i] += 1


def read_json(path: Path) -> dict:
    """A JSON object file, or {} when it is missing or cut."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def load_run(path: Path, label: str) -> Run:
    rows = [r for r in read_metrics(path / METRICS) if isinstance(r, dict)]
    summary = read_json(path / "summary.json")
    notes = []
    try:
        params = model_config(load_config(path / "config.yaml")).n_params()
    except SeqwarmError as e:
        params = summary.get("params")
        notes.append(f"parameters {'from summary.json' if params else 'unknown'}: {e}")
    if not train_rows(rows):
        notes.append(f"no complete train row in {METRICS} yet")
    evaluation = read_eval(path / EVAL_FILE)
    return Run(label, path, rows, params, bool(summary), tuple(notes), evaluation)


def load_external(path: Path, label: str, key_map: dict[str, str]) -> Run:
    log = read_external(path, key_map)
    notes = list(log.notes)
    if not train_rows(log.rows):
        notes.append("no train row with a numeric loss")
    return Run(label, path, log.rows, None, None, tuple(notes))


def load_runs(run_dirs: Sequence[Path], key_map: dict[str, str] | None = None) -> list[Run]:
    """The runs, each a seqwarm run directory or a foreign log read with `key_map` (seqwarm key -> log key)."""
    if not run_dirs:
        raise ReportError("report: no run directories given")
    for path in run_dirs:
        check_run_dir(Path(path))
    # abspath, not resolve: a symlinked run keeps the name it was given
    paths = list(dict.fromkeys(Path(os.path.abspath(p)) for p in run_dirs))
    labels = run_labels([label_path(p) for p in paths])
    return [
        load_run(p, label) if is_run_dir(p) else load_external(p, label, key_map or {})
        for p, label in zip(paths, labels)
    ]


# --- writing -------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return NA if value is None else spec.format(value)


def fmt_params(n: int | None) -> str:
    if n is None:
        return NA
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return NA
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s:.0f} s"


def fmt_over(row: dict, t: float) -> str:
    """'22 (0.06%)' as in Table 1."""
    pct = row[f"pct_steps_loss_ratio_gt_{t}"]
    return f"{row[f'steps_loss_ratio_gt_{t}']:,} ({fmt(pct, '{:.2f}%')})"


def fmt_skipped(row: dict) -> str:
    """'4 (fp16 overflow: 3, non-finite: 1)'."""
    reasons = row["skipped_reasons"]
    return f"{row['skipped_steps']:,}" + (f" ({reasons})" if reasons else "")


TABLE1_COLUMNS: list[Column] = [
    ("run", lambda r: r["run"]),
    ("parameters", lambda r: fmt_params(r["params"])),
    ("steps", lambda r: f"{r['steps']:,}"),
    *[(f"steps with loss ratio > {t} (% of steps)", lambda r, t=t: fmt_over(r, t)) for t in RATIO_THRESHOLDS],
    ("max loss ratio", lambda r: fmt(r["max_loss_ratio"], "{:.3f}")),
]
TABLE3_COLUMNS: list[Column] = [
    ("run", lambda r: r["run"]),
    ("correlation", lambda r: f"{r['x']} vs {r['y']}"),
    ("n", lambda r: f"{r['n']:,}"),
    ("Pearson r", lambda r: fmt(r["pearson_r"], "{:.3f}")),
    ("p-value", lambda r: fmt(r["p_value"], "{:.3g}")),
]
SUMMARY_COLUMNS: list[Column] = [
    ("run", lambda r: r["run"]),
    ("finished", lambda r: NA if r["finished"] is None else "yes" if r["finished"] else "no"),
    ("tokens", lambda r: fmt(r["tokens"], "{:,}")),
    ("steps", lambda r: f"{r['steps']:,}"),
    ("wall time", lambda r: fmt_seconds(r["wall_s"])),
    ("final val loss", lambda r: fmt(r["final_val_loss"], "{:.4f}")),
    ("final val ppl", lambda r: fmt(r["final_val_ppl"], "{:.2f}")),
    ("best val ppl", lambda r: fmt(r["best_val_ppl"], "{:.2f}")),
    ("clipped steps", lambda r: fmt(r["clip_count"], "{:,}")),
    ("skipped steps", lambda r: fmt_skipped(r)),
]


ZEROSHOT_COLUMNS: list[Column] = [
    ("run", lambda r: r["run"]),
    ("step", lambda r: f"{r['step']:,}"),
    ("task", lambda r: r["task"]),
    ("dataset", lambda r: r["dataset"]),
    ("metric", lambda r: metric_label(r["task"], r["metric"])),
    ("value", lambda r: format_value(r["value"])),
    ("n", lambda r: r["n"]),
]


def zeroshot_table(run: Run) -> list[dict]:
    """One row per metric of each task in the run's eval.json (none when the run has not been evaluated)."""
    if run.evaluation is None:
        return []
    step = run.evaluation["checkpoint"]["step"]
    rows = []
    for result in run.evaluation["results"].values():
        n = format_counts(result["counts"])
        for metric, value in result["metrics"].items():
            rows.append(
                {
                    "run": run.label,
                    "step": step,
                    "task": result["task"],
                    "dataset": result["dataset"],
                    "metric": metric,
                    "value": value,
                    "n": n,
                }
            )
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    """Raw values (None as an empty cell), one column per key; written atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue())


def render_markdown(
    runs: list[Run],
    table1: list[dict],
    table3: list[dict],
    summary: list[dict],
    drawn: list[Plot],
    zeroshot: list[dict],
    instrumented: list[tuple[str, str]] = (),
) -> str:
    skipped = [p for p in PLOTS if p not in drawn]
    parts = [
        "# seqwarm report",
        "Runs: " + ", ".join(f"`{run.label}` ({run.path})" for run in runs) + ".",
        "## Table 1: training instability (loss ratio)",
        "As in Section 3, Table 1: the loss ratio of a step is its training loss over the minimum loss of all "
        "previous steps; the table counts the steps whose ratio exceeds 1.2 and 1.5 (the threshold of "
        "Appendix A.3.1, Table 5) and gives the largest ratio. Steps with a non-finite loss count only "
        "in the total; the summary lists them as skipped.",
        markdown_table(TABLE1_COLUMNS, table1),
        "## Table 3: loss ratio vs Adam variance",
        "As in Section 3, Table 3: the Pearson correlation between the loss ratio and the l1 norm / max element "
        "of Adam's variance state sqrt(v_t), over the n steps that logged both; a low p-value means the "
        "correlation is statistically significant (n/a: fewer than 3 points or a constant series). A run trained "
        "with `monitor.instruments: true` adds a row per instrument (docs/STABILITY.md), over its instrumented steps.",
        markdown_table(TABLE3_COLUMNS, table3),
        "## Summary: cost and outcome",
        "The efficiency side of the dilemma (Section 5.1): tokens, steps and wall time up to the last logged "
        "step, validation loss/perplexity on full-length sequences (Figure 4a-b), and the steps whose gradient "
        "was clipped (n/a: not logged by the run) or whose update was skipped, with the reasons.",
        markdown_table(SUMMARY_COLUMNS, summary),
    ]
    if zeroshot:
        parts += [
            "## Zero-shot evaluation",
            "From `seqwarm eval` (RUN_DIR/eval.json; method in docs/EVALUATION.md), as the paper's Tables 2 and 6: "
            "perplexity of the held-out splits at full length, WikiText-style perplexity per token and per word "
            "(Megatron-LM's sliding windows), and strict last-word accuracy. The builtin cloze set is LAMBADA-style, "
            "not LAMBADA.",
            markdown_table(ZEROSHOT_COLUMNS, zeroshot),
        ]
    parts += [
        "## Figures",
        *[f"![{p.title}]({p.name}.png)" for p in drawn],
    ]
    if instrumented:
        parts += describe(list(instrumented))
    if skipped:
        parts.append(
            "Not drawn, no run logged the data: "
            + "; ".join(f"{p.name} ({AXIS_LABELS[p.y]} vs {AXIS_LABELS[p.x]})" for p in skipped)
            + "."
        )
    notes = [f"- `{run.label}`: {note}" for run in runs for note in run.notes]
    if notes:
        parts += ["## Notes", "\n".join(notes)]
    return "\n\n".join(parts) + "\n"


def write_report(run_dirs: list[Path], out: Path, key_map: dict[str, str] | None = None) -> Path:
    """Tables (report.md and CSV) and figures (PNG) for the runs into `out`; returns the report.md path.

    `run_dirs` may name foreign logs too, read with `key_map` (`seqwarm.external_logs.parse_map`).
    Every input is checked before anything is written.
    """
    runs = load_runs(run_dirs, key_map)
    table1 = [{"run": run.label, "params": run.params, **loss_ratio_table(run.rows)} for run in runs]
    table3 = [{"run": run.label, **row} for run in runs for row in correlation_table(run.rows)]
    summary = [
        {"run": run.label, "path": str(run.path), "finished": run.finished, **summary_table(run.rows)} for run in runs
    ]
    zeroshot = [row for run in runs for row in zeroshot_table(run)]
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / TABLE1_CSV, table1)
        write_csv(out / TABLE3_CSV, table3)
        write_csv(out / SUMMARY_CSV, summary)
        if zeroshot:
            write_csv(out / ZEROSHOT_CSV, zeroshot)
        else:
            (out / ZEROSHOT_CSV).unlink(missing_ok=True)  # an earlier report's table would no longer match
        drawn = []
        for plot in PLOTS:
            png = out / f"{plot.name}.png"
            if draw(plot, runs, png):
                drawn.append(plot)
            else:
                png.unlink(missing_ok=True)  # an earlier report's figure would no longer match
        instrumented = write_instrument_figures(runs, out)
        atomic_write(out / REPORT, render_markdown(runs, table1, table3, summary, drawn, zeroshot, instrumented))
    except OSError as e:
        raise ReportError(f"{out}: cannot write the report ({e.strerror or e})") from e
    return out / REPORT
