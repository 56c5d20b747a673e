"""The figures of `seqwarm report`: one PNG per `Plot`, every run overlaid (Figures 1 and 4 style)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqwarm.files import atomic_write
from seqwarm.metrics import RATIO_THRESHOLDS, finite


@dataclass(frozen=True)
class Run:
    """One run directory as read for the report."""

    label: str
    path: Path
    rows: list[dict]
    params: int | None
    finished: bool | None  # summary.json exists; None for a foreign log (unknown)
    notes: tuple[str, ...] = ()
    evaluation: dict | None = None  # eval.json written by `seqwarm eval`


@dataclass(frozen=True)
class Plot:
    """One figure: `y` against `x` over every row that has both, one line per run."""

    name: str
    x: str
    y: str
    title: str
    log_y: bool = False
    marks: tuple[float, ...] = ()  # horizontal reference lines


PLOTS = (
    Plot("loss_vs_step", "step", "loss", "Training loss (Section 3, Figure 1a-b)"),
    Plot("loss_vs_tokens", "tokens", "loss", "Training loss by tokens (token-wise comparison, Section 5.1)"),
    Plot("loss_ratio_vs_step", "step", "loss_ratio", "Loss ratio (Section 3, Table 1)", marks=RATIO_THRESHOLDS),
    Plot("adam_var_l1_vs_step", "step", "adam/var_l1", "Adam variance l1 norm (Figure 1c-d, 4c)", log_y=True),
    Plot("adam_var_max_vs_step", "step", "adam/var_max", "Adam variance max element (Figure 1e-f, 4d)", log_y=True),
    Plot("adam_mom_l1_vs_step", "step", "adam/mom_l1", "Adam momentum l1 norm (Appendix A.3.2, Figure 10)", log_y=True),
    Plot("val_ppl_vs_tokens", "tokens", "val/ppl", "Validation perplexity by tokens (Figure 4a)", log_y=True),
    Plot("val_ppl_vs_time", "time_s", "val/ppl", "Validation perplexity by wall time (Figure 4b)", log_y=True),
    Plot("seqlen_vs_step", "step", "seqlen", "Training sequence length (SLW pacing, Section 4)"),
)

AXIS_LABELS = {
    "step": "step",
    "tokens": "tokens",
    "time_s": "wall time (s)",
    "loss": "training loss",
    "loss_ratio": "loss ratio",
    "adam/var_l1": "l1 norm of sqrt(Adam variance)",
    "adam/var_max": "max element of sqrt(Adam variance)",
    "adam/mom_l1": "l1 norm of Adam momentum",
    "val/ppl": "validation perplexity",
    "seqlen": "sequence length",
}
MARKERS_BELOW = 50  # a series this short (eval rows) shows its points, so a single one is visible


def series(rows: list[dict], plot: Plot) -> tuple[list[float], list[float]]:
    """(x, y) over the rows that have both finite (and y > 0 on a log axis)."""
    points = [(finite(r.get(plot.x)), finite(r.get(plot.y))) for r in rows]
    points = [(x, y) for x, y in points if x is not None and y is not None and (y > 0 or not plot.log_y)]
    return [x for x, _ in points], [y for _, y in points]


def draw(plot: Plot, runs: list[Run], path: Path) -> bool:
    """Write the figure; False (nothing written) when no run has a point for it."""
    lines = [(run.label, *series(run.rows, plot)) for run in runs]
    lines = [(label, xs, ys) for label, xs, ys in lines if xs]
    if not lines:
        return False
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, xs, ys in lines:
        ax.plot(xs, ys, label=label, linewidth=1, marker="." if len(xs) < MARKERS_BELOW else None)
    for y in plot.marks:
        ax.axhline(y, color="grey", linestyle="--", linewidth=0.8)
    if plot.log_y:
        ax.set_yscale("log")
    ax.set(xlabel=AXIS_LABELS[plot.x], ylabel=AXIS_LABELS[plot.y], title=plot.title)
    ax.grid(alpha=0.3)
    ax.legend()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    atomic_write(path, png.getvalue())
    return True
