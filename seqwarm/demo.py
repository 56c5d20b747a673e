"""`seqwarm demo`: Study 2's headline on the proxy, one seed. Why small GPT runs fail at an aggressive learning
rate, and what fixes it (docs/STUDY2.md): the baseline, SLW and QK-norm at context 128 and LR 3e-2, the
confirmation stage's runs exactly (the same overrides of the proxy, from seqwarm.study_arms, and its first seed).

Every run has the stability instruments on at every step, so the demo prints beside the loss what the loss does
not show: layer 0's max attention logit and attention entropy, and the step its attention collapsed. "this seed's
reading" is computed from the runs, one seed; under it the demo prints the confirmation's answer over its seeds
11-17 ("Study 2's reading", from the shipped `study2_confirmed.json`, which tests/test_study2.py checks against the
study's committed rows) and whether this seed agrees with it.

On a CPU with two or more cores free, the three runs train at once, one thread and one process each: the proxy is
too small to keep two OpenMP threads busy, so side by side gives more tokens per second than one run on every core
(docs/PERFORMANCE.md, "Threads on a busy machine"). `--jobs 1` trains them one after another.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqwarm.config import PACKAGED_CONFIGS, load_config
from seqwarm.data.corpus import data_directory
from seqwarm.errors import SeqwarmError
from seqwarm.files import atomic_write, open_append
from seqwarm.instruments import COLLAPSE_ENTROPY, COLLAPSE_LOGIT
from seqwarm.lifecycle import train
from seqwarm.metrics import METRICS, read_metrics, train_rows
from seqwarm.report import write_report
from seqwarm.runtime import default_num_threads
from seqwarm.study_arms import BASE_CONFIG, CONFIRM_LR, CONFIRM_SEEDS, STEPS, arm_overrides, run_measures
from seqwarm.tables import text_table

# The arms that carry Study 2's headline, at the confirmation's C128 LR and its first seed: with the corpus and CPU
# of a study row, a demo run computes what that row measured (CPU training is deterministic).
ARMS = ("baseline", "slw", "qk-norm")
CONTEXT = "c128"
LR = CONFIRM_LR[CONTEXT]
SEED = CONFIRM_SEEDS[CONTEXT][0]
FIGURE = "demo.png"
SPIKE = 1.2  # the paper's loss-ratio spike threshold (Table 1's lower one)
# The confirmation stage's answer at these settings (seeds 11-17), written from the committed rows by
# `python studies/study2.py summary`; tests/test_study2.py checks that it is what the rows give.
CONFIRMED = Path(__file__).with_name("study2_confirmed.json")


def demo_overrides(arm: str) -> list[str]:
    """The overrides of the proxy for one demo run: Study 2's, for that arm at C128, LR 3e-2, seed 11."""
    return arm_overrides(CONTEXT, arm, LR, SEED)


def run_demo(out: Path, *, force: bool = False, overrides: list[str] = (), jobs: int | None = None) -> dict[str, dict]:
    """Train the three arms, print their table and reading, draw the figure and the report; returns the measures."""
    base = PACKAGED_CONFIGS / f"{BASE_CONFIG}.yaml"
    runs_args = {arm: [*demo_overrides(arm), *overrides, f"run.dir={out / arm}"] for arm in ARMS}
    files = dict.fromkeys(ARMS, base)
    configs = {arm: load_config(base, runs_args[arm]) for arm in ARMS}
    for cfg in configs.values():  # refuse before spending any time
        run_dir = Path(cfg.run.dir)
        if run_dir.exists() and any(run_dir.iterdir()) and not force:
            raise SeqwarmError(f"{run_dir}: an earlier demo run is there; use --force to replace it or --out elsewhere")
    if jobs is not None and jobs < 1:
        raise SeqwarmError(f"--jobs: must be at least 1, got {jobs}")
    print(
        f"seqwarm demo: why the proxy fails at an aggressive learning rate, and what fixes it (Study 2, "
        f"docs/STUDY2.md). Its arms {', '.join(ARMS)} at context {CONTEXT[1:]}, LR {LR:g} (the confirmation's), "
        f"seed {SEED}, attention instruments on at every step."
    )
    if overrides:
        print(f"your overrides {' '.join(overrides)} apply to all three: these are no longer the study's runs")
    steps = {arm: cfg.train.max_tokens // (cfg.train.global_batch_size * cfg.curriculum.seqlen_end)
             for arm, cfg in configs.items() if cfg.train.max_tokens}  # fmt: skip
    if any(n != STEPS for n in steps.values()):
        print(f"run length: {max(steps.values())} full-length steps, not the study's {STEPS}")
    data_directory(configs["baseline"].data.path, progress=True)  # the corpus (and its tokenizer) before the first run
    for arm, cfg in configs.items():
        c = cfg.curriculum
        what = (
            f"{c.length_axis().describe()} {c.seqlen_start} -> {c.seqlen_end} over T={c.duration} steps"
            if c.length_axis().varies
            else f"full length {c.seqlen_end}"
        )
        qk = ", QK-norm" if cfg.model.qk_norm else ""
        print(
            f"[{arm}] {what}{qk}, batch {cfg.train.global_batch_size}, lr {cfg.train.lr:g}, {cfg.train.max_tokens:,} tokens"
        )
    jobs = demo_jobs(configs, overrides) if jobs is None else jobs
    if jobs > 1:
        train_side_by_side(files, runs_args, out, force=force, jobs=jobs)
    else:
        for arm, cfg in configs.items():
            print(f"\n[{arm}]")
            train(cfg, force=force)
    runs = {arm: Path(cfg.run.dir) for arm, cfg in configs.items()}
    measures = {arm: run_measures(d) for arm, d in runs.items()}
    print()
    print(format_comparison(measures))
    print()
    for line in reading(measures):
        print(line)
    print(
        f"\nOne seed ({SEED}); docs/RESULTS.md's Study 2 has the confirmed answer over the confirmation's seeds "
        f"{CONFIRM_SEEDS[CONTEXT][0]}-{CONFIRM_SEEDS[CONTEXT][-1]}."
    )
    print()
    for line in confirmed_lines(json.loads(CONFIRMED.read_text()), measures):
        print(line)
    figure = out / FIGURE
    atomic_write(figure, draw_demo({arm: read_metrics(d / METRICS) for arm, d in runs.items()}, measures))
    report = write_report(list(runs.values()), out / "report")
    print(f"\nruns: {', '.join(str(d) for d in runs.values())} (metrics.jsonl, summary.json, checkpoints/)")
    print(f"figure: {figure} (training loss; layer 0's max attention logit and entropy, per step)")
    print(f"report: {report} (stability tables and figures)")
    return measures


def demo_jobs(configs: dict, overrides: list[str]) -> int:
    """How many runs train at once: all of them, one thread each, with two or more CPU cores free; 1 when the user
    chose the threads (train.num_threads, OMP_NUM_THREADS), on a GPU, or with fewer than two cores free.

    All three at once even on 2 cores: single-threaded processes share cores without OpenMP's spinning, and the
    proxy measured 8.8K tokens/s for two one-thread runs side by side against 7.2K for one two-thread run
    (docs/PERFORMANCE.md, "The proxy"), so three runs take about 3/8.8 of the time against 3/7.2 back to back; two
    at a time would leave the third alone on one thread, which gains almost nothing."""
    if any(o.startswith("train.num_threads=") for o in overrides) or "OMP_NUM_THREADS" in os.environ:
        return 1
    if any(cfg.train.device != "cpu" for cfg in configs.values()):
        return 1
    return len(configs) if default_num_threads() >= 2 else 1


def _train_arm(config: Path, overrides: list[str], force: bool, log: Path) -> dict:
    """One run in its own process, one thread, its output in `log` (run in a spawned worker)."""
    with open_append(log) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        return train(load_config(config, [*overrides, "train.num_threads=1", "log.progress=false"]), force=force)


def train_side_by_side(files: dict, runs_args: dict, out: Path, *, force: bool, jobs: int) -> dict[str, dict]:
    """The runs in `jobs` processes at once, one thread each; returns their summaries in the order of ARMS."""
    out.mkdir(parents=True, exist_ok=True)
    logs = {name: out / f"{name}.log" for name in files}
    print(f"\ntraining {', '.join(files)} side by side, {jobs} at a time, one thread each; output in {out}/NAME.log")
    start, summaries = time.monotonic(), {}
    # spawn, not fork: a forked child would inherit this process's torch thread pool and any locks held in it.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_arm, files[name], runs_args[name], force, logs[name]): name for name in files}
        for future in as_completed(futures):
            name = futures[future]
            try:
                summaries[name] = future.result()
            except SeqwarmError as e:
                raise SeqwarmError(f"demo run {name}: {e} (its output: {logs[name]})") from e
            print(f"[{name}] done after {time.monotonic() - start:.0f} s")
    return {name: summaries[name] for name in files}


def _plateau(m: dict) -> str:
    if m["plateau_steps"] is None:
        return "-"
    return str(m["plateau_steps"]) if m["escaped"] else f"> {m['plateau_steps']}"


def _collapse(m: dict) -> str:
    c = m["collapse"]
    return f"layer {c['layer']} at step {c['start']}" if c else "none"


def _num(fmt: str):
    return lambda m, key: "-" if m.get(key) is None else fmt.format(m[key])


ROWS = (  # (label, how one run's measures print)
    ("final val loss", lambda m: _num("{:.3f}")(m, "final_val_loss")),
    ("steps to leave the plateau", _plateau),
    ("max loss ratio", lambda m: _num("{:.3f}")(m, "max_loss_ratio")),
    ("layer 0 max attention logit", lambda m: _num("{:,.1f}")(m, "layer0_logit_max")),
    ("layer 0 min attention entropy", lambda m: _num("{:.3f}")(m, "layer0_entropy_min")),
    ("attention collapse", _collapse),
    ("wall time (s)", lambda m: _num("{:.0f}")(m, "wall_s")),
)


def format_comparison(measures: dict[str, dict]) -> str:
    """The arms side by side, one column each (measures from `study_arms.run_measures`)."""
    names = list(measures)
    table = [["", *names], *([label, *(show(measures[n]) for n in names)] for label, show in ROWS)]
    return text_table(table, right=range(1, len(names) + 1), rule=False)


def reading(measures: dict[str, dict]) -> list[str]:
    """One line per arm and a verdict: which instrument explains the failure, from the runs' own numbers.

    The verdict names the attention instruments when every arm whose attention collapsed stayed on the unigram
    plateau longer than every arm whose did not; it says when the paper's loss ratio stayed under its spike
    threshold through those collapses (the probe of issue 28 saw 1.06)."""
    lines = []
    for arm, m in measures.items():
        ratio = m["max_loss_ratio"]
        plateau = (
            f"left the plateau at step {m['plateau_steps']}"
            if m["escaped"]
            else f"still on the plateau after {m['plateau_steps']} steps"
        )
        if c := m["collapse"]:
            flag = f"its loss ratio stayed <= {ratio:.2f}" if ratio is not None and ratio <= SPIKE else (
                f"its loss ratio reached {ratio:.2f}" if ratio is not None else "no loss ratio")  # fmt: skip
            lines.append(
                f"{arm}: layer {c['layer']} collapsed at step {c['start']} (max logit {c['max_logit']:,.0f}, "
                f"entropy {c['min_entropy']:.2f}) while {flag}; {plateau}"
            )
        else:
            logit, ent = m["layer0_logit_max"], m["layer0_entropy_min"]
            detail = f" (layer 0 max logit {logit:,.1f}, min entropy {ent:.2f})" if None not in (logit, ent) else ""
            lines.append(f"{arm}: no attention collapse{detail}; {plateau}")
    collapsed = [a for a, m in measures.items() if m["collapse"]]
    clean = [a for a in measures if a not in collapsed]
    plateau = {a: m["plateau_steps"] if m["plateau_steps"] is not None else float("inf") for a, m in measures.items()}
    if not collapsed:
        lines.append("this seed's reading: no arm's attention collapsed in this seed, so the attention instruments explain no "
                     "difference between the arms here")  # fmt: skip
    elif not clean:
        lines.append(f"this seed's reading: every arm's attention collapsed in this seed ({', '.join(collapsed)})")
    elif min(plateau[a] for a in collapsed) > max(plateau[a] for a in clean):
        quiet = [a for a in collapsed if (measures[a]["max_loss_ratio"] or 0) <= SPIKE]
        lines.append(
            f"this seed's reading: the attention instruments (max logit and entropy) explain the failure: {', '.join(collapsed)} "
            f"collapsed and stayed on the unigram plateau longer than {', '.join(clean)}, which did not"
            + (f"; the loss ratio, the paper's instrument, stayed under {SPIKE} in {', '.join(quiet)}" if quiet else "")
        )
    else:  # say which runs break the pattern: a collapsed run that left the plateau no later than a clean one
        slowest = max(clean, key=plateau.get)
        early = [a for a in collapsed if plateau[a] <= plateau[slowest]]
        lines.append(
            f"this seed's reading: in this seed collapse alone does not explain the plateau: {', '.join(early)} collapsed yet left "
            f"it by step {max(plateau[a] for a in early)}, no later than {slowest} (no collapse, step "
            f"{measures[slowest]['plateau_steps']}); docs/RESULTS.md has the seeds together"
        )
    return lines


def confirmed_lines(confirmed: dict, measures: dict[str, dict]) -> list[str]:
    """Study 2's confirmed answer for the demo's arms (`CONFIRMED`), and where this seed agrees with it: for each
    arm, whether it left the plateau before or after the baseline here and on average over the confirmation's
    seeds (plateau censored at the study's 100 steps, as the study's tests read it)."""
    arms, seeds = confirmed["arms"], confirmed["seeds"]
    if not all(a in arms for a in measures):
        return [f"Study 2's confirmation (seeds {seeds[0]}-{seeds[-1]}) has not run these arms yet (docs/STUDY2.md): "
                "this seed is all the demo can show"]  # fmt: skip
    lines = [f"Study 2's answer, the confirmation at these settings (context {confirmed['context'][1:]}, LR "
             f"{confirmed['lr']:g}, seeds {seeds[0]}-{seeds[-1]}, paired by seed; docs/RESULTS.md):"]  # fmt: skip
    for arm in measures:
        c = arms[arm]
        verdict = confirmed["verdicts"].get(f"S1 {arm}")
        lines.append(
            f"  {arm}: mean plateau {c['plateau_mean']:.1f} steps (left it within {STEPS} in {c['escaped']}/{c['n']}), "
            f"attention collapsed in {c['collapsed']}/{c['n']}, mean final val loss {c['final_val_loss_mean']:.3f}"
            + (f"; shortens the plateau (S1): {verdict}" if verdict else "")
        )
    lines.append(confirmed_reading(confirmed, list(measures)))
    base = measures.get("baseline")
    if base is None or base["plateau_steps"] is None:
        return lines
    here = {a: min(m["plateau_steps"], STEPS) for a, m in measures.items() if m["plateau_steps"] is not None}
    agree, differ = [], []
    for arm in here.keys() - {"baseline"}:
        seed_sign = _sign(here[arm] - here["baseline"])
        mean_sign = _sign(arms[arm]["plateau_mean"] - arms["baseline"]["plateau_mean"])
        said = f"{arm} left the plateau {_ORDER[seed_sign]} the baseline here, {_ORDER[mean_sign]} it on average"
        (agree if seed_sign == mean_sign else differ).append(said)
    lines.append(
        "this seed against the confirmation: "
        + ("agrees" if not differ else "differs, as single seeds do")
        + f" ({'; '.join(sorted(differ) + sorted(agree))})"
    )
    return lines


_ORDER = {-1: "before", 0: "with", 1: "after"}
_S1 = {"supported": "shortened it", "refuted": "lengthened it", "not shown": "did not shorten it by the test"}


def confirmed_reading(confirmed: dict, names: list[str]) -> str:
    """The confirmation's reading in one line, from its numbers and S1's verdicts alone: which arms kept attention
    from collapsing where the baseline's collapsed, what each did to the plateau, and whether preventing the
    collapse was enough to leave the plateau sooner."""
    arms, verdicts = confirmed["arms"], confirmed["verdicts"]
    base = arms["baseline"]
    said = {a: next((w for k, w in _S1.items() if verdicts.get(f"S1 {a}", "").startswith(k)), None) for a in names}
    parts = [f"{a} {w}" for a, w in said.items() if w]
    kept = [a for a in names if a != "baseline" and arms[a]["collapsed"] == 0 and base["collapsed"] > base["n"] / 2]
    text = f"Study 2's reading: the baseline's attention collapsed in {base['collapsed']}/{base['n']} seeds"
    if kept:
        text += f", {' and '.join(kept)}'s in none"
    text += f"; on the plateau, {', '.join(parts)} (S1)" if parts else ""
    if kept and all(said[a] == _S1["supported"] for a in kept):
        text += "; preventing the collapse shortened the plateau: the attention instruments explain the failure"
    elif kept:
        text += (
            "; preventing the collapse did not shorten the plateau: at this LR the collapse is not what keeps "
            "the model on it"
        )
    return text


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def draw_demo(rows: dict[str, list[dict]], measures: dict[str, dict]) -> bytes:
    """The demo's figure as PNG, three panels per step: training loss (the unigram loss dashed), layer 0's max
    attention logit (log scale) and its attention entropy, with the collapse thresholds and each collapse's onset."""
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, logit_ax, ent_ax = fig.subplots(1, 3)
    for arm, run in rows.items():
        train = train_rows(run)
        (line,) = loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], linewidth=1.2, label=arm)
        color = line.get_color()
        for ax, key in ((logit_ax, "diag/attn/0/logit_max"), (ent_ax, "diag/attn/0/entropy")):
            points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), linewidth=1.2, color=color, label=arm)
        if (c := measures[arm]["collapse"]) is not None:
            logit_ax.axvline(c["start"], color=color, linestyle=":", linewidth=1)
    unigram = next((m["unigram_loss"] for m in measures.values() if m["unigram_loss"] is not None), None)
    if unigram is not None:
        loss_ax.axhline(unigram, color="gray", linestyle="--", linewidth=1, label="unigram loss (the plateau)")
    logit_ax.axhline(COLLAPSE_LOGIT, color="gray", linestyle="--", linewidth=1, label=f"collapse: > {COLLAPSE_LOGIT:g}")
    ent_ax.axhline(
        COLLAPSE_ENTROPY, color="gray", linestyle="--", linewidth=1, label=f"collapse: < {COLLAPSE_ENTROPY:g}"
    )
    loss_ax.set(xlabel="step", ylabel="training loss", title=f"Training loss, LR {LR:g}")
    logit_ax.set(xlabel="step (dotted: collapse onset)", ylabel="max attention logit (log)",
                 title="Layer 0: max attention logit", yscale="log")  # fmt: skip
    ent_ax.set(xlabel="step", ylabel="entropy (1 uniform, 0 one-hot)", title="Layer 0: attention entropy", ylim=(0, 1))
    for ax in (loss_ax, logit_ax, ent_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    return png.getvalue()
