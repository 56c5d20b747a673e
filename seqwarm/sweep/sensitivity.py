"""LR sensitivity (Wortsman et al. 2023), per seed and paired by seed, for the grid report.

Wortsman et al., "Small-scale proxies for large-scale Transformer training instabilities" (2023), Section
2.2, summarise a learning-rate-vs-final-loss curve by

    LR sensitivity = E_{lr in [a, b]} [ min(L(lr), L0) - min_{lr in [a, b]} L(lr) ]

L(lr) the final loss of a run at that LR, L0 the loss at initialisation (the cap: a run that diverged or
ended worse than the untrained model counts as L0), [a, b] the LR range (theirs: 3e-4 to 3e-1, spaced
in powers of ~3). Over a sweep's LR axis the expectation is the mean over its LRs, which is their
log-uniform expectation when the LRs are log-spaced. 0: every LR of the range does as well as the best.

`lr_sensitivity` is that formula. The sweep computes it twice: from the mean final loss over seeds at
each LR (summary.py's table, one number per method), and here for each seed's own curve, so that methods
compare seed by seed as the sweep's other statistics do (a seed fixes the initial weights and data order
for every method and LR): the mean over seeds with its bootstrap interval, and the paired difference
with the baseline and its Wilcoxon p (seqwarm.stats).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from seqwarm.report import fmt
from seqwarm.stats import CONFIDENCE, mean_ci, paired_comparison
from seqwarm.sweep.grid import format_value
from seqwarm.tables import markdown_table

LR, SEED = "train.lr", "run.seed"
CSV = "sweep_lr_sensitivity.csv"  # one row per setting x method, then per paired comparison


def lr_sensitivity(final_by_lr: dict[float, float | None], initial: float | None) -> float | None:
    """E over the LRs of min(L(lr), L0), minus the best L(lr) (capped at L0); None without L0 or LRs.

    `final_by_lr`: {lr: final loss, None for a diverged run}; `initial`: L0, the loss at initialisation.
    """
    if initial is None or not final_by_lr:
        return None
    capped = [initial if loss is None else min(loss, initial) for loss in final_by_lr.values()]
    reached = [loss for loss in final_by_lr.values() if loss is not None]
    best = min(reached, default=initial)
    return float(np.mean(capped)) - min(best, initial)


def method_curves(
    results: list[dict], methods: list[str], method_of: Callable[[dict], str]
) -> dict[str, tuple[dict, float | None]]:
    """Per method: {lr: mean final loss over seeds (None if any run diverged)} and the mean initial loss.

    Only complete LRs count: a run not finished yet leaves its LR out rather than bias the mean.
    """
    curves = {}
    for m in methods:
        rs = [r for r in results if method_of(r) == m]
        by_lr: dict[float, list] = {}
        for r in rs:
            by_lr.setdefault(r[LR], []).append(r)
        final = {}
        for lr, group in sorted(by_lr.items()):
            if any(r["status"] == "diverged" for r in group):
                final[lr] = None
            elif all(r["status"] == "finished" for r in group):
                final[lr] = float(np.mean([r["final_val_loss"] for r in group]))
        inits = [r["initial_val_loss"] for r in rs if r["initial_val_loss"] is not None]
        curves[m] = (final, float(np.mean(inits)) if inits else None)
    return curves


def mean_curve_section(results: list[dict], methods: list[str], method_of: Callable[[dict], str]) -> list[str]:
    """The report's table of each method's LR sensitivity, from the mean final loss over seeds at each LR."""
    curves = method_curves(results, methods, method_of)
    columns = [
        ("method", lambda m: m),
        ("LRs complete", lambda m: f"{len(curves[m][0])}"),
        (
            "best final val loss",
            lambda m: fmt(min((v for v in curves[m][0].values() if v is not None), default=None), "{:.3f}"),
        ),
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


def seed_sensitivities(
    results: list[dict], method_of: Callable[[dict], str], other: list[str]
) -> dict[tuple, dict[str, dict]]:
    """{setting of `other` axes: {method: {seed: LR sensitivity of that seed's curve}}}, in grid order.

    A seed's curve counts only once every LR of its setting has a finished run (its final validation loss)
    or a diverged one (L0): an LR missing from one seed's curve would change the expectation, and the
    pairs would no longer compare like with like. L0 is the seed's initial validation loss (the same
    weights at every LR of a seed; the mean over its runs, which agree).
    """
    by: dict[tuple, dict[str, dict]] = {}
    lrs: dict[tuple, set] = {}
    for r in results:
        key = tuple(r[k] for k in other)
        lrs.setdefault(key, set()).add(r[LR])
        by.setdefault(key, {}).setdefault(method_of(r), {}).setdefault(r[SEED], []).append(r)
    out: dict[tuple, dict[str, dict]] = {}
    for key, methods in by.items():
        for m, seeds in methods.items():
            for seed, runs in seeds.items():
                curve = {}
                for r in runs:
                    if r["status"] == "diverged":
                        curve[r[LR]] = None
                    elif r["status"] == "finished" and r["final_val_loss"] is not None:
                        curve[r[LR]] = r["final_val_loss"]
                inits = [r["initial_val_loss"] for r in runs if r["initial_val_loss"] is not None]
                if set(curve) == lrs[key] and inits:
                    value = lr_sensitivity(curve, float(np.mean(inits)))
                    out.setdefault(key, {}).setdefault(m, {})[seed] = value
    return out


def sensitivity_statistics(
    results: list[dict], methods: list[str], method_of: Callable[[dict], str], other: list[str], paired: bool
) -> list[dict]:
    """sweep_lr_sensitivity.csv: per setting and method the mean LR sensitivity over seeds and its interval
    (`vs` empty); then, with `paired`, each method against the first (the baseline) over the seeds both
    have (`mean`: the mean of method - baseline; negative: less sensitive than the baseline)."""
    table = seed_sensitivities(results, method_of, other)
    rows = []

    def row(key, m, vs, n, est, p=None, note=""):
        return {**dict(zip(other, key)), "method": m, "metric": "lr_sensitivity", "vs": vs, "n": n,
                "mean": est.mean, "ci_low": est.low, "ci_high": est.high, "p_value": p, "note": note}  # fmt: skip

    for key, by_method in table.items():
        for m in methods:
            est = mean_ci(list(by_method.get(m, {}).values()))
            rows.append(row(key, m, None, est.n, est))
    if not paired:
        return rows
    for key, by_method in table.items():
        base = by_method.get(methods[0], {})
        for m in methods[1:]:
            pairs = [(v, base[s]) for s, v in by_method.get(m, {}).items() if s in base]
            cmp = paired_comparison([x for x, _ in pairs], [y for _, y in pairs])
            rows.append(row(key, m, methods[0], cmp.n, cmp.diff, cmp.p_value, cmp.note))
    return rows


def _interval(s: dict) -> str:
    return "n/a" if s["ci_low"] is None else f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def sensitivity_section(stats: list[dict], other: list[str], baseline: str | None) -> list[str]:
    """The report's section: per method the mean over seeds [CI], then the paired differences."""
    cells = [s for s in stats if s["vs"] is None]
    columns = [(k, lambda s, k=k: format_value(s[k])) for k in other]
    columns += [
        ("method", lambda s: s["method"]),
        ("seeds", lambda s: str(s["n"])),
        ("LR sensitivity", lambda s: fmt(s["mean"], "{:.3f}")),
        (f"{CONFIDENCE:.0%} CI", _interval),
    ]
    lines = [
        "## LR sensitivity over seeds",
        "",
        "Each seed's own curve: E over the LRs of min(final val loss, the seed's initial val loss), minus its",
        "best final val loss (Wortsman et al. 2023, Section 2.2); a diverged run counts as the initial loss, and",
        "a seed counts once every LR has finished or diverged. Mean over seeds, percentile-bootstrap interval.",
        "",
        markdown_table(columns, cells),
        "",
    ]
    pairs = [s for s in stats if s["vs"] is not None]
    if baseline is None or not pairs:
        return lines
    columns = [(k, lambda s, k=k: format_value(s[k])) for k in other]
    columns += [
        ("method", lambda s: s["method"]),
        ("pairs", lambda s: str(s["n"])),
        ("difference", lambda s: fmt(s["mean"], "{:+.3f}")),
        (f"{CONFIDENCE:.0%} CI", _interval),
        ("Wilcoxon p", lambda s: fmt(s["p_value"], "{:.3g}") + (f" ({s['note']})" if s["note"] else "")),
    ]
    return lines + [
        f"### LR sensitivity, method - {baseline}, paired by seed",
        "",
        f"Negative: less sensitive to the LR than {baseline}. Two-sided Wilcoxon signed-rank test of the differences.",
        "",
        markdown_table(columns, pairs),
        "",
    ]
