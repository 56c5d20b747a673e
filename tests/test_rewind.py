"""Rewind-and-skip (`monitor.rewind`, seqwarm.rewind) on a planted spike: two poisoned batches (their loss x100,
chosen by their data, so that a replay meets them again) at steps 7 and 8 of tiny-slw, checkpoints every 2 steps.
The run must go back to step 6, never train on those two batches again, and, killed (SIGKILL) during the
rewind, resume to the same final weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqwarm import rewind
from seqwarm.config import load_config
from seqwarm.data.loader import TrainLoader
from seqwarm.lifecycle import train
from seqwarm.metrics import MetricsLog, read_metrics, train_rows
from seqwarm.model import GPT
from seqwarm.rundir import read_resumes
from seqwarm.saved import open_saved

POISON_STEPS = (7, 8)
OVERRIDES = [
    "train.max_tokens=4000",
    "train.num_threads=1",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=3",
    "eval.every_tokens=null",
    "monitor.rewind=1",
    "monitor.rewind_after=2",
    "monitor.on_nonfinite=skip",
]


def plant(monkeypatch_or_none, poisoned: set[int], drawn: list | None = None):
    """Batches whose first sequence starts at a position in `poisoned` have 100x the loss (and gradient)."""
    flag = [False]
    real_next, real_forward = TrainLoader.next_batch, GPT.forward

    def next_batch(self, batch_size, seqlen, *args):  # *args: the melt split, when the loop passes it
        batch = real_next(self, batch_size, seqlen, *args)
        flag[0] = int(batch.starts[0]) in poisoned
        if drawn is not None:
            drawn.append(int(batch.starts[0]))
        return batch

    def forward(self, idx, targets=None, **kw):
        out = real_forward(self, idx, targets, **kw)
        if targets is not None and self.training and flag[0]:
            return out[0] * 100.0, out[1]
        return out

    setattr_ = monkeypatch_or_none.setattr if monkeypatch_or_none else setattr
    setattr_(TrainLoader, "next_batch", next_batch)
    setattr_(GPT, "forward", forward)


def child(argv: str) -> None:
    """The killed process: the planted run, SIGKILL at `kill` inside the rewind."""
    args = json.loads(argv)
    plant(None, set(args["poisoned"]))
    if args["kill"] == "before_resave":  # the checkpoint rewound to is loaded, not yet saved again
        real = rewind._apply_skips

        def apply_then_die(tr):
            real(tr)
            os.kill(os.getpid(), signal.SIGKILL)

        rewind._apply_skips = apply_then_die
    else:  # after the re-save, before the rewind's rows in metrics.jsonl and resumes.jsonl
        MetricsLog.truncate = lambda self, step: os.kill(os.getpid(), signal.SIGKILL)
    train(load_config("tiny-slw", args["overrides"]), progress=False)


def final_weights(run: Path) -> list[torch.Tensor]:
    return list(open_saved(run).model().parameters())


@pytest.fixture
def planted(corpus_dir, tmp_path, monkeypatch):
    """The clean run's batches (first starts), the poisoned ones, and the uninterrupted rewinding run."""
    base = [f"data.path={corpus_dir}", *OVERRIDES]
    clean: list = []
    with monkeypatch.context() as m:
        plant(m, set(), clean)
        train(load_config("tiny-slw", [*base, f"run.dir={tmp_path / 'clean'}"]), progress=False)
    poisoned = {clean[s - 1] for s in POISON_STEPS}
    drawn: list = []
    with monkeypatch.context() as m:
        plant(m, poisoned, drawn)
        train(load_config("tiny-slw", [*base, f"run.dir={tmp_path / 'whole'}"]), progress=False)
    return base, clean, poisoned, drawn


@pytest.mark.slow
def test_rewind_goes_back_before_the_spike_and_skips_exactly_its_batches(planted, tmp_path):
    base, clean, poisoned, drawn = planted
    run = tmp_path / "whole"
    summary = json.loads((run / "summary.json").read_text())
    (record,) = summary["rewinds"]
    assert (record["step"], record["spike_start"], record["trigger_step"], record["skipped_batches"]) == (6, 7, 8, 2)
    # Steps 1-8 drew the clean run's batches; after the rewind to 6, the batches of 9, 10, ...: 7 and 8 never again.
    assert drawn[:8] == clean[:8]
    after = drawn[8:]
    assert not poisoned & set(after)
    assert after[: len(clean) - 8] == clean[8:]  # and two batches more at the end: the skipped ones' tokens
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["event/rewind"]["rewind"] for r in rows if "event/rewind" in r] == [1]
    steps = [r["step"] for r in train_rows(rows)]
    assert steps == list(range(1, len(steps) + 1))  # the rows of the abandoned steps 7-8 are gone
    assert max(r["loss_ratio"] for r in train_rows(rows)) < 1.5
    assert [r["rewind"]["step"] for r in read_resumes(run) if "rewind" in r] == [6]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kill", ["before_resave", "after_resave"])
def test_a_kill_during_the_rewind_resumes_to_the_same_final_weights(planted, tmp_path, monkeypatch, kill):
    base, clean, poisoned, drawn = planted
    run = tmp_path / kill
    overrides = [*base, f"run.dir={run}"]
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_rewind; test_rewind.child(sys.argv[2])"
    args = json.dumps({"poisoned": sorted(poisoned), "kill": kill, "overrides": overrides})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), args], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    plant(monkeypatch, poisoned)
    train(load_config("tiny-slw", overrides), resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(final_weights(tmp_path / "whole"), final_weights(run)))
    summary = json.loads((run / "summary.json").read_text())
    assert [r["step"] for r in summary["rewinds"]] == [6]
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["event/rewind"]["rewind"] for r in rows if "event/rewind" in r] == [1]
    assert [r["rewind"]["rewind"] for r in read_resumes(run) if "rewind" in r] == [1]
