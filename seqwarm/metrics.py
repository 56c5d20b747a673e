"""metrics.jsonl: the one stream of a run's numbers, written by training and read by everything else.

One JSON object per line. A train row has `step`, `tokens`, `seqlen`, `batch_size`, `lr`, `loss`,
`loss_ratio`, `grad_norm`, `clipped`, `time_s` and, on the steps the monitor samples, Adam's
statistics (`adam/var_l1`, `adam/var_max`, `adam/mom_l1`); an eval row has `step`, `tokens`,
`time_s`, `val/loss` and `val/ppl`. This module is the ground floor: training writes through
`MetricsLog`; `report`, `sweep` and `tune` read with `read_metrics` and summarise with the
functions below, so a statistic such as Table 1's loss-ratio counts is computed in one place.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from seqwarm.errors import DataError, SeqwarmError, first_line
from seqwarm.files import atomic_write, open_append

METRICS = "metrics.jsonl"
# Table 1 counts the steps above 1.2; Appendix A.3.1 (Table 5) counts those above 1.5.
RATIO_THRESHOLDS = (1.2, 1.5)


@dataclass(frozen=True)
class WandbSettings:
    """Where the Weights & Biases mirror goes (the config's `log.wandb_*` fields)."""

    project: str = "seqwarm"
    name: str | None = None  # default: the run directory's name
    mode: str | None = None  # online, offline, disabled; None: WANDB_MODE, else wandb's default
    config: dict | None = None  # the run's resolved config, shown beside its curves


class MetricsLog:
    """Appends rows to RUN_DIR/metrics.jsonl, mirrored to TensorBoard and to Weights & Biases when asked.

    Only rank 0 writes (`enabled=False` elsewhere): every rank computes the same rows.
    """

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool,
        enabled: bool = True,
        start_step: int = 0,
        wandb: WandbSettings | None = None,
    ):
        self.file = self.tb = self.wandb = None
        if not enabled:
            return
        # On a resume from the checkpoint of step S, what was logged after S belongs to the
        # interrupted session and is logged again: drop those rows, and have TensorBoard hide those
        # events (purge_step), so every step appears once. A fresh run has nothing to drop.
        path = Path(run_dir) / METRICS
        if path.exists():
            keep = [r for r in read_metrics(path) if r["step"] <= start_step]
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))
        self.file = open_append(path)  # append-only while the run trains
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)
        if wandb is not None:
            self.wandb = open_wandb(Path(run_dir), wandb, start_step)

    def write(self, row: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(row) + "\n")
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, row["step"])
        if self.wandb is not None:
            # An eval row at the step of a train row joins that step's W&B history row.
            self.wandb.log(scalars, step=row["step"])

    def truncate(self, step: int) -> None:
        """Drop the rows after `step`, as a resume from that step's checkpoint does (a rewind, `seqwarm.rewind`).

        TensorBoard and W&B keep what they were sent: they cannot drop events mid-run.
        """
        if self.file is None:
            return
        self.file.close()
        path = Path(self.file.name)
        keep = [r for r in read_metrics(path) if r["step"] <= step]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))
        self.file = open_append(path)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def open_wandb(run_dir: Path, settings: WandbSettings, start_step: int):
    """A W&B run writing under RUN_DIR/wandb.

    W&B history cannot be rewound the way TensorBoard's purge_step hides events, and a resume logs the
    steps after its checkpoint again; so each session is a W&B run of its own, in a group named after
    the run (job_type `resume` from the second on), and every step appears once per session.
    """
    try:
        import wandb
    except ImportError:
        raise SeqwarmError("log.wandb: the wandb package is missing; pip install 'seqwarm[wandb]'") from None
    name = settings.name or run_dir.resolve().name
    try:
        return wandb.init(
            project=settings.project,
            name=name,
            group=name,
            job_type="resume" if start_step else "train",
            # read here, not left to wandb: it reads its environment once per process
            mode=settings.mode or os.environ.get("WANDB_MODE") or None,
            dir=str(run_dir),
            config=settings.config,
            # console off: W&B would otherwise wrap stdout/stderr to copy the progress bar into the run
            settings=wandb.Settings(console="off"),
        )
    except wandb.errors.Error as e:
        raise SeqwarmError(f"log.wandb: {first_line(e)} (log.wandb_mode=offline needs no account or network)") from e


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; a last line cut by a crash (or any line that is not an object) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # seqwarm writes ASCII JSON: this is not a metrics file, or a damaged one
        raise DataError(f"{path}: not UTF-8 text, not a metrics.jsonl written by seqwarm") from None
    return parse_jsonl(text)


def parse_jsonl(text: str) -> list[dict]:
    """The objects of a JSON Lines text, one a line; a line that does not parse (a last line cut by a
    crash) or is not an object is left out."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


# --- summaries (pure functions of the rows) ------------------------------------------------------


def number(value: object) -> float | None:
    """A logged number as a float (NaN and infinities included); None for a missing or non-numeric value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def finite(value: object) -> float | None:
    x = number(value)
    return x if x is not None and math.isfinite(x) else None


def train_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "loss" in r]


def eval_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "val/loss" in r]


def loss_ratio_table(rows: list[dict]) -> dict:
    """One run's row of Table 1 (Section 3): steps above each loss-ratio threshold and the max ratio.

    The loss ratio of a step is its training loss over the minimum loss of all previous steps
    (`seqwarm.monitor.LossRatio`). Counts and the maximum are over finite ratios; percentages are
    of all logged train steps (None when there are none).
    """
    train = train_rows(rows)
    ratios = [x for r in train if (x := finite(r.get("loss_ratio"))) is not None]
    table = {"steps": len(train)}
    for t in RATIO_THRESHOLDS:
        count = sum(x > t for x in ratios)
        table[f"steps_loss_ratio_gt_{t}"] = count
        table[f"pct_steps_loss_ratio_gt_{t}"] = 100 * count / len(train) if train else None
    table["max_loss_ratio"] = max(ratios, default=None)
    return table


def run_summary(rows: list[dict]) -> dict:
    """The outcome and stability record of a run's rows, as summary.json stores it (Section 3).

    Validation results (final and best), Table 1's loss-ratio counts, the largest Adam variance
    element, and the clipped and skipped steps.
    """
    train, evals = train_rows(rows), eval_rows(rows)
    best = min(evals, key=lambda r: r["val/loss"]) if evals else None
    last = evals[-1] if evals else None
    ratios = loss_ratio_table(rows)
    del ratios["steps"]
    return {
        "final_val_loss": last["val/loss"] if last else None,
        "final_val_ppl": last["val/ppl"] if last else None,
        "best_val_loss": best["val/loss"] if best else None,
        "best_val_ppl": best["val/ppl"] if best else None,
        "max_loss_ratio": ratios.pop("max_loss_ratio"),
        **ratios,
        "max_adam_var_max": max((r["adam/var_max"] for r in train if "adam/var_max" in r), default=None),
        "clip_count": sum(bool(r.get("clipped")) for r in train),
        "skipped_steps": sum("skipped" in r for r in train),
    }
