"""The instruments in `seqwarm report` (issue 25, docs/STABILITY.md): which columns a run logged, and one figure per
run that puts them beside the paper's two measures.

Wortsman et al. 2023 (Section 3) read a failing run by its attention logits (a growing max, a collapsing entropy)
and its output log-partition; the paper's loss ratio and Adam's variance (Section 3, Table 3) can miss the first
(docs/STABILITY.md: a probe saw the proxy collapse with a loss ratio under 1.06). So the figure stacks, over the
same steps: the loss ratio, Adam's sqrt(v) max (global and per parameter group), each layer's max attention logit
and normalised entropy (with the collapse thresholds), and the output layer's log Z and max |logit|, with the
collapse, recovery and plateau-escape events of metrics.jsonl marked on every panel.

Pure functions of metric rows, besides `draw_instruments` which writes a PNG.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqwarm.files import atomic_write
from seqwarm.instruments import COLLAPSE_ENTROPY, COLLAPSE_LOGIT, GROUPS
from seqwarm.metrics import RATIO_THRESHOLDS, finite, train_rows
from seqwarm.report_figures import MARKERS_BELOW, Run

OUTPUT_KEYS = ("diag/output/logz_mean", "diag/output/logz_max", "diag/output/logit_absmax")
EVENT_STYLES = {  # the events the trainer writes (seqwarm.stability.Events), as vertical lines
    "event/collapse": dict(color="tab:red", linestyle="-"),
    "event/recovered": dict(color="tab:green", linestyle="--"),
    "event/plateau_escape": dict(color="tab:blue", linestyle=":"),
}
_ATTN = re.compile(r"^diag/attn/(\d+)/(logit_max|entropy)$")
_ADAM = re.compile(r"^adam/([a-z]+)/(var_max|var_l1)$")


def _layer_keys(keys: set[str], what: str) -> list[str]:
    found = [(int(m[1]), k) for k in keys if (m := _ATTN.match(k)) and m[2] == what]
    return [k for _, k in sorted(found)]


def _group_keys(keys: set[str], what: str) -> list[str]:
    found = {m[1]: k for k in keys if (m := _ADAM.match(k)) and m[2] == what}
    order = [g for g in GROUPS if g in found] + sorted(set(found) - set(GROUPS))
    return [found[g] for g in order]


def instrument_keys(rows: list[dict]) -> list[str]:
    """The instrument columns the train rows have, in a fixed order: per layer the attention max logit then entropy
    (by layer number), the output layer's log Z mean and max and max |logit|, then Adam's per-group var_max and var_l1
    (in `instruments.GROUPS` order). Empty for a run without `monitor.instruments` (and for foreign logs)."""
    keys = {k for r in train_rows(rows) for k in r}
    attn = [k for pair in zip(_layer_keys(keys, "logit_max"), _layer_keys(keys, "entropy")) for k in pair]
    return [
        *attn,
        *[k for k in OUTPUT_KEYS if k in keys],
        *_group_keys(keys, "var_max"),
        *_group_keys(keys, "var_l1"),
    ]


@dataclass(frozen=True)
class Event:
    step: int
    kind: str  # a key of EVENT_STYLES
    what: str  # "L0,L2" for the layers of a collapse or recovery; "" for the plateau escape


def events(rows: list[dict]) -> list[Event]:
    """The collapse, recovery and plateau-escape events in the train rows, in step order."""
    out = []
    for r in train_rows(rows):
        for kind in EVENT_STYLES:
            value = r.get(kind)
            if value is None or value == []:
                continue
            what = ",".join(f"L{x}" for x in value) if isinstance(value, list) else ""
            out.append(Event(int(r["step"]), kind, what))
    return out


def _series(rows: list[dict], key: str, positive: bool = False) -> tuple[list[float], list[float]]:
    points = [(finite(r.get("step")), finite(r.get(key))) for r in rows]
    points = [(x, y) for x, y in points if x is not None and y is not None and (y > 0 or not positive)]
    return [x for x, _ in points], [y for _, y in points]


def _panels(keys: list[str], rows: list[dict]) -> list[tuple[str, list[tuple[str, str]], bool, float | None]]:
    """(y label, [(label, key)], log scale, reference line) per panel that has data."""
    present = set(keys) | {k for r in rows for k in ("loss_ratio", "adam/var_max") if r.get(k) is not None}
    attn_max = [(f"L{_ATTN.match(k)[1]}", k) for k in keys if k.endswith("/logit_max") and k.startswith("diag/attn/")]
    attn_ent = [(f"L{_ATTN.match(k)[1]}", k) for k in keys if k.endswith("/entropy")]
    adam = [("all", "adam/var_max")] if "adam/var_max" in present else []
    adam += [(_ADAM.match(k)[1], k) for k in keys if _ADAM.match(k) and k.endswith("/var_max")]
    output = [(k.rsplit("/", 1)[1], k) for k in OUTPUT_KEYS if k in present]
    panels = [
        ("loss ratio", [("loss ratio", "loss_ratio")] if "loss_ratio" in present else [], False, None),
        ("Adam sqrt(v) max", adam, True, None),
        ("attention max logit", attn_max, False, COLLAPSE_LOGIT),
        ("attention entropy (1 uniform)", attn_ent, False, COLLAPSE_ENTROPY),
        ("output log Z, max |logit|", output, False, None),
    ]
    return [p for p in panels if p[1]]


def draw_instruments(run: Run, path: Path) -> bool:
    """Write the run's instrument figure; False (nothing written) when it logged no instrument."""
    rows = train_rows(run.rows)
    keys = instrument_keys(rows)
    if not keys:
        return False
    panels = _panels(keys, rows)
    marks = events(rows)
    fig = Figure(figsize=(8, 2.1 * len(panels) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (ylabel, lines, log_y, ref) in zip(axes, panels):
        for label, key in lines:
            xs, ys = _series(rows, key, positive=log_y)
            ax.plot(xs, ys, label=label, linewidth=1, marker="." if len(xs) < MARKERS_BELOW else None)
        for y in RATIO_THRESHOLDS if ylabel == "loss ratio" else () if ref is None else (ref,):
            ax.axhline(y, color="grey", linestyle="--", linewidth=0.8)
        for e in marks:
            ax.axvline(e.step, linewidth=0.9, alpha=0.8, **EVENT_STYLES[e.kind])
        if log_y:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize="small", ncols=min(len(lines), 6))
    for e in marks:  # named once, on the top panel
        name = e.kind.removeprefix("event/").replace("_", " ")
        axes[0].annotate(
            f"{name} {e.what}".strip(), (e.step, 1), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
            va="top", ha="right", color=EVENT_STYLES[e.kind]["color"],
        )  # fmt: skip
    axes[-1].set_xlabel("step")
    axes[0].set_title(f"{run.label}: instruments beside the loss ratio and Adam's variance")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    atomic_write(path, png.getvalue())
    return True


def figure_name(label: str) -> str:
    """The figure's file name for a run label (`runs/a` -> `instruments_runs_a.png`)."""
    return "instruments_" + re.sub(r"[^A-Za-z0-9._-]+", "_", label) + ".png"


def write_instrument_figures(runs: list[Run], out: Path) -> list[tuple[str, str]]:
    """Each instrumented run's figure into `out`; (label, file name) of those drawn. Figures of an earlier report
    that this one does not draw (a run left out, or no longer instrumented) are removed, as report.py's are."""
    drawn = [(run.label, figure_name(run.label)) for run in runs]
    drawn = [(label, name) for (label, name), run in zip(drawn, runs) if draw_instruments(run, out / name)]
    for stale in {p.name for p in out.glob("instruments_*.png")} - {name for _, name in drawn}:
        (out / stale).unlink(missing_ok=True)
    return drawn


def describe(drawn: list[tuple[str, str]]) -> list[str]:
    """report.md's section: what the figures show, then one per run (`drawn`: (label, file name))."""
    return [
        "## Instruments",
        "For the runs trained with `monitor.instruments: true` (docs/STABILITY.md), logged every `monitor.every` "
        "steps: the loss ratio and Adam's sqrt(v) max over all parameters and per group (Section 3), each layer's max "
        f"attention logit and normalised entropy (1 uniform, 0 one-hot; dashed: the collapse thresholds, logit > "
        f"{COLLAPSE_LOGIT:g} and entropy < {COLLAPSE_ENTROPY:g}) and the output layer's log Z and max |logit| "
        "(Wortsman et al. 2023, Section 3). Vertical lines: attention collapse (red), recovery (green dashed), "
        "the plateau escape (blue dotted). Table 3 above has their correlations with the loss ratio.",
        *[f"![instruments of {label}]({name})" for label, name in drawn],
    ]
