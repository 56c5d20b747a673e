"""`seqwarm demo`: the proxy of docs/PROXY.md trained with and without SLW, side by side.

The baseline and SLW share every hyperparameter, the proxy's aggressive learning rate among them,
and the token budget; the SLW run differs only in its curriculum (the paper's setup, Section 5.1).
A third run, the baseline at the proxy's stable learning rate, says what the aggressive one buys.
The demo prints the side-by-side summary and writes a figure of both curves; it shows whatever the
runs measure, including where SLW does not win (docs/RESULTS.md has the multi-seed study).
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqwarm.config import PACKAGED_CONFIGS, load_config
from seqwarm.data.corpus import data_directory
from seqwarm.errors import SeqwarmError
from seqwarm.files import atomic_write
from seqwarm.lifecycle import train
from seqwarm.metrics import METRICS, eval_rows, read_metrics, train_rows
from seqwarm.report import write_report
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


def run_demo(out: Path, *, force: bool = False, overrides: list[str] = ()) -> dict[str, dict]:
    configs = {
        name: load_config(PACKAGED_CONFIGS / file, [*overrides, *extra, f"run.dir={out / name}"])
        for name, file, extra in RUNS
    }
    for cfg in configs.values():  # refuse before spending any time
        run_dir = Path(cfg.run.dir)
        if run_dir.exists() and any(run_dir.iterdir()) and not force:
            raise SeqwarmError(f"{run_dir}: an earlier demo run is there; use --force to replace it or --out elsewhere")
    base = configs["baseline"]
    print(
        f"seqwarm demo: the same GPT, batch size, learning rate ({base.train.lr:g}) and token budget, "
        f"with and without SLW, then the baseline at the stable learning rate {STABLE_LR:g}"
    )
    data_directory(base.data.path, progress=True)  # the corpus (and its tokenizer) before the first run
    summaries = {}
    for name, cfg in configs.items():
        c = cfg.curriculum
        what = (
            f"{c.length_axis().describe()} {c.seqlen_start} -> {c.seqlen_end} over T={c.duration} steps"
            if c.length_axis().varies
            else f"full length {c.seqlen_end}"
        )
        print(
            f"\n[{name}] {what}, batch {cfg.train.global_batch_size}, lr {cfg.train.lr:g}, {cfg.train.max_tokens:,} tokens"
        )
        summaries[name] = train(cfg, force=force)
    print()
    print(format_comparison({k: summaries[k] for k in ("baseline", "slw")}))
    print(stable_line(summaries))
    runs = {name: Path(cfg.run.dir) for name, cfg in configs.items()}
    figure = out / FIGURE
    atomic_write(figure, draw_demo({name: read_metrics(d / METRICS) for name, d in runs.items()}))
    report = write_report(list(runs.values()), out / "report")
    print(f"\nruns: {', '.join(str(d) for d in runs.values())} (metrics.jsonl, summary.json, checkpoints/)")
    print(f"figure: {figure} (training loss with the spikes marked; validation perplexity against tokens)")
    print(f"report: {report} (stability tables and figures)")
    return summaries


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
    ]
    names = list(summaries)
    table = [["", *names]]
    for label, key, fmt in rows:
        table.append([label, *(fmt.format(summaries[n][key]) if summaries[n][key] is not None else "-" for n in names)])
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
    loss_ax.set(xlabel="tokens", ylabel="training loss", title="Training loss at the aggressive LR")
    ppl_ax.set(xlabel="tokens", ylabel="validation perplexity", title="Validation perplexity", yscale="log")
    for ax in (loss_ax, ppl_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    return png.getvalue()
