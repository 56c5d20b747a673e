"""What a grid run's directory already holds, read before anything is trained (nothing is written here).

A rerun of a sweep picks up where the last one stopped by reading each run directory: summary.json
means finished, diverged.json a run stopped by a non-finite loss, a checkpoint a resumable run.
"""

from __future__ import annotations

from pathlib import Path

from seqwarm.checkpoint import latest_checkpoint
from seqwarm.config import load_config
from seqwarm.errors import SeqwarmError
from seqwarm.rundir import SUMMARY, config_path
from seqwarm.sweep.grid import Cell

DIVERGED = "diverged.json"  # written into a run directory that stopped on a non-finite loss


def _has_files(d: Path) -> bool:
    return d.exists() and any(d.iterdir())


def status(cell: Cell) -> str:
    """finished | diverged | resume (has a checkpoint) | restart (started, no checkpoint) | new."""
    d = cell.dir
    if (d / SUMMARY).exists():
        return "finished"
    if (d / DIVERGED).exists():
        return "diverged"
    if latest_checkpoint(d) is not None:
        return "resume"
    return "restart" if _has_files(d) else "new"


def check_existing(cells: list[Cell]) -> None:
    """Refuse, before training anything, run directories that are not this grid's runs."""
    for cell in cells:
        d = cell.dir
        if not _has_files(d):
            continue
        saved = config_path(d)
        if not saved.exists():
            raise SeqwarmError(
                f"{d}: exists but is not a seqwarm run (no config.yaml); move it or choose another --out"
            )
        old, new = load_config(saved).to_dict(), cell.cfg.to_dict()
        diff = [f"{s}.{k}: {old[s][k]!r} -> {new[s][k]!r}" for s in new for k in new[s] if old[s][k] != new[s][k]]
        if diff:
            raise SeqwarmError(
                f"{d}: trained with a different config ({'; '.join(diff[:3])}); use another --out or remove the run"
            )
