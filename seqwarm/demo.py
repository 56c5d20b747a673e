"""`seqwarm demo`: the proxy of docs/PROXY.md trained with and without SLW, side by side.

The baseline and SLW share every hyperparameter, the proxy's aggressive learning rate among them,
and the token budget; the SLW run differs only in its curriculum (the paper's setup, Section 5.1).
A third run, the baseline at the proxy's stable learning rate, says what the aggressive one buys.
The demo prints the side-by-side summary and writes a figure of the curves; it shows whatever the
runs measure, including where SLW does not win (docs/RESULTS.md has the multi-seed study).

On a CPU with two or more cores free, the three runs train at once, one thread and one process each: the proxy is
too small to keep two OpenMP threads busy, so side by side gives more tokens per second than one run on every core
(docs/PERFORMANCE.md, "Threads on a busy machine"). `--jobs 1` trains them one after another.
"""

from __future__ import annotations

import contextlib
import io
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
from seqwarm.lifecycle import train
from seqwarm.metrics import METRICS, eval_rows, read_metrics, train_rows
from seqwarm.report import write_report
from seqwarm.runtime import default_num_threads
from seqwarm.tables import text_table

# (name, config, overrides): the two runs of the comparison, then the reference at the stable LR.
STABLE_LR = 3e-3  # the baseline's best LR of the proxy study's grid (docs/RESULTS.md)
RUNS = (
    ("baseline", "demo-baseline.yaml", ()),
    ("slw", "demo-slw.yaml", ()),
    ("stable-lr", "demo-baseline.yaml", (f"train.lr={STABLE_LR}",)),
)
FIGURE = "demo.png"
SPIKE = 1.2  # the loss ratio above which a step is marked as a spike (Table 1's lower threshold)


def run_demo(out: Path, *, force: bool = False, overrides: list[str] = (), jobs: int | None = None) -> dict[str, dict]:
    runs_args = {name: [*overrides, *extra, f"run.dir={out / name}"] for name, _, extra in RUNS}
    files = {name: PACKAGED_CONFIGS / file for name, file, _ in RUNS}
    configs = {name: load_config(files[name], runs_args[name]) for name in files}
    for cfg in configs.values():  # refuse before spending any time
        run_dir = Path(cfg.run.dir)
        if run_dir.exists() and any(run_dir.iterdir()) and not force:
            raise SeqwarmError(f"{run_dir}: an earlier demo run is there; use --force to replace it or --out elsewhere")
    if jobs is not None and jobs < 1:
        raise SeqwarmError(f"--jobs: must be at least 1, got {jobs}")
    base = configs["baseline"]
    print(
        f"seqwarm demo: the same GPT, batch size, learning rate ({base.train.lr:g}) and token budget, "
        f"with and without SLW, then the baseline at the stable learning rate {STABLE_LR:g}"
    )
    data_directory(base.data.path, progress=True)  # the corpus (and its tokenizer) before the first run
    for name, cfg in configs.items():
        c = cfg.curriculum
        what = (
            f"{c.length_axis().describe()} {c.seqlen_start} -> {c.seqlen_end} over T={c.duration} steps"
            if c.length_axis().varies
            else f"full length {c.seqlen_end}"
        )
        print(
            f"[{name}] {what}, batch {cfg.train.global_batch_size}, lr {cfg.train.lr:g}, {cfg.train.max_tokens:,} tokens"
        )
    jobs = demo_jobs(configs, overrides) if jobs is None else jobs
    if jobs > 1:
        summaries = train_side_by_side(files, runs_args, out, force=force, jobs=jobs)
    else:
        summaries = {}
        for name, cfg in configs.items():
            print(f"\n[{name}]")
            summaries[name] = train(cfg, force=force)
    print()
    print(format_comparison(summaries))
    print(stable_line(summaries))
    runs = {name: Path(cfg.run.dir) for name, cfg in configs.items()}
    figure = out / FIGURE
    atomic_write(figure, draw_demo({name: read_metrics(d / METRICS) for name, d in runs.items()}))
    report = write_report(list(runs.values()), out / "report")
    print(f"\nruns: {', '.join(str(d) for d in runs.values())} (metrics.jsonl, summary.json, checkpoints/)")
    print(f"figure: {figure} (training loss with the spikes marked, against log tokens; validation perplexity)")
    print(f"report: {report} (stability tables and figures)")
    return summaries


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
    """The runs in `jobs` processes at once, one thread each; returns their summaries in the order of RUNS."""
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


def format_comparison(summaries: dict[str, dict]) -> str:
    rows = [
        ("final val loss", "final_val_loss", "{:.3f}"),
        ("final val ppl", "final_val_ppl", "{:.1f}"),
        ("best val ppl", "best_val_ppl", "{:.1f}"),
        ("tokens", "tokens", "{:,}"),
        ("steps", "steps", "{:,}"),
        ("wall time (s)", "wall_s", "{:.0f}"),
        ("max loss ratio", "max_loss_ratio", "{:.3f}"),
        ("steps with loss ratio > 1.2", "steps_loss_ratio_gt_1.2", "{:,}"),
        ("steps with loss ratio > 1.5", "steps_loss_ratio_gt_1.5", "{:,}"),
    ]
    names = list(summaries)
    table = [["", *names]]
    for label, key, fmt in rows:
        values = [summaries[n].get(key) for n in names]
        if all(v is None for v in values):
            continue  # a summary from before the row existed: leave the row out rather than print dashes
        table.append([label, *(fmt.format(v) if v is not None else "-" for v in values)])
    return text_table(table, right=range(1, len(names) + 1), rule=False)


def stable_line(summaries: dict[str, dict]) -> str:
    """One line: the stable LR's final validation perplexity against the aggressive runs'."""
    ppl = {name: s["final_val_ppl"] for name, s in summaries.items()}
    if any(v is None for v in ppl.values()):
        return "stable LR: no final validation perplexity to compare (a run has none)"
    best = min(ppl, key=ppl.get)
    verdict = "the best of the three" if best == "stable-lr" else f"behind {best}"
    return (
        f"stable LR {STABLE_LR:g}, baseline: final val ppl {ppl['stable-lr']:.1f}, {verdict} "
        f"(baseline {ppl['baseline']:.1f}, slw {ppl['slw']:.1f} at the aggressive LR)"
    )


def draw_demo(rows: dict[str, list[dict]]) -> bytes:
    """The demo's figure as PNG: training loss against tokens of the runs at the aggressive LR, with
    every step whose loss ratio exceeds SPIKE marked, and validation perplexity against tokens of all runs."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, ppl_ax = fig.subplots(1, 2)
    for name, run in rows.items():
        train = train_rows(run)
        if name != "stable-lr":
            (line,) = loss_ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], linewidth=1, label=name)
            spikes = [r for r in train if (r.get("loss_ratio") or 0) > SPIKE]
            if spikes:
                loss_ax.scatter(
                    [r["tokens"] for r in spikes], [r["loss"] for r in spikes], marker="x", s=30,
                    color=line.get_color(), label=f"{name}: loss ratio > {SPIKE} ({len(spikes)})", zorder=3,
                )  # fmt: skip
        evals = eval_rows(run)
        ppl_ax.plot(
            [r["tokens"] for r in evals], [r["val/ppl"] for r in evals], marker=".", linewidth=1,
            label=name, linestyle=":" if name == "stable-lr" else "-",
        )  # fmt: skip
    # Log tokens: the spikes come in the first few percent of the tokens, which a linear axis squeezes to its edge.
    loss_ax.set(xlabel="tokens (log)", ylabel="training loss", title="Training loss at the aggressive LR", xscale="log")
    ppl_ax.set(xlabel="tokens", ylabel="validation perplexity", title="Validation perplexity", yscale="log")
    for ax in (loss_ax, ppl_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    return png.getvalue()
