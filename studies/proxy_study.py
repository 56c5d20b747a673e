"""The tables of the proxy study (docs/PROXY.md's protocol, docs/RESULTS.md's results) from its runs.

    python studies/proxy_study.py RUNS [--tune DIR] [--tuned DIR] > study.md

RUNS is the directory of the sweeps' runs (`runs/proxy`: the runs are named by the sweeps'
coordinates, `seed=1__lr=0.01__method=slw`); `--tune` holds one `seqwarm tune` output per seed
(`seed=S/tune.json`), `--tuned` the full runs of tuner picks outside the duration grid
(`seed=S/`). Every number printed comes from the runs' metrics.jsonl and summary.json; the
verdicts apply the protocol's pre-registered rules, written here once (`h1_verdict`, ...).
Unfinished or missing runs are left out and counted, never filled in.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from seqwarm.metrics import METRICS, eval_rows, loss_ratio_table, read_metrics, train_rows
from seqwarm.report import correlation_table
from seqwarm.rundir import SUMMARY
from seqwarm.stats import mean_ci, paired_comparison
from seqwarm.tables import markdown_table

ALPHA = 0.05
MAIN_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
PRIMARY_LR = 1e-2  # H2's aggressive LR and H4's
CONTROLS_LR = 3e-2
CONTROLS = ("baseline", "baseline-long-warmup", "shortformer", "bsz-warmup")
DURATIONS = {"slw-T15": 15, "slw-T30": 30, "slw": 60, "slw-T120": 120}
H3_LRS = (1e-2, 3e-2)
H4_TOLERANCE = 0.02  # the tuner's pick within 2% of the grid's best T
H4_MATTERS = 0.01  # T matters if the grid's best and worst mean final losses differ by 1%


@dataclass
class Run:
    name: str
    seed: int
    lr: float
    method: str
    finished: bool
    summary: dict
    rows: list[dict] = field(repr=False)

    @cached_property
    def evals(self) -> list[dict]:
        return eval_rows(self.rows)

    @property
    def final_val_loss(self) -> float | None:
        return self.summary.get("final_val_loss") if self.finished else None

    @cached_property  # read by every table: computed once per run
    def stability(self) -> dict:
        return loss_ratio_table(self.rows)


def parse_name(name: str) -> dict[str, str]:
    """`seed=1__lr=0.01__method=slw` -> {"seed": "1", "lr": "0.01", "method": "slw"}."""
    return dict(part.split("=", 1) for part in name.split("__"))


def load_runs(root: Path) -> dict[tuple[str, float, int], Run]:
    """{(method, lr, seed): Run} for every run directory with a metrics.jsonl under `root`."""
    runs = {}
    for d in sorted(root.iterdir()):
        if not (d / METRICS).is_file():
            continue
        c = parse_name(d.name)
        summary_path = d / SUMMARY
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        run = Run(
            d.name, int(c["seed"]), float(c["lr"]), c["method"], bool(summary), summary, read_metrics(d / METRICS)
        )
        runs[(run.method, run.lr, run.seed)] = run
    return runs


def seeds_of(runs: dict, method: str, lr: float) -> dict[int, Run]:
    return {s: r for (m, x, s), r in runs.items() if m == method and math.isclose(x, lr)}


def paired(runs: dict, lr: float, method: str, other: str, value) -> tuple[list[float], list[float], list[int]]:
    """The per-seed values of `method` and `other` at `lr` where both runs have one."""
    a, b = seeds_of(runs, method, lr), seeds_of(runs, other, lr)
    xs, ys, seeds = [], [], []
    for s in sorted(set(a) & set(b)):
        x, y = value(a[s]), value(b[s])
        if x is not None and y is not None:
            xs.append(float(x))
            ys.append(float(y))
            seeds.append(s)
    return xs, ys, seeds


def md(head: list[str], rows: list[list[str]]) -> str:
    return markdown_table([(h, lambda r, i=i: r[i]) for i, h in enumerate(head)], rows)


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"


def interval(e, spec: str = "+.3f") -> str:
    if e.mean is None:
        return "n/a"
    return f"{e.mean:{spec}} [{fmt(e.low, spec)}, {fmt(e.high, spec)}]"


def directional(xs: list[float], ys: list[float], smaller_is_better: bool = True) -> dict:
    """The paired comparison both ways: p for `xs` better than `ys`, p for worse, two-sided p."""
    better = "less" if smaller_is_better else "greater"
    worse = "greater" if smaller_is_better else "less"
    return {
        "cmp": paired_comparison(xs, ys),
        "p_better": paired_comparison(xs, ys, alternative=better).p_value,
        "p_worse": paired_comparison(xs, ys, alternative=worse).p_value,
    }


def verdict(test: dict) -> str:
    if test["p_better"] is not None and test["p_better"] < ALPHA:
        return "supported"
    if test["p_worse"] is not None and test["p_worse"] < ALPHA:
        return "refuted"
    return "not shown"


# --- H1: stability -------------------------------------------------------------------------------


def max_ratio(r: Run) -> float | None:
    return r.stability["max_loss_ratio"]


def spikes(threshold: float):
    return lambda r: r.stability[f"steps_loss_ratio_gt_{threshold}"]


H1_METRICS = (("max loss ratio", max_ratio), ("steps > 1.2", spikes(1.2)), ("steps > 1.5", spikes(1.5)))


def table5(runs: dict) -> str:
    rows = [["LR", "seed", "baseline > 1.5", "SLW > 1.5", "baseline > 1.2", "SLW > 1.2", "baseline max", "SLW max"]]
    for lr in MAIN_LRS:
        base, slw = seeds_of(runs, "baseline", lr), seeds_of(runs, "slw", lr)
        for s in sorted(set(base) | set(slw)):
            b, w = base.get(s), slw.get(s)

            def cell(r, f, spec="d"):
                return "-" if r is None else fmt(f(r), spec) + ("" if r.finished else "*")

            rows.append(
                [f"{lr:g}", str(s), cell(b, spikes(1.5)), cell(w, spikes(1.5)), cell(b, spikes(1.2)),
                 cell(w, spikes(1.2)), cell(b, max_ratio, ".2f"), cell(w, max_ratio, ".2f")]
            )  # fmt: skip
    return md(rows[0], rows[1:])


def h1_tests(runs: dict) -> tuple[str, list[tuple[float, str, str]]]:
    """SLW against each other method, per LR and metric; the verdicts on the primary metric."""
    rows, verdicts = [], []
    pairs = [(lr, "baseline") for lr in MAIN_LRS] + [(CONTROLS_LR, m) for m in CONTROLS[1:]]
    for lr, other in pairs:
        for label, f in H1_METRICS:
            xs, ys, seeds = paired(runs, lr, "slw", other, f)
            if len(xs) < 2:
                rows.append([f"{lr:g}", other, label, str(len(xs)), "n/a", "n/a", "n/a", "n/a"])
                continue
            t = directional(xs, ys)
            v = verdict(t) if t["cmp"].p_value is not None else f"untestable ({t['cmp'].note})"
            rows.append(
                [f"{lr:g}", other, label, str(t["cmp"].n), interval(t["cmp"].diff), fmt_p(t["p_better"]),
                 fmt_p(t["cmp"].p_value), v]
            )  # fmt: skip
            if label == "max loss ratio":
                verdicts.append((lr, other, v))
    head = ["LR", "SLW vs", "metric", "seeds", "mean SLW - other [95% CI]", "p (SLW lower)", "p two-sided", "H1"]
    return md(head, rows), verdicts


def method_table(runs: dict) -> str:
    """Table 1's layout per LR and method: final validation loss and stability, mean over seeds."""
    rows = []
    methods = sorted({m for m, _, _ in runs}, key=lambda m: (m != "baseline", m != "slw", m))
    for lr in sorted({x for _, x, _ in runs}):
        for m in methods:
            rs = list(seeds_of(runs, m, lr).values())
            if not rs:
                continue
            done = [r for r in rs if r.finished]
            loss = mean_ci([r.final_val_loss for r in done if r.final_val_loss is not None])
            rows.append(
                [f"{lr:g}", m, f"{len(done)}/{len(rs)}",
                 "n/a" if loss.mean is None else f"{loss.mean:.3f} [{fmt(loss.low)}, {fmt(loss.high)}]",
                 fmt(float(np.mean([max_ratio(r) for r in rs])), ".2f"),
                 fmt(float(np.mean([spikes(1.2)(r) for r in rs])), ".1f"),
                 fmt(float(np.mean([spikes(1.5)(r) for r in rs])), ".1f"),
                 fmt(float(np.mean([r.summary["wall_s"] for r in done])) if done else None, ".0f"),
                 fmt(float(np.mean([r.stability["steps"] for r in rs])), ".0f")]
            )  # fmt: skip
    head = ["LR", "method", "finished", "final val loss [95% CI]", "max ratio", "> 1.2", "> 1.5", "wall s", "steps"]
    return md(head, rows)


# --- H2: efficiency ------------------------------------------------------------------------------


def first_at_or_below(r: Run, target: float) -> dict | None:
    return next((e for e in r.evals if e["val/loss"] <= target), None)


def h2(runs: dict) -> tuple[str, str, dict[float, str]]:
    per_seed, tests, verdicts = [], [], {}
    for lr in MAIN_LRS:
        base, slw = seeds_of(runs, "baseline", lr), seeds_of(runs, "slw", lr)
        tok, tim, reached, n = [[], []], [[], []], 0, 0
        for s in sorted(set(base) & set(slw)):
            b, w = base[s], slw[s]
            if not (b.finished and w.finished) or b.final_val_loss is None:
                continue
            n += 1
            target = b.final_val_loss
            hb, hw = first_at_or_below(b, target), first_at_or_below(w, target)
            if hw is not None:
                reached += 1
                tok[0].append(hw["tokens"])
                tok[1].append(hb["tokens"])
                tim[0].append(hw["time_s"])
                tim[1].append(hb["time_s"])
            per_seed.append(
                [f"{lr:g}", str(s), f"{target:.3f}", f"{hb['tokens']:,} / {hb['time_s']:.0f} s",
                 "not reached" if hw is None else f"{hw['tokens']:,} / {hw['time_s']:.0f} s",
                 "-" if hw is None else f"{1 - hw['tokens'] / hb['tokens']:+.0%}",
                 "-" if hw is None else f"{1 - hw['time_s'] / hb['time_s']:+.0%}"]
            )  # fmt: skip
        loss = paired(runs, lr, "slw", "baseline", lambda r: r.final_val_loss)
        t_tok = directional(*tok) if len(tok[0]) >= 2 else None
        t_tim = directional(*tim) if len(tim[0]) >= 2 else None
        t_loss = directional(loss[0], loss[1]) if len(loss[0]) >= 2 else None
        ok = n > 0 and reached == n and t_tok and t_tim and t_tok["p_better"] is not None
        ok = ok and t_tok["p_better"] < ALPHA and t_tim["p_better"] is not None and t_tim["p_better"] < ALPHA
        worse = t_loss is not None and t_loss["p_worse"] is not None and t_loss["p_worse"] < ALPHA
        verdicts[lr] = "supported" if ok else "refuted" if worse else "not shown"
        tests.append(
            [f"{lr:g}", f"{reached}/{n}",
             "n/a" if t_tok is None else f"{interval(mean_ci(np.subtract(*tok)), '+,.0f')} ({fmt_p(t_tok['p_better'])})",
             "n/a" if t_tim is None else f"{interval(mean_ci(np.subtract(*tim)), '+.0f')} ({fmt_p(t_tim['p_better'])})",
             "n/a" if t_loss is None else interval(t_loss["cmp"].diff),
             "n/a" if t_loss is None else f"{fmt_p(t_loss['p_better'])} / {fmt_p(t_loss['p_worse'])}",
             verdicts[lr]]
        )  # fmt: skip
    seed_table = md(
        ["LR", "seed", "baseline final val loss", "baseline reaches it (tokens / time)", "SLW reaches it",
         "token saving", "time saving"], per_seed)  # fmt: skip
    test_table = md(
        ["LR", "SLW reached", "tokens SLW - baseline [CI] (p lower)", "seconds SLW - baseline [CI] (p lower)",
         "final val loss SLW - baseline [CI]", "p lower / p higher", "H2"], tests)  # fmt: skip
    return seed_table, test_table, verdicts


# --- H3: loss ratio against Adam's variance max --------------------------------------------------


def var_max_r(r: Run) -> tuple[float | None, float | None, int]:
    row = next(c for c in correlation_table(train_rows(r.rows)) if c["y"] == "adam/var_max")
    return row["pearson_r"], row["p_value"], row["n"]


def h3(runs: dict) -> tuple[str, str]:
    rows, judged = [], []
    for (m, lr, s), r in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        if m not in ("baseline", "slw"):
            continue
        rr, p, n = var_max_r(r)
        rows.append([f"{lr:g}", m, str(s), str(n), fmt(rr), fmt_p(p)])
        if m == "baseline" and any(math.isclose(lr, x) for x in H3_LRS) and r.finished:
            judged.append((rr, p))
    positive = sum(1 for rr, p in judged if rr is not None and rr > 0 and p is not None and p < ALPHA)
    nonpositive = sum(1 for rr, _ in judged if rr is not None and rr <= 0)
    if judged and positive >= 2 * len(judged) / 3:
        v = "supported"
    elif judged and nonpositive >= 2 * len(judged) / 3:
        v = "refuted"
    else:
        v = "not shown"
    line = (
        f"Baseline runs at LR {', '.join(f'{x:g}' for x in H3_LRS)}: {positive} of {len(judged)} with r > 0 and "
        f"p < {ALPHA}, {nonpositive} with r <= 0. H3: **{v}**."
    )
    return md(["LR", "method", "seed", "steps", "Pearson r", "p"], rows), line


# --- H4: the tuner against a grid over T -----------------------------------------------------------


def h4(runs: dict, tune: Path | None, tuned: Path | None) -> list[str]:
    out = []
    grid = {t: seeds_of(runs, m, PRIMARY_LR) for m, t in DURATIONS.items()}
    seeds = sorted(set.intersection(*(set(s for s, r in g.items() if r.finished) for g in grid.values())))
    seeds = [s for s in seeds if s in (1, 2, 3)]
    rows = []
    means = {}
    for t, g in grid.items():
        vals = [g[s].final_val_loss for s in seeds]
        means[t] = float(np.mean(vals)) if vals else None
        rows.append([str(t), *(fmt(v) for v in vals), fmt(means[t])])
    out += [md(["T", *(f"seed {s}" for s in seeds), "mean"], rows), ""]
    if not seeds:
        return out + ["H4: the duration grid is not finished; no verdict."]
    best_t = min(means, key=lambda t: means[t])
    spread = max(means.values()) / means[best_t] - 1
    out.append(f"Best T: {best_t} (mean {means[best_t]:.3f}); best-to-worst spread {spread:.1%}.")
    if tune is None:
        return out + ["", "H4: no tuner outputs given; no verdict."]
    picks, losses, rows, declined = {}, [], [], []
    for s in seeds:
        f = tune / f"seed={s}" / "tune.json"
        if not f.is_file():
            rows.append([str(s), "not run", "-", "-", "-"])
            continue
        rec = json.loads(f.read_text())
        seqlen_s, t = rec["recommendation"]["seqlen_start"], rec["recommendation"]["duration"]
        cost = rec.get("cost", {})
        if seqlen_s is None:  # the tuner declined: every seqlen_s candidate fluctuated at this LR
            declined.append(s)
            rows.append([str(s), "no recommendation", "-", json.dumps(cost), fmt(grid[best_t][s].final_val_loss)])
            continue
        picks[s] = (seqlen_s, t)
        loss = None
        if seqlen_s == 8 and t in grid and s in grid[t]:
            loss = grid[t][s].final_val_loss
        elif tuned is not None and (tuned / f"seed={s}" / SUMMARY).is_file():
            loss = json.loads((tuned / f"seed={s}" / SUMMARY).read_text()).get("final_val_loss")
        if loss is not None:
            losses.append((loss, grid[best_t][s].final_val_loss))
        rows.append(
            [str(s), f"seqlen_s {seqlen_s}, T {t}", fmt(loss), json.dumps(cost), fmt(grid[best_t][s].final_val_loss)]
        )
    out += ["", md(["seed", "tuner's pick", "its final val loss", "tuner cost", f"T={best_t} final"], rows), ""]
    if spread < H4_MATTERS:
        return out + [f"T does not matter here (spread {spread:.1%} < {H4_MATTERS:.0%}): H4 is **vacuous**."]
    if len(losses) + len(declined) < len(seeds):
        return out + ["H4: a pick's full run is missing; no verdict."]
    rel = float(np.mean([a for a, _ in losses])) / float(np.mean([b for _, b in losses])) - 1 if losses else None
    if declined:
        # Not foreseen by the protocol (docs/PROXY.md says how this rule was added): a tuner that
        # recommends nothing cannot be within 2% of the best T, so H4 is not supported.
        on_picks = f" On the seeds it did pick for, its picks against the best T: {rel:+.2%}." if losses else ""
        return out + [
            f"The tuner recommended nothing for {len(declined)} of {len(seeds)} seeds ({', '.join(map(str, declined))})."
            f"{on_picks} H4: **not supported**."
        ]
    v = "supported" if rel <= H4_TOLERANCE else "refuted"
    return out + [f"Tuner's picks against the best T, mean over seeds: {rel:+.2%}. H4: **{v}**."]


# --- H5: SLW keeping its truncated tails --------------------------------------------------------------

TAILS_LRS = (3e-3, 1e-2)


def h5(runs: dict) -> tuple[str, dict[float, str]]:
    rows, verdicts = [], {}
    for lr in TAILS_LRS:
        xs, ys, seeds = paired(runs, lr, "slw-keep-tails", "slw", lambda r: r.final_val_loss)
        _, bs, _ = paired(runs, lr, "slw-keep-tails", "baseline", lambda r: r.final_val_loss)
        if len(xs) < 2:
            verdicts[lr] = "not run"
            rows.append([f"{lr:g}", str(len(xs)), "n/a", "n/a", "n/a", "not run"])
            continue
        t = directional(xs, ys)
        verdicts[lr] = verdict(t)
        vs_base = interval(mean_ci(np.subtract(xs, bs))) if len(bs) == len(xs) else "n/a"
        rows.append(
            [f"{lr:g}", str(len(xs)), interval(t["cmp"].diff), f"{fmt_p(t['p_better'])} / {fmt_p(t['p_worse'])}",
             vs_base, verdicts[lr]]
        )  # fmt: skip
    head = ["LR", "seeds", "final val loss, keep tails - drop tails [CI]", "p lower / p higher",
            "keep tails - baseline [CI]", "H5"]  # fmt: skip
    return md(head, rows), verdicts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--tune", type=Path)
    ap.add_argument("--tuned", type=Path)
    args = ap.parse_args(argv)
    runs = load_runs(args.runs)
    unfinished = sorted(r.name for r in runs.values() if not r.finished)
    h1_table, h1_verdicts = h1_tests(runs)
    h2_seeds, h2_tests, h2_verdicts = h2(runs)
    h3_table, h3_line = h3(runs)
    lines = [
        f"# Proxy study: {len(runs)} runs in {args.runs}, {len(unfinished)} unfinished (marked *)",
        "",
        "## Per LR and method (Table 1's layout; mean over seeds)",
        "",
        method_table(runs),
        "",
        "## Steps with loss ratio > 1.5 and > 1.2, and the max loss ratio, per seed and LR (Table 5's layout)",
        "",
        table5(runs),
        "",
        "## H1: SLW's loss-ratio spikes against each method, paired by seed",
        "",
        h1_table,
        "",
        "H1 verdicts (max loss ratio): " + "; ".join(f"LR {lr:g} vs {o}: {v}" for lr, o, v in h1_verdicts),
        "",
        "## H2: tokens and wall time to the baseline's final validation loss",
        "",
        h2_seeds,
        "",
        h2_tests,
        "",
        "H2 verdicts: " + "; ".join(f"LR {lr:g}: {v}" for lr, v in h2_verdicts.items()),
        "",
        "## H3: loss ratio against Adam's variance max (Pearson, per run)",
        "",
        h3_line,
        "",
        h3_table,
        "",
        f"## H4: the tuner against a grid over T (LR {PRIMARY_LR:g})",
        "",
        *h4(runs, args.tune, args.tuned),
        "",
        "## H5: SLW keeping its truncated tails (drop_tail: false)",
        "",
        h5(runs)[0],
        "",
    ]
    sys.stdout.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
