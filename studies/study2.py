"""Study 2 (docs/STUDY2.md, pre-registered): its runs, one CSV row each, and its tables from the rows.

    python studies/study2.py run --stage calibration|screen128|screen512|confirm [--jobs 2] [--limit N]
    python studies/study2.py tables > study2.md

`run` trains the stage's runs that `studies/study2/rows.csv` does not hold yet (by config hash), `--jobs`
at a time with one thread each, and appends each finished run's row (config hash, commit, CPU, seed,
every measure the hypotheses use) at once, so that a later session continues the grid instead of redoing
it. seqwarm's sweep runs a Cartesian grid and resumes from run directories; this study's stages are not
Cartesian (the screen's arms differ by context) and its record must outlive the run directories, so the
runs are driven here, each a `seqwarm train` of the proxy with the arm's overrides. The calibration
stage also writes `thresholds.json` by the protocol's rule; the other stages read it.

`tables` rebuilds every Study 2 table of docs/RESULTS.md from the committed rows and applies the
protocol's verdict rules (`s1` ... `s6`), written here once.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The study script runs from the repository (python studies/study2.py), seqwarm beside it
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seqwarm.files import atomic_write  # noqa: E402
from seqwarm.study_arms import (  # noqa: E402
    AGGRESSIVE,
    ARMS,
    BASE_CONFIG,
    CONFIRM_LR,
    CONFIRM_SEEDS,
    CONTEXTS,  # noqa: F401  (re-exported: the study's names, as its tests read them)
    STEPS,
    arm_overrides,
    plateau_steps,
)

HERE = Path(__file__).resolve().parent / "study2"
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"
# The confirmation's answer at the demo's settings, shipped with the package for `seqwarm demo` to print beside
# its one seed; rebuilt by `python studies/study2.py summary`, and tests/test_study2.py checks it against the rows.
SUMMARY = Path(__file__).resolve().parents[1] / "seqwarm" / "study2_confirmed.json"
ROWS = HERE / "rows.csv"
THRESHOLDS = HERE / "thresholds.json"
RUNS = Path(os.environ.get("SEQWARM_STUDY2_RUNS", "runs/study2"))

# --- the protocol's grid (docs/STUDY2.md): in seqwarm/study_arms.py, which the demo and the GPU script share ----

ALWAYS_CONFIRMED = {
    "c128": ("baseline", "slw", "slw-melt", "qk-norm", "slw+qk-norm", "llama", "llama-slw"),
    "c512": ("baseline", "slw", "slw-melt", "qk-norm", "batch-matched"),
}
ALPHA = 0.05


@dataclass(frozen=True)
class Spec:
    stage: str
    context: str
    arm: str
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.context}__{self.arm}__lr={self.lr:g}__seed={self.seed}"

    def overrides(self) -> list[str]:
        return arm_overrides(self.context, self.arm, self.lr, self.seed)

    def config_hash(self) -> str:
        """What the run computes: the arm's overrides on the proxy, in order (not the stage or directory)."""
        return hashlib.sha256("\n".join(["proxy", *self.overrides()]).encode()).hexdigest()[:16]


def stage_specs(stage: str, rows: list[dict] | None = None) -> list[Spec]:
    """The runs of a stage, in the order they are trained (seeds outermost: a cut-short stage has whole seeds)."""
    if stage == "calibration":
        return [Spec(stage, "c128", "baseline", lr, s) for s in (101, 102) for lr in (3e-3, 1e-1)]
    if stage == "screen128":
        specs = [Spec(stage, "c128", "baseline", 3e-3, s) for s in (1, 2)]
        return specs + [Spec(stage, "c128", a, lr, s) for s in (1, 2) for lr in AGGRESSIVE for a in ARMS]
    if stage == "screen512":
        arms = ("baseline", "slw", "slw-melt", "batch-matched", "qk-norm")
        return [Spec(stage, "c512", a, lr, s) for s in (1, 2) for lr in (3e-3, 1e-2) for a in arms]
    if stage == "confirm":
        carried = screen_selection(rows or [])
        specs = []
        for ctx in ("c128", "c512"):
            arms = [*ALWAYS_CONFIRMED[ctx], *(carried if ctx == "c128" else [])]
            specs += [Spec(stage, ctx, a, CONFIRM_LR[ctx], s) for s in CONFIRM_SEEDS[ctx] for a in dict.fromkeys(arms)]
        return specs
    raise SystemExit(f"--stage: {stage!r} is not one of calibration, screen128, screen512, confirm")


def screen_selection(rows: list[dict]) -> list[str]:
    """The protocol's rule: arms whose mean plateau at C128 (screen seeds, aggressive LRs) is >= 10% shorter
    than the baseline's; of those, the two shortest. Arms confirmed anyway are not counted."""
    screen = [r for r in rows if r["stage"] == "screen128" and float(r["lr"]) in AGGRESSIVE]
    mean = {a: _mean([_num(r, "plateau_steps") for r in screen if r["arm"] == a]) for a in ARMS}
    base = mean.get("baseline")
    if base is None:
        return []
    better = [a for a, m in mean.items() if m is not None and a not in ALWAYS_CONFIRMED["c128"] and m <= 0.9 * base]
    return sorted(better, key=lambda a: mean[a])[:2]


# --- measures of one run -----------------------------------------------------------------------------------


def measures(run_dir: Path, thresholds: dict | None, unigram: float) -> dict:
    """Every measure the hypotheses use, from the run's metrics.jsonl and summary.json."""
    from seqwarm.metrics import METRICS, eval_rows, read_metrics, train_rows

    rows = read_metrics(run_dir / METRICS)
    train, evals = train_rows(rows), eval_rows(rows)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    layers = sorted({int(k.split("/")[2]) for r in train for k in r if k.startswith("diag/attn/")})
    logit = {layer: [r.get(f"diag/attn/{layer}/logit_max") for r in train] for layer in layers}
    entropy = {layer: [r.get(f"diag/attn/{layer}/entropy") for r in train] for layer in layers}
    out = {
        "steps": len(train),
        "final_val_loss": evals[-1]["val/loss"] if evals and len(train) >= 1 else None,
        "initial_loss": train[0]["loss"] if train else None,
        "plateau_steps": plateau_steps(evals, unigram, len(train)),
        "max_loss_ratio": max((r["loss_ratio"] for r in train if _finite(r.get("loss_ratio"))), default=None),
        "max_attn_logit": max((v for s in logit.values() for v in s if _finite(v)), default=None),
        "min_attn_entropy": min((v for s in entropy.values() for v in s if _finite(v)), default=None),
        "layer0_logit_median_20_80": _median(logit.get(0, [])[20:80]),
        "layer0_entropy_median_20_80": _median(entropy.get(0, [])[20:80]),
        "diverged": bool(summary.get("diverged", False)) or not train,
        "wall_s": summary.get("wall_s"),
    }
    if thresholds:
        onset, layer = collapse_onset(train, layers, thresholds)
        out |= {"collapsed": onset is not None, "collapse_onset": onset, "collapse_layer": layer}
        out |= {f"lead_{k}": v for k, v in lead_times(train, layers, thresholds, onset).items()}
    return out


def collapse_onset(train: list[dict], layers: list[int], th: dict) -> tuple[int | None, int | None]:
    for r in train:
        for layer in layers:
            e, g = r.get(f"diag/attn/{layer}/entropy"), r.get(f"diag/attn/{layer}/logit_max")
            if _finite(e) and _finite(g) and e < th["entropy"] and g > th["logit"]:
                return int(r["step"]), layer
    return None, None


def lead_times(train: list[dict], layers: list[int], th: dict, onset: int | None) -> dict[str, int | None]:
    """Steps from each instrument's first crossing of its threshold to the collapse onset (None: no collapse
    or never crossed). The protocol's thresholds: logit > L*, entropy < E*, loss ratio > 1.2, Adam variance max
    and gradient norm above 10x their running median (previous 10 steps)."""
    if onset is None:
        return dict.fromkeys(("logit", "entropy", "loss_ratio", "adam", "grad_norm"))

    def first(pred) -> int | None:
        step = next((int(r["step"]) for i, r in enumerate(train) if pred(i, r)), None)
        return None if step is None else onset - step

    def jump(key: str):
        def pred(i, r):
            past = [x[key] for x in train[max(0, i - 10) : i] if _finite(x.get(key))]
            return len(past) >= 3 and _finite(r.get(key)) and r[key] > 10 * float(np.median(past))

        return pred

    attn = [(f"diag/attn/{layer}/logit_max", f"diag/attn/{layer}/entropy") for layer in layers]
    return {
        "logit": first(lambda i, r: any(_finite(r.get(g)) and r[g] > th["logit"] for g, _ in attn)),
        "entropy": first(lambda i, r: any(_finite(r.get(e)) and r[e] < th["entropy"] for _, e in attn)),
        "loss_ratio": first(lambda i, r: _finite(r.get("loss_ratio")) and r["loss_ratio"] > 1.2),
        "adam": first(jump("adam/var_max")),
        "grad_norm": first(jump("grad_norm")),
    }


def calibrate(rows: list[dict]) -> dict:
    """The protocol's threshold rule from the calibration rows (docs/STUDY2.md, "Measures")."""
    stable = [r for r in rows if r["stage"] == "calibration" and float(r["lr"]) == 3e-3]
    failing = [r for r in rows if r["stage"] == "calibration" and float(r["lr"]) == 1e-1]
    top = max(float(r["max_attn_logit"]) for r in stable)
    low = min(float(r["min_attn_entropy"]) for r in stable)
    fail_logit = float(np.median([float(r["layer0_logit_median_20_80"]) for r in failing]))
    fail_entropy = float(np.median([float(r["layer0_entropy_median_20_80"]) for r in failing]))
    if fail_logit > top and fail_entropy < low:
        return {"logit": math.sqrt(top * fail_logit), "entropy": (low + fail_entropy) / 2, "source": "calibration"}
    from seqwarm.instruments import COLLAPSE_ENTROPY, COLLAPSE_LOGIT

    return {"logit": COLLAPSE_LOGIT, "entropy": COLLAPSE_ENTROPY, "source": "defaults (calibration did not separate)"}


# --- running ------------------------------------------------------------------------------------------------


def read_rows(*, every: bool = False) -> list[dict]:
    """The recorded rows: the last complete one per config hash (`every`: all, superseded ones included)."""
    if not ROWS.exists():
        return []
    with open(ROWS, newline="") as f:
        rows = list(csv.DictReader(f))
    if every:
        return rows
    last = {r["config_hash"]: r for r in rows if complete(r)}
    return list(last.values())


def complete(row: dict) -> bool:
    """A row holds every measure its stage needs: after calibration, the collapse measures too. The first 30
    screen rows lack them (the writer kept the calibration rows' header; docs/RESULTS.md, Study 2): their runs
    are trained again, deterministic, and the complete row supersedes them."""
    return row["stage"] == "calibration" or row.get("collapsed", "") != ""


def append_row(row: dict) -> None:
    """One line appended. When the row has columns the file's header lacks, the file is first rewritten
    atomically with the union of the columns (earlier rows get empty cells); no recorded value changes."""
    HERE.mkdir(parents=True, exist_ok=True)
    old = read_rows(every=True)
    fields = list(dict.fromkeys([k for r in old for k in r] + list(row))) if old else list(row)
    if not old or list(old[0]) != fields:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(old)
        atomic_write(ROWS, buf.getvalue())
    with open(ROWS, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerow(row)
        f.flush()
        os.fsync(f.fileno())


def machine() -> tuple[str, str]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return commit, cpu


def unigram_loss() -> float:
    """The corpus's unigram loss on its validation split, as `prepare` records it (the trainer's summary reports
    the same number)."""
    from seqwarm.config import load_config
    from seqwarm.data.corpus import open_data
    from seqwarm.instruments import unigram_entropy

    data = open_data(load_config("proxy"), progress=True)
    recorded = data.meta.get("splits", {}).get("val", {}).get("unigram_loss")  # `prepare` records it (issue 25)
    if recorded is not None:
        return float(recorded)
    return float(unigram_entropy(np.asarray(data.splits["val"]), data.vocab_size))


def train_one(spec: Spec) -> Path:
    run_dir = RUNS / spec.name
    cmd = [sys.executable, "-m", "seqwarm", "train", BASE_CONFIG, *spec.overrides(), f"run.dir={run_dir}", "--force"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return run_dir


def run_stage(stage: str, jobs: int, limit: int | None) -> None:
    rows = read_rows()
    done = {r["config_hash"] for r in rows}
    todo = [s for s in stage_specs(stage, rows) if s.config_hash() not in done][:limit]
    thresholds = json.loads(THRESHOLDS.read_text()) if THRESHOLDS.exists() else None
    if stage != "calibration" and thresholds is None:
        raise SystemExit("thresholds.json missing: run --stage calibration first (the protocol fixes them there)")
    commit, cpu = machine()
    unigram = unigram_loss()
    print(f"{stage}: {len(todo)} runs to train ({jobs} at a time); unigram loss {unigram:.4f}", file=sys.stderr)

    def one(spec: Spec) -> None:
        run_dir = train_one(spec)
        row = {
            "stage": spec.stage,
            "context": spec.context,
            "arm": spec.arm,
            "lr": spec.lr,
            "seed": spec.seed,
            "config_hash": spec.config_hash(),
            "commit": commit,
            "cpu": cpu,
            "unigram_loss": round(unigram, 6),
        } | measures(run_dir, thresholds, unigram)
        append_row(row)
        shutil.rmtree(run_dir, ignore_errors=True)  # run directories are never kept or committed
        print(f"  {spec.name}: plateau {row['plateau_steps']}, final {row['final_val_loss']}", file=sys.stderr)

    with ThreadPoolExecutor(jobs) as pool:  # each job is a subprocess: one core each
        list(pool.map(one, todo))
    if stage == "calibration" and len([r for r in read_rows() if r["stage"] == "calibration"]) == 4:
        atomic_write(THRESHOLDS, json.dumps(calibrate(read_rows()), indent=1) + "\n")


# --- tables and verdicts -----------------------------------------------------------------------------------


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def _median(xs: list) -> float | None:
    vals = [x for x in xs if _finite(x)]
    return float(np.median(vals)) if vals else None


def _num(row: dict, key: str) -> float | None:
    """A row's measure as the protocol's tests read it. Plateau length is censored at STEPS: a row records the
    steps until the run left the plateau or, if it never did, the run's own steps, which exceed 100 for the arms
    whose steps carry fewer tokens (SLW's 121, skip-step's repeats); past 100 they all say "not within 100 steps"
    and tie (docs/STUDY2.md, Measures and Protocol changes). A diverged run has no final loss and ranks worst:
    its initial loss stands in, above every final loss of a run that trained."""
    if key == "final_val_loss" and str(row.get("diverged")) == "True":
        key = "initial_loss"
    try:
        v = float(row[key])
    except (KeyError, TypeError, ValueError):
        return None
    if key == "plateau_steps":
        v = min(v, STEPS)
    return v if math.isfinite(v) else None


def paired(rows: list[dict], ctx: str, lr: float, arm: str, base: str, key: str, stage: str = "confirm"):
    """Per-seed values of `arm` and `base` (seeds both have), for `seqwarm.stats.paired_comparison`."""
    pick = [r for r in rows if r["stage"] == stage and r["context"] == ctx and float(r["lr"]) == lr]
    a = {int(r["seed"]): _num(r, key) for r in pick if r["arm"] == arm}
    b = {int(r["seed"]): _num(r, key) for r in pick if r["arm"] == base}
    # A diverged run has no final loss: it ranks worst (the protocol); `_num` gives its initial loss.
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    return [a[s] for s in seeds], [b[s] for s in seeds]


def _table(header: list[str], rows: list[list[str]]) -> str:
    from seqwarm.tables import markdown_table

    return markdown_table([(h, lambda r, i=i: r[i]) for i, h in enumerate(header)], rows)


def tables(rows: list[dict]) -> str:
    """Every Study 2 table of docs/RESULTS.md from the rows: per stage, each (context, arm, LR) cell over its
    seeds; the paired comparisons and the verdicts of the confirmation stage."""
    from seqwarm.stats import paired_comparison

    out = [
        f"Rows: {len(rows)} runs recorded in studies/study2/rows.csv. The stage tables give each run's plateau as "
        "recorded (a run that never left the plateau: its own steps, 121 for SLW's shorter steps); the tests, "
        "the means and the figure censor it at 100 steps (docs/STUDY2.md).",
        "",
    ]
    for stage in ("calibration", "screen128", "screen512", "confirm"):
        srows = [r for r in rows if r["stage"] == stage]
        out.append(f"### {stage}: {len(srows)} of {len(stage_specs(stage, rows))} runs")
        out.append("")
        if not srows:
            continue
        cells: dict[tuple, list[dict]] = {}
        for r in srows:
            cells.setdefault((r["context"], r["arm"], float(r["lr"])), []).append(r)
        table = []
        for (ctx, arm, lr), rs in sorted(
            cells.items(), key=lambda kv: (kv[0][0], kv[0][2], list(ARMS).index(kv[0][1]))
        ):
            rs = sorted(rs, key=lambda r: int(r["seed"]))
            finals = [_num(r, "final_val_loss") for r in rs]
            collapsed = sum(str(r.get("collapsed")) == "True" for r in rs)
            logits = [_num(r, "max_attn_logit") for r in rs]
            entropies = [_num(r, "min_attn_entropy") for r in rs]
            table.append(
                [
                    ctx,
                    f"{lr:g}",
                    arm,
                    ", ".join(r["seed"] for r in rs),
                    ", ".join(r["plateau_steps"] for r in rs),
                    ", ".join(_fmt(f) for f in finals),
                    f"{collapsed}/{len(rs)}" if rs[0].get("collapsed", "") != "" else "-",
                    _fmt(max((x for x in logits if x is not None), default=None), ",.0f"),
                    _fmt(min((x for x in entropies if x is not None), default=None)),
                ]
            )
        header = ["ctx", "lr", "arm", "seeds", "plateau (steps)", "final val loss", "collapsed", "max logit", "min H"]
        out += [_table(header, table), ""]
    confirm = [r for r in rows if r["stage"] == "confirm"]
    if confirm:
        out += ["### Paired by seed against the family's baseline (confirmation; plateau censored at 100)", ""]
        table = []
        for ctx in ("c128", "c512"):
            for arm in sorted({r["arm"] for r in confirm if r["context"] == ctx} - {"baseline", "llama"}):
                base = "llama" if arm.startswith("llama") else "baseline"
                for key in ("plateau_steps", "final_val_loss"):
                    a, b = paired(rows, ctx, CONFIRM_LR[ctx], arm, base, key)
                    p = paired_comparison(a, b, alternative="less")
                    table.append([ctx, arm, base, key, str(len(a)), _fmt(p.diff.mean), _fmt(p.p_value, ".4f")])
        header = ["ctx", "arm", "against", "measure", "n", "mean diff", "one-sided p"]
        out += [_table(header, table), ""]
    out += ["### LR sensitivity from the screen (a description, no verdict)", ""]
    out += [
        "Wortsman et al.'s LR sensitivity (docs/STABILITY.md) of each arm's final validation loss over the screen's "
        "LRs, per seed, then its mean: at C128 over the three aggressive LRs (1e-2, 3e-2, 1e-1; the baseline's "
        "3e-3 is left out so that every arm has the same range), at C512 over 3e-3 and 1e-2. 0: every LR does "
        "as well as the arm's best.",
        "",
    ]
    out += [_table(["ctx", "arm", "per seed", "mean"], sensitivity_rows(rows)), ""]
    if confirm:
        out += ["### Confirmation means (plateau censored at 100 steps)", ""]
        table = [
            [
                ctx,
                arm,
                str(m["n"]),
                _fmt(m["plateau_mean"], ".1f"),
                _fmt(m["final_val_loss_mean"]),
                f"{m['collapsed']}/{m['n']}",
                str(m["escaped"]),
            ]  # fmt: skip
            for ctx, arms in confirmation_means(rows).items()
            for arm, m in arms.items()
        ]
        header = ["ctx", "arm", "seeds", "mean plateau", "mean final val loss", "collapsed", "left the plateau"]
        out += [_table(header, table), ""]
    out += ["### Verdicts (the protocol's rules, confirmation stage only)", ""]
    out += [f"- **{name}**: {verdict}" for name, verdict in verdicts(rows).items()]
    if confirm:
        out += ["", "S1 on the raw plateau values (a run that never left the plateau counts its own steps), for the "
                "record of the censoring rule (docs/STUDY2.md, Protocol changes):", ""]  # fmt: skip
        out += [f"- {arm}: {said}" for arm, said in s1_uncensored(rows).items()]
    return "\n".join(out)


def sensitivity_rows(rows: list[dict]) -> list[list[str]]:
    """Per (context, arm) of the screens: the LR sensitivity of each seed's curve, and their mean."""
    from seqwarm.sweep.sensitivity import lr_sensitivity

    out = []
    for stage, ctx in (("screen128", "c128"), ("screen512", "c512")):
        pick = [r for r in rows if r["stage"] == stage and (ctx == "c512" or float(r["lr"]) in AGGRESSIVE)]
        for arm in [a for a in ARMS if any(r["arm"] == a for r in pick)]:
            per_seed = {}
            for seed in sorted({int(r["seed"]) for r in pick if r["arm"] == arm}):
                mine = [r for r in pick if r["arm"] == arm and int(r["seed"]) == seed]
                if len(mine) < len({float(r["lr"]) for r in pick}):
                    continue  # a seed's curve counts once every LR of it ran
                finals = {float(r["lr"]): None if str(r["diverged"]) == "True" else _num(r, "final_val_loss")
                          for r in mine}  # fmt: skip
                per_seed[seed] = lr_sensitivity(finals, _mean([_num(r, "initial_loss") for r in mine]))
            vals = [v for v in per_seed.values() if v is not None]
            said = ", ".join(f"{s}: {_fmt(v)}" for s, v in per_seed.items())
            out.append([ctx, arm, said or "-", _fmt(_mean(vals))])
    return out


def confirmation_means(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """Per context and confirmed arm, over the confirmation's seeds: mean censored plateau, mean final loss (a
    diverged run at its initial loss), how many runs collapsed and how many left the plateau within 100 steps."""
    out: dict[str, dict[str, dict]] = {}
    for ctx in ("c128", "c512"):
        pick = [r for r in rows if r["stage"] == "confirm" and r["context"] == ctx]
        for arm in [a for a in ARMS if any(r["arm"] == a for r in pick)]:
            rs = sorted((r for r in pick if r["arm"] == arm), key=lambda r: int(r["seed"]))
            plateau = [_num(r, "plateau_steps") for r in rs]
            out.setdefault(ctx, {})[arm] = {
                "n": len(rs),
                "seeds": [int(r["seed"]) for r in rs],
                "plateau_mean": _mean([p for p in plateau if p is not None]),
                "final_val_loss_mean": _mean([x for r in rs if (x := _num(r, "final_val_loss")) is not None]),
                "collapsed": sum(str(r.get("collapsed")) == "True" for r in rs),
                "escaped": sum(p is not None and p < STEPS for p in plateau),
            }
    return out


def s1_tests(rows: list[dict], key: str = "plateau_steps") -> tuple[dict, dict[str, float | None]]:
    """S1's tests: each confirmed GPT-2-family arm against the baseline at C128 (one-sided, arm shorter), and
    their Holm-adjusted p-values."""
    from seqwarm.stats import paired_comparison

    lr = CONFIRM_LR["c128"]
    arms = sorted({r["arm"] for r in rows if r["stage"] == "confirm" and r["context"] == "c128"})
    tests = {
        a: paired_comparison(*paired(rows, "c128", lr, a, "baseline", key), alternative="less")
        for a in arms
        if a != "baseline" and not a.startswith("llama")
    }
    return tests, holm({a: t.p_value for a, t in tests.items()})


def s1_uncensored(rows: list[dict]) -> dict[str, str]:
    """S1's test on the raw plateau values: how much the censoring rule decides (not a verdict). The raw value
    goes under another key, which `_num` does not censor."""
    tests, adjusted = s1_tests([r | {"plateau_raw": r["plateau_steps"]} for r in rows], "plateau_raw")
    return {a: f"mean {_fmt(t.diff.mean, '+.1f')} steps, Holm p {_fmt(adjusted[a], '.4f')}, n={t.n}"
            for a, t in tests.items()}  # fmt: skip


# --- the verdicts, by the rules docs/STUDY2.md wrote before the runs --------------------------------------


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjusted p-values (None stays None and is not counted)."""
    known = sorted((p, k) for k, p in pvalues.items() if p is not None)
    out, running, m = dict.fromkeys(pvalues), 0.0, len(known)
    for i, (p, k) in enumerate(known):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def _effects(rows, ctx, arm, base, key="plateau_steps") -> dict[int, float]:
    """Per seed: base minus arm (positive: the arm lowers the measure)."""
    pick = [r for r in rows if r["stage"] == "confirm" and r["context"] == ctx and float(r["lr"]) == CONFIRM_LR[ctx]]
    a = {int(r["seed"]): _num(r, key) for r in pick if r["arm"] == arm}
    b = {int(r["seed"]): _num(r, key) for r in pick if r["arm"] == base}
    return {s: b[s] - a[s] for s in a if s in b and a[s] is not None and b[s] is not None}


def _diff_ci(x: list[float], y: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of mean(x) - mean(y), x and y resampled independently."""
    if len(x) < 3 or len(y) < 3:
        return None
    rng = np.random.default_rng(seed)
    xs, ys = np.asarray(x), np.asarray(y)
    d = rng.choice(xs, (resamples, len(xs))).mean(1) - rng.choice(ys, (resamples, len(ys))).mean(1)
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def verdicts(rows: list[dict]) -> dict[str, str]:
    from seqwarm.stats import mean_ci, paired_comparison

    v = {}
    # S1: GPT-2-family arms against the baseline at C128, plateau length, Holm across the confirmed arms.
    tests, adjusted = s1_tests(rows)
    for a, t in tests.items():
        if t.n < 2:
            v[f"S1 {a}"] = "not shown (no confirmation pairs yet)"
        elif adjusted[a] is not None and adjusted[a] < ALPHA and t.diff.mean < 0:
            v[f"S1 {a}"] = f"supported (mean {t.diff.mean:+.1f} steps, Holm p {adjusted[a]:.4f}, n={t.n})"
        elif t.diff.low is not None and t.diff.low > 0:
            v[f"S1 {a}"] = f"refuted (mean {t.diff.mean:+.1f} steps, interval above 0, n={t.n})"
        else:
            v[f"S1 {a}"] = f"not shown (mean {t.diff.mean:+.1f} steps, Holm p {_fmt(adjusted[a], '.4f')}, n={t.n})"
    # S2: SLW's effect larger at C512 than at C128, on plateau length (the verdict) and on final loss (its own).
    for key, name, unit in (("plateau_steps", "S2", "steps"), ("final_val_loss", "S2 final loss", "nats")):
        v[name] = _s2(rows, key, unit)
    # S3: where SLW has a supported effect (S2's test at C512; S1's Holm-corrected verdict at C128), melt (short
    # context, constant tokens) against batch-matched (full context, small early batch).
    for ctx in ("c512", "c128"):
        lr = CONFIRM_LR[ctx]
        slw = paired_comparison(*paired(rows, ctx, lr, "slw", "baseline", "plateau_steps"), alternative="less")
        supported = v.get("S1 slw", "").startswith("supported") if ctx == "c128" else (
            slw.p_value is not None and slw.p_value < ALPHA and slw.diff.mean < 0)  # fmt: skip
        if not supported:
            continue
        melt = paired_comparison(*paired(rows, ctx, lr, "slw-melt", "baseline", "plateau_steps"), alternative="less")
        match = paired_comparison(
            *paired(rows, ctx, lr, "batch-matched", "baseline", "plateau_steps"), alternative="less"
        )
        m, b = (t.p_value is not None and t.p_value < ALPHA and t.diff.mean < 0 for t in (melt, match))
        v["S3"] = f"at {ctx}: " + {(True, False): "the short context", (False, True): "the small early batch",
                                    (True, True): "both", (False, False): "not shown"}[(m, b)]  # fmt: skip
        if ctx == "c128":
            v["S3"] += " (batch-matched is not confirmed at C128: its screen rows are descriptive)"
        break
    else:
        v["S3"] = "not shown (SLW has no supported effect at either context)"
    # S4: SLW on top of QK-norm, final validation loss at C128.
    t = paired_comparison(
        *paired(rows, "c128", CONFIRM_LR["c128"], "slw+qk-norm", "qk-norm", "final_val_loss"), alternative="less"
    )
    if t.n < 2:
        v["S4"] = "not shown (no confirmation pairs yet)"
    elif t.p_value is not None and t.p_value < ALPHA:
        v["S4"] = f"supported (mean {t.diff.mean:+.4f} nats, p {t.p_value:.4f}, n={t.n})"
    elif t.diff.low is not None and t.diff.low > 0:
        v["S4"] = f"refuted (mean {t.diff.mean:+.4f} nats, interval above 0, n={t.n})"
    else:
        v["S4"] = f"not shown (mean {t.diff.mean:+.4f} nats, p {_fmt(t.p_value, '.4f')}, n={t.n})"
    # S5: which instrument precedes the collapse, over every collapsed run.
    collapsed = [r for r in rows if str(r.get("collapsed")) == "True"]
    if len(collapsed) < 5:
        v["S5"] = f"not shown ({len(collapsed)} collapsed runs, fewer than 5)"
    else:
        leads = {
            k: [_num(r, f"lead_{k}") for r in collapsed]
            for k in ("logit", "entropy", "loss_ratio", "adam", "grad_norm")
        }
        ok = {k: float(np.median([x for x in xs if x is not None and x >= 0])) for k, xs in leads.items()
              if sum(x is not None and x >= 0 for x in xs) >= 0.8 * len(collapsed)}  # fmt: skip
        best = max(ok, key=ok.get) if ok else None
        v["S5"] = (
            "no instrument precedes 80% of the collapses"
            if best is None
            else (
                f"{best} (median lead {ok[best]:.0f} steps over {len(collapsed)} collapsed runs); the loss ratio is "
                + ("supported" if best == "loss_ratio" else "not supported")
                + " as an early warning"
            )
        )
    # S6: SLW's plateau effect with rotary positions against learned ones, paired by seed.
    g, l6 = _effects(rows, "c128", "slw", "baseline"), _effects(rows, "c128", "llama-slw", "llama")
    diffs = [l6[s] - g[s] for s in g if s in l6]
    est = mean_ci(diffs)
    if est.low is None:
        v["S6"] = "not shown (too few pairs)"
    elif est.low > 0 or est.high < 0:
        v["S6"] = f"supported (llama minus gpt2 effect {est.mean:+.1f} steps, [{est.low:.1f}, {est.high:.1f}])"
    else:
        v["S6"] = f"not shown (llama minus gpt2 effect {est.mean:+.1f} steps, [{est.low:.1f}, {est.high:.1f}])"
    return v


def draw_lr_curves(rows: list[dict]) -> bytes:
    """PNG: per context (rows of panels), each arm's mean final validation loss and mean censored plateau over
    the screen's seeds against the LR (log axis); Llama arms dashed."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    color = dict(zip(ARMS, colormaps["tab20"].colors))  # 15 arms: 10 default colours would repeat
    fig = Figure(figsize=(13, 9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for (stage, ctx), (loss_ax, plat_ax) in zip((("screen128", "c128"), ("screen512", "c512")), axes):
        pick = [r for r in rows if r["stage"] == stage]
        for arm in [a for a in ARMS if any(r["arm"] == a for r in pick)]:
            lrs = sorted({float(r["lr"]) for r in pick if r["arm"] == arm})
            cell = {lr: [r for r in pick if r["arm"] == arm and float(r["lr"]) == lr] for lr in lrs}
            style = dict(marker="o", linewidth=1.2, color=color[arm], label=arm,
                         linestyle="--" if arm.startswith("llama") else "-")  # fmt: skip
            loss_ax.plot(lrs, [_mean([_num(r, "final_val_loss") for r in cell[lr]]) for lr in lrs], **style)
            plat_ax.plot(lrs, [_mean([_num(r, "plateau_steps") for r in cell[lr]]) for lr in lrs], **style)
        seeds = sorted({int(r["seed"]) for r in pick})
        loss_ax.set(xscale="log", xlabel="peak LR", ylabel="final val loss (mean over seeds)",
                    title=f"{ctx.upper()}: final validation loss (screen, seeds {seeds})")  # fmt: skip
        plat_ax.set(xscale="log", xlabel="peak LR", ylabel="steps on the plateau (censored at 100)",
                    title=f"{ctx.upper()}: plateau length (screen, seeds {seeds})")  # fmt: skip
        for ax in (loss_ax, plat_ax):
            ax.grid(alpha=0.3)
        if pick:
            loss_ax.legend(fontsize="x-small", ncol=2)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    return png.getvalue()


def summary(rows: list[dict]) -> dict:
    """What `seqwarm demo` prints as the confirmed answer: the C128 confirmation's means per arm and S1's verdicts
    (plus S4 and S6, which read the same runs), from the rows alone."""
    v = verdicts(rows)
    return {
        "source": "studies/study2/rows.csv, confirmation stage; python studies/study2.py summary",
        "context": "c128",
        "lr": CONFIRM_LR["c128"],
        "seeds": list(CONFIRM_SEEDS["c128"]),
        "arms": confirmation_means(rows).get("c128", {}),
        "verdicts": {k: x for k, x in v.items() if k.startswith(("S1 ", "S4", "S6"))},
    }


def _s2(rows: list[dict], key: str, unit: str) -> str:
    """S2's rule on one measure: SLW's effect (baseline minus slw, per seed) positive at C512 (one-sided p <
    0.05) and the bootstrap interval of (C512 effect) minus (C128 effect) above 0."""
    from seqwarm.stats import paired_comparison

    e128, e512 = _effects(rows, "c128", "slw", "baseline", key), _effects(rows, "c512", "slw", "baseline", key)
    t512 = paired_comparison(*paired(rows, "c512", CONFIRM_LR["c512"], "slw", "baseline", key), alternative="less")
    ci = _diff_ci(list(e512.values()), list(e128.values()))
    if ci is None or t512.n < 2:
        return "not shown (too few confirmation pairs)"
    m512, m128 = float(np.mean(list(e512.values()))), float(np.mean(list(e128.values())))
    said = f"effect C512 {m512:+.3g}, C128 {m128:+.3g} {unit}; difference interval [{ci[0]:.3g}, {ci[1]:.3g}]"
    if t512.p_value is not None and t512.p_value < ALPHA and m512 > 0 and ci[0] > 0:
        return f"supported ({said})"
    if m512 <= 0 or ci[1] < 0:
        return f"refuted ({said})"
    return f"not shown ({said}; C512 p {_fmt(t512.p_value, '.4f')})"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--stage", required=True)
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--limit", type=int, default=None)
    sub.add_parser("tables")
    sub.add_parser("summary", help=f"write {SUMMARY.name}, the confirmed answer seqwarm demo prints")
    sub.add_parser("figures", help="draw docs/figures/study2_lr.png from the rows")
    sub.add_parser("plan")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run_stage(args.stage, args.jobs, args.limit)
    elif args.cmd == "plan":
        rows = read_rows()
        for stage in ("calibration", "screen128", "screen512", "confirm"):
            specs = stage_specs(stage, rows)
            done = sum(s.config_hash() in {r["config_hash"] for r in rows} for s in specs)
            print(f"{stage}: {len(specs)} runs, {done} recorded")
    elif args.cmd == "summary":
        atomic_write(SUMMARY, json.dumps(summary(read_rows()), indent=1) + "\n")
        print(f"wrote {SUMMARY}")
    elif args.cmd == "figures":
        FIGURES.mkdir(parents=True, exist_ok=True)
        atomic_write(FIGURES / "study2_lr.png", draw_lr_curves(read_rows()))
        print(f"wrote {FIGURES / 'study2_lr.png'}")
    else:
        print(tables(read_rows()))


if __name__ == "__main__":
    main()
