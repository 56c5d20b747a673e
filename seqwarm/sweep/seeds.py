"""A sweep's statistics over seeds (`seqwarm sweep`'s report): each cell's mean with a bootstrap interval, and each
method against the baseline paired by seed (difference, interval, Wilcoxon), with the seed counts below which
an interval or a test cannot mean anything said as such (`seqwarm.stats`)."""

from __future__ import annotations

from collections import Counter

from seqwarm.report import fmt
from seqwarm.stats import CONFIDENCE, MIN_INTERVAL_N, RESAMPLES, mean_ci, paired_comparison
from seqwarm.sweep.grid import Layout, format_value
from seqwarm.tables import markdown_table

SPIKE = 1.5  # Table 5 counts the steps with loss ratio > 1.5 (Appendix A.3.1)


# --- statistics over seeds ----------------------------------------------------------------------

SEED = "run.seed"
# The metrics compared seed by seed, and the run states whose value counts: a diverged run has no
# final loss, but its spikes up to the divergence are the instability the comparison is about.
PAIRED = {
    "final_val_loss": ("final validation loss", ("finished",)),
    f"steps_loss_ratio_gt_{SPIKE}": (f"steps with loss ratio > {SPIKE}", ("finished", "diverged")),
}


def metric_value(r: dict | None, metric: str) -> float | None:
    """A run's value of one of the `PAIRED` metrics, None where the run does not count (yet)."""
    if r is None or r["status"] not in PAIRED[metric][1] or r[metric] is None:
        return None
    return float(r[metric])


def by_seed(results: list[dict], layout: Layout) -> dict[tuple, dict[str, dict]]:
    """{setting of the axes other than the method and the seed: {method: {seed: result}}}, in grid order."""
    other = [k for k in layout.row_keys if k != SEED]
    table: dict[tuple, dict[str, dict]] = {}
    for r in results:
        table.setdefault(tuple(r[k] for k in other), {}).setdefault(layout.method_of(r), {})[r[SEED]] = r
    return table


def seed_statistics(results: list[dict], layout: Layout) -> list[dict]:
    """sweep_stats.csv: per cell (setting x method) the mean final validation loss over seeds and its
    interval (`vs` empty), then per setting, method and `PAIRED` metric the comparison with the
    baseline over the seeds both have a value for (`mean` is then the mean of method - baseline).

    Pairing is by seed because a seed fixes the initial weights and the data order for every method,
    so the per-seed difference removes what the seed alone does to a run.
    """
    other = [k for k in layout.row_keys if k != SEED]
    rows = []
    table = by_seed(results, layout)
    for key, methods in table.items():
        for m in layout.methods:
            runs = methods.get(m, {})
            losses = [v for r in runs.values() if (v := metric_value(r, "final_val_loss")) is not None]
            est = mean_ci(losses)
            rows.append(
                {**dict(zip(other, key)), "method": m, "metric": "final_val_loss", "vs": None, "n": est.n,
                 "mean": est.mean, "ci_low": est.low, "ci_high": est.high, "p_value": None, "note": ""}
            )  # fmt: skip
    if layout.method_key is None:
        return rows
    for key, methods in table.items():
        base = methods.get(layout.baseline, {})
        for m in layout.methods[1:]:
            runs = methods.get(m, {})
            for metric in PAIRED:
                pairs = [(metric_value(r, metric), metric_value(base.get(seed), metric)) for seed, r in runs.items()]
                pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
                cmp = paired_comparison([x for x, _ in pairs], [y for _, y in pairs])
                rows.append(
                    {**dict(zip(other, key)), "method": m, "metric": metric, "vs": layout.baseline, "n": cmp.n,
                     "mean": cmp.diff.mean, "ci_low": cmp.diff.low, "ci_high": cmp.diff.high,
                     "p_value": cmp.p_value, "note": cmp.note}
                )  # fmt: skip
    return rows


def _interval(row: dict, spec: str) -> str:
    if row["ci_low"] is None:
        return "n too small" if 0 < row["n"] < MIN_INTERVAL_N else "n/a"
    return f"[{spec.format(row['ci_low'])}, {spec.format(row['ci_high'])}]"


def _p_text(row: dict) -> str:
    """Wilcoxon's p, or, where the seeds cannot reach p < 0.05, that instead of a p that only looks like a result."""
    if row["note"].startswith("n too small"):
        return row["note"]
    return fmt(row["p_value"], "{:.3g}") + (f" ({row['note']})" if row["note"] else "")


def _seed_ci_section(results: list[dict], layout: Layout, stats: list[dict]) -> list[str]:
    other = [k for k in layout.row_keys if k != SEED]
    cells = {(tuple(s[k] for k in other), s["method"]): s for s in stats if s["vs"] is None}
    diverged = Counter((tuple(r[k] for k in other), layout.method_of(r)) for r in results if r["status"] == "diverged")

    def cell(key: tuple, m: str) -> str:
        s = cells.get((key, m))
        n = s["n"] if s else 0
        seeds = f"n={n}" + (": too few seeds for an interval" if 0 < n < MIN_INTERVAL_N else "")
        notes = ([seeds] if n else []) + ([f"{diverged[(key, m)]} diverged"] if (key, m) in diverged else [])
        text = "-" if not n else f"{s['mean']:.3f}" + ("" if s["ci_low"] is None else f" {_interval(s, '{:.3f}')}")
        return text + (f" ({', '.join(notes)})" if notes else "")

    keys = list(dict.fromkeys(k for k, _ in cells))
    columns = [(k, lambda g, i=i: format_value(g[i])) for i, k in enumerate(other)]
    columns += [(m, lambda g, m=m: cell(g, m)) for m in layout.methods]
    return [
        f"## Final validation loss over seeds, mean [{CONFIDENCE:.0%} CI] (finished runs)",
        "",
        f"Percentile bootstrap of the mean over the seeds ({RESAMPLES:,} resamples, seeded); n: the finished",
        f"seeds. Fewer than {MIN_INTERVAL_N} seeds have no interval (the bootstrap of 2 spans their min and max).",
        "",
        markdown_table(columns, keys),
        "",
    ]


def _paired_sections(layout: Layout, stats: list[dict]) -> list[str]:
    other = [k for k in layout.row_keys if k != SEED]
    base = layout.baseline
    lines = [
        f"## Paired comparison with {base} over seeds",
        "",
        "The same seed gives every method the same initial weights and data order, so each method is compared",
        f"with {base} seed by seed: the mean of (method - {base}) over the seeds both have, its {CONFIDENCE:.0%}",
        "percentile-bootstrap interval, and the two-sided Wilcoxon signed-rank p-value (scipy). Negative is",
        "better for both metrics. With n nonzero differences p cannot go below 2 / 2^n (0.0625 at 5, 0.002 at 10):",
        'where that is above 0.05 the table says "n too small" instead of a p.',
        "",
    ]
    for metric, (title, states) in PAIRED.items():
        spec = "{:+.3f}" if metric == "final_val_loss" else "{:+.1f}"
        rows = [s for s in stats if s["vs"] == base and s["metric"] == metric]
        columns = [(k, lambda s, k=k: format_value(s[k])) for k in other]
        columns += [
            ("method", lambda s: s["method"]),
            ("pairs", lambda s: str(s["n"])),
            ("difference", lambda s, spec=spec: fmt(s["mean"], spec)),
            (f"{CONFIDENCE:.0%} CI", lambda s, spec=spec: _interval(s, spec)),
            ("Wilcoxon p", _p_text),
        ]
        lines += [
            f"### {title[0].upper() + title[1:]}, method - {base}",
            "",
            f"Pairs where both runs {' or '.join(states)}"
            + (" (a diverged run's count stops at its divergence)." if "diverged" in states else "."),
            "",
            markdown_table(columns, rows),
            "",
        ]
    return lines
