"""`seqwarm sweep` wired to files: train the grid's missing runs, then write the grid report.

The train function is a parameter (`train_fn`, with `seqwarm.lifecycle.train`'s signature): the CLI
passes the real one, a test a fake, and this package never imports the training loop.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from seqwarm.checkpoint import checkpoint_dir
from seqwarm.data.corpus import open_data
from seqwarm.distributed import env_from_torchrun
from seqwarm.errors import ConfigError, DivergedError
from seqwarm.files import atomic_write
from seqwarm.sweep.grid import Cell, Sweep, build_cells, command_line_sweep, parse_shard, shard_cells
from seqwarm.sweep.state import DIVERGED, check_existing, status
from seqwarm.sweep.summary import REPORT, write_sweep_report

TrainFn = Callable[..., dict]  # train(cfg, *, resume, force, progress) -> the run's summary


def run_sweep(
    sweep: Sweep,
    out: Path,
    *,
    train_fn: TrainFn,
    prune_checkpoints: bool = False,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    log: Callable[[str], object] = print,
) -> list[Cell]:
    """Train every run of the grid that is not done yet with `train_fn`, then write the grid report.

    `prune_checkpoints` deletes a run's checkpoints once this sweep has finished training it; runs
    found finished or diverged are skipped and left as they are. `shard` (I, N) trains only shard I
    of N (`shard_cells`); the report always covers the whole grid, the other shards' runs as far as
    they have got.
    """
    grid = build_cells(sweep, out)
    check_existing(grid)
    cells = shard_cells(grid, shard)
    for cfg in {c.cfg.data.path: c.cfg for c in cells}.values():
        open_data(cfg, progress)  # a missing or corrupted corpus fails now, not at run 7
    part = f", shard {shard[0]}/{shard[1]}: {len(cells)} of them" if shard else ""
    log(f"sweep: {len(grid)} runs in {out} ({' x '.join(f'{len(a.values)} {a.key}' for a in sweep.axes)}{part})")
    for i, cell in enumerate(cells, 1):
        state = status(cell)
        head = f"[{i}/{len(cells)}] {cell.name}"
        if state in ("finished", "diverged"):
            log(f"{head}: {state}, skipped")
            continue
        log(f"{head}: {'resuming' if state == 'resume' else 'training'}")
        try:
            summary = train_fn(cell.cfg, resume=state == "resume", force=state == "restart", progress=progress)
        except DivergedError as e:
            # An outcome of the grid, not a failure of the sweep: record it so a rerun skips the run.
            atomic_write(cell.dir / DIVERGED, json.dumps({"error": str(e)}) + "\n")
            log(f"{head}: diverged ({e})")
            continue
        if prune_checkpoints:
            shutil.rmtree(checkpoint_dir(cell.dir), ignore_errors=True)
        ppl = summary["final_val_ppl"]
        done = f"{head}: done, {summary['tokens']:,} tokens, {summary['wall_s']:.0f} s"
        log(done + (f", val ppl {ppl:.2f}" if ppl else ""))
    write_sweep_report(grid, out)
    return cells


def main_sweep(
    target: str | None,
    overrides: Sequence[str],
    grids: Sequence[str],
    out: str | None,
    *,
    train_fn: TrainFn,
    report_only: bool = False,
    prune_checkpoints: bool = False,
    progress: bool = True,
    shard: str | None = None,
) -> Path:
    """`seqwarm sweep CONFIG|SWEEP_FILE [overrides] --grid ...`: train what is missing, then report."""
    if env_from_torchrun().enabled:
        raise ConfigError("sweep: runs its trainings one after another in one process; do not launch it with torchrun")
    parts = parse_shard(shard) if shard else None  # a bad --shard fails before any work
    sweep = command_line_sweep(target, overrides, grids, out)
    if report_only:
        return write_sweep_report(build_cells(sweep, sweep.out), sweep.out)
    run_sweep(sweep, sweep.out, train_fn=train_fn, prune_checkpoints=prune_checkpoints, progress=progress, shard=parts)
    return sweep.out / REPORT
