"""`seqwarm demo`: a tiny GPT trained with and without SLW on the builtin corpus, side by side.

Both runs share every hyperparameter, an aggressive batch size and learning rate among them, and
the token budget; the SLW run differs only in its curriculum (the paper's setup, Section 5.1).
"""

from __future__ import annotations

from pathlib import Path

from seqwarm.config import PACKAGED_CONFIGS, load_config
from seqwarm.data.builtin.corpus import ensure_builtin
from seqwarm.errors import SeqwarmError
from seqwarm.report import write_report
from seqwarm.tables import text_table
from seqwarm.trainer import train

RUNS = (("baseline", "demo-baseline.yaml"), ("slw", "demo-slw.yaml"))


def run_demo(out: Path, *, force: bool = False, overrides: list[str] = ()) -> dict[str, dict]:
    configs = {name: load_config(PACKAGED_CONFIGS / file, [*overrides, f"run.dir={out / name}"]) for name, file in RUNS}
    for cfg in configs.values():  # refuse before spending any time
        run_dir = Path(cfg.run.dir)
        if run_dir.exists() and any(run_dir.iterdir()) and not force:
            raise SeqwarmError(f"{run_dir}: an earlier demo run is there; use --force to replace it or --out elsewhere")
    print("seqwarm demo: the same tiny GPT, batch size, learning rate and token budget, with and without SLW")
    ensure_builtin(progress=True)
    summaries = {}
    for name, cfg in configs.items():
        c = cfg.curriculum
        what = (
            f"SLW {c.seqlen_start} -> {c.seqlen_end} over T={c.duration} steps"
            if c.kind == "slw"
            else f"full length {c.seqlen_end}"
        )
        print(
            f"\n[{name}] {what}, batch {cfg.train.global_batch_size}, lr {cfg.train.lr:g}, {cfg.train.max_tokens:,} tokens"
        )
        summaries[name] = train(cfg, force=force)
    print()
    print(format_comparison(summaries))
    report = write_report([Path(cfg.run.dir) for cfg in configs.values()], out / "report")
    print(f"\nruns: {out}/baseline, {out}/slw (metrics.jsonl, summary.json, checkpoints/)")
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
