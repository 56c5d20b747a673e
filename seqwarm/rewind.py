"""Rewind-and-skip (`monitor.rewind`): on a spike that persists, reload the newest verified checkpoint from before
it, never train on the spike's batches again, optionally at a lower LR for a while; at most N times.

PaLM (Chowdhery et al. 2022, Section 5) met about 20 loss spikes at 540B that skipping single steps did not
absorb; each time they restarted from a checkpoint about 100 steps before the spike and skipped 200-500 batches,
and the spike did not recur: a spike comes from a batch meeting a particular state, not from bad data alone.
BigScience's Megatron-DeepSpeed has `--skip-train-iteration-range` for the same by hand. Here it is automatic
and exact, because the data position is a few integers (`seqwarm.data.order`) and resume is bit-exact.

The rule (docs/STABILITY.md): a step is *spiking* when its loss ratio (Section 3) is above `monitor.rewind_ratio`
or its update was skipped (skip-step or non-finite). After `monitor.rewind_after` spiking steps in a row, the
spike persists: the run goes back to the newest checkpoint before the first of them (checkpoints written
during the spike are deleted: they hold the state being abandoned), and the batches of the spiking steps are
skipped (`SequenceOrder.skip`: on reaching their position, the order continues after the last of them). The
clock is the checkpoint's: the skipped batches' tokens never count, so the LR, pacing and stopping rule see
only tokens trained on. The steps between the checkpoint and the spike are trained again, on the same batches.

Crash safety: the checkpoint rewound to is saved again at once with the rewind in its state (the record,
the data skip), so a kill after that resumes without replaying the spike; a kill before it resumes from
the old copy, replays the spike exactly (resume is bit-exact) and rewinds the same way. Either way the final
weights are those of an uninterrupted run. The rewind's rows in metrics.jsonl and resumes.jsonl are written
after that save, and written again on a resume whose checkpoint holds a rewind they lack (`reconcile`).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable

from seqwarm import checkpoint as ckpt
from seqwarm import distributed, rundir
from seqwarm.checkpoint import read_checkpoint
from seqwarm.metrics import METRICS, MetricsLog, read_metrics
from seqwarm.schedule import Clock


class Rewinder:
    """The rule's state: the current run of spiking steps, where it started, and the rewinds done."""

    def __init__(self, *, limit: int, after: int, ratio: float, lr_factor: float = 1.0, lr_steps: int = 0):
        self.limit, self.after, self.ratio = limit, after, ratio
        self.lr_factor_, self.lr_steps = lr_factor, lr_steps
        self.streak = 0  # spiking steps in a row
        self.start: dict | None = None  # the streak's first step and the data position before it
        self.position: list[int] | None = None  # the data position after the last step that was not spiking
        self.lr_until = 0  # steps up to this one train at lr x lr_factor
        self.records: list[dict] = []

    def spiking(self, row: dict) -> bool:
        ratio = row.get("loss_ratio")
        return row.get("skipped") in ("spike", "non-finite") or (
            ratio is not None and math.isfinite(ratio) and ratio > self.ratio
        )

    def observe(self, row: dict, position_before: list[int], position_after: list[int]) -> bool:
        """Record a step's row; True when the spike persists and a rewind is due (and allowed)."""
        if not self.spiking(row):
            self.streak, self.start = 0, None
            return False
        if self.streak == 0:
            self.start = {"step": row["step"], "position": list(position_before)}
        self.streak += 1
        return self.streak >= self.after and len(self.records) < self.limit

    def lr_factor(self, step: int) -> float:
        """The LR multiplier of step `step` (1-based): `monitor.rewind_lr_factor` for the steps after a rewind."""
        return self.lr_factor_ if step <= self.lr_until else 1.0

    def state_dict(self) -> dict:
        return {"streak": self.streak, "start": self.start, "lr_until": self.lr_until, "records": self.records}

    def load_state_dict(self, state: dict) -> None:
        self.streak, self.start, self.lr_until = int(state["streak"]), state["start"], int(state["lr_until"])
        self.records = [dict(r) for r in state["records"]]


def rewind(tr, log: MetricsLog, save: Callable) -> bool:
    """Go back to the newest verified checkpoint before the current spike and skip its batches (see the module).

    Returns False, after a note, when there is no checkpoint before the spike (the run goes on as it is).
    """
    r = tr.rewinder
    spike_step, at = r.start["step"], r.start["position"]
    trigger = tr.clock.step
    to = tr.loader.order.state_dict()  # the position after the last spiking step's batch
    if tr.env.main:
        for path in ckpt.list_checkpoints(tr.run_dir):
            if int(path.name.split("-")[1]) >= spike_step:  # written during the spike: the state abandoned
                ckpt.remove_checkpoint(path)
    distributed.barrier(tr.env)
    chosen = ckpt.newest_verified(tr.run_dir, lambda p: read_checkpoint(p, verify=True), doing="rewinding to")
    if chosen is None:
        _note(f"step {trigger}: a spike since step {spike_step} persists, but no checkpoint precedes it; not rewinding")
        r.streak, r.start = 0, None
        return False
    kept = copy.deepcopy(r.state_dict())
    tr.load_state_dict(chosen.value)
    tr.last_checkpoint = chosen.path
    r.load_state_dict(kept)  # the rewinds are the run's history, not the checkpoint's
    back = tr.clock.step
    record = {
        "rewind": len(r.records) + 1,
        "step": back,  # where training continues from (the checkpoint's step)
        "tokens": tr.clock.tokens,
        "trigger_step": trigger,
        "spike_start": spike_step,
        "skipped_batches": trigger - spike_step + 1,
        "skip": {"at": at, "to": to},
        "lr_factor": r.lr_factor_ if r.lr_steps else 1.0,
        "lr_until": back + r.lr_steps,
    }
    r.records.append(record)
    r.streak, r.start, r.lr_until = 0, None, record["lr_until"]
    _apply_skips(tr)
    save(tr)  # the checkpoint rewound to, again, now holding the rewind: a kill from here on does not replay it
    log.truncate(back)
    _log(tr, log, record)
    return True


def _apply_skips(tr) -> None:
    """Every recorded rewind's data skip in the loader's order (a checkpoint older than a rewind lacks it)."""
    order = tr.loader.order
    have = [s["at"] for s in order.skips]
    for rec in tr.rewinder.records:
        if rec["skip"]["at"] not in have:
            order.skip(rec["skip"]["at"], rec["skip"]["to"])


def _log(tr, log: MetricsLog, record: dict) -> None:
    if tr.env.main:
        _write(tr, log, record, metrics=True, resumes=True)
        _note(
            f"step {record['trigger_step']}: a spike since step {record['spike_start']} persisted; rewound to step "
            f"{record['step']}, skipping {record['skipped_batches']} batches (rewind {record['rewind']} of "
            f"{tr.rewinder.limit})"
        )


def _write(tr, log: MetricsLog, record: dict, *, metrics: bool, resumes: bool) -> None:
    row = {k: v for k, v in record.items() if k != "skip"}
    if metrics:
        log.write({"step": record["step"], "tokens": record["tokens"], "time_s": tr.wall_s(), "event/rewind": row})
        log.flush()
    if resumes:
        rundir.record_resume(tr.run_dir, Clock(record["step"], record["tokens"]), {}, rewind=row)


def reconcile(tr, log: MetricsLog) -> None:
    """On a resume: write the rewind rows of metrics.jsonl and resumes.jsonl that a kill cut off (see the module)."""
    if tr.rewinder is None or not tr.rewinder.records or not tr.env.main:
        return
    logged = {r["event/rewind"]["rewind"] for r in read_metrics(tr.run_dir / METRICS) if "event/rewind" in r}
    recorded = {r["rewind"]["rewind"] for r in rundir.read_resumes(tr.run_dir) if "rewind" in r}
    for record in tr.rewinder.records:
        n = record["rewind"]
        _write(tr, log, record, metrics=n not in logged, resumes=n not in recorded)


def _note(message: str) -> None:
    print(f"seqwarm: {message}", file=sys.stderr)
