"""The `seqwarm` command line: prepare, train, plan, report, demo, sweep.

Errors a user can fix (`SeqwarmError`) print as one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from seqwarm.errors import ConfigError, SeqwarmError

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def resolve_config(name: str) -> Path:
    """A config file path, or the name of a config shipped with seqwarm (`seqwarm/configs/`)."""
    path = Path(name)
    if path.exists():
        return path
    for candidate in (PACKAGED_CONFIGS / name, PACKAGED_CONFIGS / f"{name}.yaml"):
        if candidate.exists():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"{name}: no such config file (shipped configs: {shipped})")


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """`CONFIG key=value ...` -> (CONFIG or None, overrides)."""
    if items and "=" not in items[0]:
        return str(resolve_config(items[0])), items[1:]
    return None, items


def cmd_prepare(args) -> None:
    from seqwarm.data.prepare import builtin_data_dir, ensure_builtin, prepare

    if args.corpus and args.inputs:
        raise SeqwarmError("prepare: give either --corpus builtin or input files, not both")
    inputs = args.inputs or ["builtin"]
    if inputs != ["builtin"] and args.out is None:
        raise SeqwarmError("prepare: --out DIR is required for your own text files")
    out = Path(args.out) if args.out else builtin_data_dir()
    if inputs == ["builtin"] and not args.out and not args.force:
        path = ensure_builtin(progress=True)
    else:
        path = prepare(
            inputs, out, val_fraction=args.val_fraction, test_fraction=args.test_fraction, force=args.force, progress=True
        )
    meta = json.loads((path / "meta.json").read_text())
    counts = ", ".join(f"{k} {v['tokens']:,}" for k, v in meta["splits"].items())
    print(f"prepared {path}: tokens {counts}")


def cmd_train(args) -> None:
    from seqwarm.train import main_train

    config, overrides = split_config_args(args.items)
    if config is None and args.resume is None:
        raise ConfigError("train: give a CONFIG file (or --resume RUN_DIR)")
    summary = main_train(config, overrides, resume=args.resume, force=args.force)
    if _rank() != 0:  # under torchrun every process returns the summary; one prints it
        return
    ppl = summary["final_val_ppl"]
    print(
        f"done: {summary['steps']:,} steps, {summary['tokens']:,} tokens, {summary['wall_s']:.0f} s"
        + (f", val ppl {ppl:.2f}" if ppl is not None else "")
        + f" -> {summary['run_dir']}"
    )


def cmd_plan(args) -> None:
    from seqwarm.config import load_config
    from seqwarm.plan import print_plan

    config, overrides = split_config_args(args.items)
    print_plan(load_config(config, overrides), every=args.every, jsonl=args.jsonl)


def cmd_demo(args) -> None:
    from seqwarm.demo import run_demo

    run_demo(Path(args.out), force=args.force, overrides=args.overrides)


def cmd_report(args) -> None:
    from seqwarm.report import write_report

    path = write_report([Path(p) for p in args.runs], Path(args.out))
    print(f"report: {path}")


def cmd_sweep(args) -> None:
    from seqwarm.sweep import main_sweep

    target, overrides = split_config_args(args.items)
    report = main_sweep(
        target,
        overrides,
        args.grid,
        args.out,
        report_only=args.report_only,
        prune_checkpoints=args.prune_checkpoints,
        progress=not args.no_progress,
    )
    print(f"sweep report: {report}")


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", 0))
    except ValueError:
        return 0


def cmd_tune(args) -> None:
    from seqwarm.tune import main_tune

    config, items = split_config_args(args.items)
    result, out = main_tune(config, items, out=args.out, budget_steps=args.budget_steps, progress=not args.no_progress)
    if result.seqlen_start is None:
        print(f"tune: no recommendation ({'; '.join(result.notes)})")
    else:
        verified = "" if result.duration_verified else " (not verified)"
        print(f"recommended: seqlen_s = {result.seqlen_start}, T = {result.duration}{verified}")
        for note in result.notes:
            print(f"  note: {note}")
    print(f"tune report: {out / 'tune.md'}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqwarm", description="GPT pre-training with Sequence Length Warmup.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="tokenize a corpus into memory-mapped train/val/test splits")
    s.add_argument("inputs", nargs="*", help="text/JSONL files or directories (default: the builtin corpus)")
    s.add_argument("--corpus", choices=["builtin"], help="the embedded English corpus (default when no inputs)")
    s.add_argument("--out", help="output directory (default for builtin: the seqwarm cache)")
    s.add_argument("--val-fraction", type=float, default=0.01)
    s.add_argument("--test-fraction", type=float, default=0.01)
    s.add_argument("--force", action="store_true", help="replace an existing output directory")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="train a model: seqwarm train CONFIG [section.key=value ...]")
    s.add_argument("items", nargs="*", metavar="CONFIG [KEY=VALUE ...]")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    s.add_argument("--force", action="store_true", help="replace an existing run directory")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("plan", help="print the SLW/LR/token schedule of a config without training")
    s.add_argument("items", nargs="*", metavar="CONFIG [KEY=VALUE ...]")
    s.add_argument("--every", type=int, help="print every k-th step (default: about 40 rows; 1 with --jsonl)")
    s.add_argument("--jsonl", action="store_true", help="one JSON object per step, then a summary object")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("demo", help="train a tiny baseline and a tiny SLW model on the builtin corpus and compare")
    s.add_argument("--out", default="runs/demo", help="directory for the two runs (default: runs/demo)")
    s.add_argument("--force", action="store_true", help="replace earlier demo runs in --out")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to both runs, e.g. train.max_tokens=200000")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("report", help="Table 1/Table 3 stability tables and figures comparing runs")
    s.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (metrics.jsonl, config.yaml)")
    s.add_argument("--out", required=True, help="directory for report.md, CSV tables and PNG figures (replaced)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser(
        "sweep",
        help="train a grid of runs (resumable) and write the grid report (Table 5 style, LR sensitivity)",
        description="seqwarm sweep CONFIG|SWEEP_FILE [section.field=value ...] --grid 'train.lr=[1e-3,2e-3]' ...",
    )
    s.add_argument("items", nargs="*", metavar="CONFIG|SWEEP_FILE [KEY=VALUE ...]")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=[V1,V2,...]", help="an axis of the grid (repeatable)")
    s.add_argument("--out", help="directory of the runs and the report (default: the sweep file's out, or runs/sweep-CONFIG)")
    s.add_argument("--report-only", action="store_true", help="write the report from the runs on disk; train nothing")
    s.add_argument("--prune-checkpoints", action="store_true", help="delete a run's checkpoints once it has finished")
    s.add_argument("--no-progress", action="store_true", help="no per-run progress bars")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser(
        "tune",
        help="choose SLW's seqlen_s and T from short probe runs (the paper's low-cost tuning strategy, Section 4)",
        description="seqwarm tune CONFIG [section.field=value ...] [tune.setting=value ...] (settings: docs/TUNING.md)",
    )
    s.add_argument("items", nargs="*", metavar="CONFIG [KEY=VALUE ...]")
    s.add_argument("--budget-steps", type=int, metavar="N", help="cap on the probes' total steps (default: none)")
    s.add_argument("--out", help="directory of the probes and the report (default: runs/tune-CONFIG)")
    s.add_argument("--no-progress", action="store_true", help="no per-probe progress bars")
    s.set_defaults(func=cmd_tune)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`train CONFIG --force a.b=1`): argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = args.items if hasattr(args, "items") else getattr(args, "overrides", None)
        if target is None or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        target.extend(extra)
    # Under torchrun, a rank other than 0 names itself: its error may be its own (a file missing on its node).
    who = f"[rank {_rank()}] " if _rank() else ""
    try:
        args.func(args)
    except SeqwarmError as e:
        print(f"seqwarm: error: {who}{e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `seqwarm plan ... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("seqwarm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
