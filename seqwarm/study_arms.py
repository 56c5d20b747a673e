"""Study 2's arms (docs/STUDY2.md, pre-registered) and the measures of one run, in one place for the study script
(studies/study2.py), `seqwarm demo` and the GPU version (benchmarks/study2_gpu.py).

The grid below is the protocol's, moved here verbatim from studies/study2.py: every override string, and their
order, is part of a study run's identity (studies/study2/rows.csv keys its rows by a hash of them,
`Spec.config_hash`), so an edit here is a protocol change (docs/STUDY2.md, "Protocol changes").
tests/test_study_arms.py pins the hashes of every spec to their values before the move.

Plain data and functions on metric rows; imports only the metrics reader (an analysis module: never the trainer).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

BASE_CONFIG = "proxy"  # every arm is the proxy (configs/proxy.yaml) with the overrides below

# --- the protocol's grid (docs/STUDY2.md), written once ----------------------------------------------------

STEPS = 100
COMMON = [
    "train.warmup_steps=10",
    "train.min_lr=1e-4",
    "train.num_threads=1",
    "curriculum.seqlen_start=8",
    "curriculum.duration=40",
    "monitor.instruments=true",
    "monitor.every=1",
    "eval.max_sequences=32",
    "checkpoint.every_steps=null",
    "log.progress=false",
]
CONTEXTS = {
    "c128": ["curriculum.seqlen_end=128", "model.max_seqlen=128", "train.global_batch_size=32"]
    + ["train.micro_batch_size=32", f"train.max_tokens={STEPS * 32 * 128}", f"eval.every_tokens={4 * 32 * 128}"],
    "c512": ["curriculum.seqlen_end=512", "model.max_seqlen=512", "train.global_batch_size=16"]
    + ["train.micro_batch_size=16", f"train.max_tokens={STEPS * 16 * 512}", f"eval.every_tokens={4 * 16 * 512}"],
}
SLW = ["curriculum.length=slw"]
QK = ["model.qk_norm=true"]
LLAMA = ["model.family=llama"]
ARMS: dict[str, list[str]] = {
    "baseline": [],
    "long-warmup": ["train.warmup_steps=40"],
    "slw": SLW,
    "slw-melt": [*SLW, "curriculum.packing=melt"],
    # The matched batch grows in whole micro-batches: micro-batches of 1 sequence let step 0 train SLW's tokens
    # as closely as whole rows allow (2 rows of 128 = 256 = 8 x 32 at C128; 1 row of 512 >= 8 x 16 at C512).
    "batch-matched": [*SLW, "curriculum.batch=matched", "train.micro_batch_size=1"],
    # The window grows like SLW's length: from 8 over T = 40 steps, over full-length rows (SkyLadder-style).
    "window": ["curriculum.window=warmup", "curriculum.window_start=8", "curriculum.window_duration=40"],
    "slw-adaptive": [*SLW, "curriculum.pacing=adaptive"],
    "qk-norm": QK,
    "z-loss": ["train.z_loss=1e-4"],
    # OLMo-core's rule (6 sigma on loss and gradient norm), its window and warm-up scaled to 100-step runs: its
    # defaults (128, 64) would leave the guard off until after the probe's collapses (steps 4-8).
    "skip-step": ["monitor.skip_spikes=both", "monitor.skip_window=32", "monitor.skip_warmup=10"],
    "zclip": ["train.grad_clip_mode=zscore"],
    "slw+qk-norm": [*SLW, *QK],
    "llama": LLAMA,
    "llama-slw": [*LLAMA, *SLW],
    "llama-qk-norm": [*LLAMA, *QK],
}
AGGRESSIVE = (1e-2, 3e-2, 1e-1)
CONFIRM_LR = {"c128": 3e-2, "c512": 1e-2}
CONFIRM_SEEDS = {"c128": tuple(range(11, 18)), "c512": tuple(range(11, 16))}
PLATEAU_MARGIN = 0.3  # nats below the unigram loss


def arm_overrides(context: str, arm: str, lr: float, seed: int) -> list[str]:
    """A study run's overrides of the proxy, in the order its config hash reads them."""
    return [*COMMON, *CONTEXTS[context], *ARMS[arm], f"train.lr={lr}", f"run.seed={seed}"]


# --- measures of one run -----------------------------------------------------------------------------------


def plateau_steps(evals: list[dict], unigram: float, steps: int, censor: int = STEPS) -> int:
    """Training steps until validation loss is first PLATEAU_MARGIN below the unigram loss; a run that never gets
    there counts its steps, at least `censor` (the protocol's 100: a diverged run ranks last)."""
    for r in evals:
        if finite(r.get("val/loss")) and r["val/loss"] <= unigram - PLATEAU_MARGIN:
            return int(r["step"])
    return max(steps, censor)


def run_measures(run_dir: Path) -> dict:
    """What the demo and the GPU study print for one run, from its metrics.jsonl and summary.json: the study's
    plateau (censored at the run's own steps), the loss ratio, layer 0's and every layer's attention extremes,
    and the first attention-collapse event the trainer recorded (the toolkit's thresholds, docs/STABILITY.md)."""
    from seqwarm.metrics import METRICS, eval_rows, read_metrics, train_rows

    rows = read_metrics(Path(run_dir) / METRICS)
    train, evals = train_rows(rows), eval_rows(rows)
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    unigram = summary.get("unigram_loss")
    logit0 = [r.get("diag/attn/0/logit_max") for r in train]
    entropy0 = [r.get("diag/attn/0/entropy") for r in train]
    attn = [(k, v) for r in train for k, v in r.items() if k.startswith("diag/attn/") and finite(v)]
    events = summary.get("collapse_events") or []
    steps = len(train)
    plateau = None if unigram is None else plateau_steps(evals, unigram, steps, censor=steps)
    escaped = plateau is not None and any(
        finite(r.get("val/loss")) and r["val/loss"] <= unigram - PLATEAU_MARGIN for r in evals
    )
    wall = summary.get("wall_s")
    return {
        "steps": steps,
        "tokens": summary.get("tokens"),
        "wall_s": wall,
        "tokens_per_s": summary["tokens"] / wall if wall else None,
        "final_val_loss": evals[-1]["val/loss"] if evals else None,
        "unigram_loss": unigram,
        "plateau_steps": plateau,
        "escaped": escaped,
        "max_loss_ratio": max((r["loss_ratio"] for r in train if finite(r.get("loss_ratio"))), default=None),
        "layer0_logit_max": max((v for v in logit0 if finite(v)), default=None),
        "layer0_entropy_min": min((v for v in entropy0 if finite(v)), default=None),
        "max_attn_logit": max((v for k, v in attn if k.endswith("/logit_max")), default=None),
        "min_attn_entropy": min((v for k, v in attn if k.endswith("/entropy")), default=None),
        "collapse": events[0] if events else None,
        "diverged": bool(summary.get("diverged", False)),
    }


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
