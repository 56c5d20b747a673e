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

HERE = Path(__file__).resolve().parent / "study2"
ROWS = HERE / "rows.csv"
THRESHOLDS = HERE / "thresholds.json"
RUNS = Path(os.environ.get("SEQWARM_STUDY2_RUNS", "runs/study2"))

# --- the protocol's grid (docs/STUDY2.md), written once ----------------------------------------------------

STEPS = 100
COMMON = [
    "train.warmup_steps=10",
    "train.min_lr=1e-4",
    "train.num_threads=1",
    "curriculum.seqlen_start=8",
    "curriculum.duration=40",
    "monitor.instruments=true",
    "monitor.every=1",
    "eval.max_sequences=32",
    "checkpoint.every_steps=null",
    "log.progress=false",
]
CONTEXTS = {
    "c128": ["curriculum.seqlen_end=128", "model.max_seqlen=128", "train.global_batch_size=32"]
    + ["train.micro_batch_size=32", f"train.max_tokens={STEPS * 32 * 128}", f"eval.every_tokens={4 * 32 * 128}"],
    "c512": ["curriculum.seqlen_end=512", "model.max_seqlen=512", "train.global_batch_size=16"]
    + ["train.micro_batch_size=16", f"train.max_tokens={STEPS * 16 * 512}", f"eval.every_tokens={4 * 16 * 512}"],
}
SLW = ["curriculum.length=slw"]
QK = ["model.qk_norm=true"]
LLAMA = ["model.family=llama"]
ARMS: dict[str, list[str]] = {
    "baseline": [],
    "long-warmup": ["train.warmup_steps=40"],
    "slw": SLW,
    "slw-melt": [*SLW, "curriculum.packing=melt"],
    "batch-matched": ["curriculum.batch=matched"],
    "window": ["curriculum.window=warmup"],
    "slw-adaptive": [*SLW, "curriculum.pacing=adaptive"],
    "qk-norm": QK,
    "z-loss": ["train.z_loss=1e-4"],
    "skip-step": ["monitor.skip_spikes=true"],
    "zclip": ["train.grad_clip_mode=zscore"],
    "slw+qk-norm": [*SLW, *QK],
    "llama": LLAMA,
    "llama-slw": [*LLAMA, *SLW],
    "llama-qk-norm": [*LLAMA, *QK],
}
AGGRESSIVE = (1e-2, 3e-2, 1e-1)
CONFIRM_LR = {"c128": 3e-2, "c512": 1e-2}
CONFIRM_SEEDS = {"c128": tuple(range(11, 18)), "c512": tuple(range(11, 16))}
ALWAYS_CONFIRMED = {
    "c128": ("baseline", "slw", "slw-melt", "qk-norm", "slw+qk-norm", "llama", "llama-slw"),
    "c512": ("baseline", "slw", "slw-melt", "qk-norm", "batch-matched"),
}
PLATEAU_MARGIN = 0.3  # nats below the unigram loss
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
        return [*COMMON, *CONTEXTS[self.context], *ARMS[self.arm], f"train.lr={self.lr}", f"run.seed={self.seed}"]

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
    mean = {a: _mean([float(r["plateau_steps"]) for r in screen if r["arm"] == a]) for a in ARMS}
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


def plateau_steps(evals: list[dict], unigram: float, steps: int) -> int:
    """Training steps until validation loss is first PLATEAU_MARGIN below the unigram loss (censored at the run)."""
    for r in evals:
        if _finite(r.get("val/loss")) and r["val/loss"] <= unigram - PLATEAU_MARGIN:
            return int(r["step"])
    return max(steps, STEPS)


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


def read_rows() -> list[dict]:
    if not ROWS.exists():
        return []
    with open(ROWS, newline="") as f:
        return list(csv.DictReader(f))


def append_row(row: dict) -> None:
    """One line appended (the file's header written first when new); rows are never rewritten."""
    HERE.mkdir(parents=True, exist_ok=True)
    new = not ROWS.exists()
    fields = list(row) if new else next(csv.reader(open(ROWS)))
    with open(ROWS, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
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
    """The corpus's unigram loss on its validation split (the best context-free model, train counts)."""
    from seqwarm.config import load_config
    from seqwarm.data.corpus import open_data
    from seqwarm.instruments import unigram_entropy

    data = open_data(load_config("proxy"), progress=True)
    meta = getattr(data, "meta", {}) or {}
    if "unigram_loss" in meta:
        return float(meta["unigram_loss"]["val"] if isinstance(meta["unigram_loss"], dict) else meta["unigram_loss"])
    # The entropy of the train split's unigram distribution: the loss of the best context-free predictor.
    return float(unigram_entropy(np.asarray(data.splits["train"]), data.vocab_size))


def train_one(spec: Spec) -> Path:
    run_dir = RUNS / spec.name
    cmd = [sys.executable, "-m", "seqwarm", "train", "proxy", *spec.overrides(), f"run.dir={run_dir}", "--force"]
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
        THRESHOLDS.write_text(json.dumps(calibrate(read_rows()), indent=1) + "\n")


# --- tables and verdicts -----------------------------------------------------------------------------------


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def _median(xs: list) -> float | None:
    vals = [x for x in xs if _finite(x)]
    return float(np.median(vals)) if vals else None


def _num(row: dict, key: str) -> float | None:
    try:
        v = float(row[key])
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def paired(rows: list[dict], ctx: str, lr: float, arm: str, base: str, key: str, stage: str = "confirm"):
    """Per-seed values of `arm` and `base` (seeds both have), for `seqwarm.stats.paired_comparison`."""
    pick = [r for r in rows if r["stage"] == stage and r["context"] == ctx and float(r["lr"]) == lr]
    a = {int(r["seed"]): _num(r, key) for r in pick if r["arm"] == arm}
    b = {int(r["seed"]): _num(r, key) for r in pick if r["arm"] == base}
    # A diverged run has no final loss: it ranks worst (the protocol), here as +inf-like: the initial loss.
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    return [a[s] for s in seeds], [b[s] for s in seeds]


def tables(rows: list[dict]) -> str:
    from seqwarm.stats import paired_comparison
    from seqwarm.tables import markdown_table

    out = [f"Rows: {len(rows)} runs recorded in {ROWS.relative_to(HERE.parent.parent)}.", ""]
    for stage in ("calibration", "screen128", "screen512", "confirm"):
        srows = [r for r in rows if r["stage"] == stage]
        out.append(f"## {stage}: {len(srows)} of {len(stage_specs(stage, rows))} runs")
        if not srows:
            out.append("")
            continue
        table = []
        for r in sorted(srows, key=lambda r: (r["context"], r["arm"], float(r["lr"]), int(r["seed"]))):
            table.append(
                [
                    r["context"],
                    r["arm"],
                    f"{float(r['lr']):g}",
                    r["seed"],
                    r["plateau_steps"],
                    _fmt(_num(r, "final_val_loss")),
                    r.get("collapsed", ""),
                    _fmt(_num(r, "max_attn_logit"), ".1f"),
                    _fmt(_num(r, "min_attn_entropy")),
                    _fmt(_num(r, "max_loss_ratio")),
                ]
            )
        header = ["ctx", "arm", "lr", "seed", "plateau", "final val", "collapsed", "max logit", "min H", "max ratio"]
        out += [markdown_table(header, table), ""]
    confirm = [r for r in rows if r["stage"] == "confirm"]
    if confirm:
        out.append("## Paired against the baseline (confirmation)")
        table = []
        for ctx in ("c128", "c512"):
            for arm in sorted({r["arm"] for r in confirm if r["context"] == ctx} - {"baseline"}):
                for key in ("plateau_steps", "final_val_loss"):
                    a, b = paired(rows, ctx, CONFIRM_LR[ctx], arm, "baseline", key)
                    p = paired_comparison(a, b, alternative="less")
                    table.append([ctx, arm, key, str(len(a)), _fmt(p.mean), _fmt(p.p_value, ".4f")])
        out += [markdown_table(["ctx", "arm", "measure", "n", "mean diff", "one-sided p"], table), ""]
    return "\n".join(out)


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
    else:
        print(tables(read_rows()))


if __name__ == "__main__":
    main()
