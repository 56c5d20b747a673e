"""seqwarm/study_arms.py: Study 2's arm table moved out of studies/study2.py without changing any run's identity,
and the measures the demo and the GPU script print."""

import csv
import hashlib
import json
from pathlib import Path

import pytest
from study_script import study2

from seqwarm import study_arms
from seqwarm.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def digest(specs) -> str:
    return hashlib.sha256(" ".join(s.config_hash() for s in specs).encode()).hexdigest()[:16]


def test_every_specs_config_hash_is_what_it_was_before_the_move():
    """The rows of studies/study2/rows.csv are keyed by `Spec.config_hash`; the digests below were computed with
    studies/study2.py at commit 50977be, before its arm table moved to seqwarm/study_arms.py."""
    study = study2()
    stages = [s for st in ("calibration", "screen128", "screen512") for s in study.stage_specs(st)]
    stages += study.stage_specs("confirm", [])
    assert len(stages) == 190 and digest(stages) == "1a79740f47107bdc"
    grid = [
        study.Spec("x", c, a, lr, seed)
        for c in study.CONTEXTS
        for a in study.ARMS
        for lr in (3e-3, 1e-2, 3e-2, 1e-1)
        for seed in (1, 11)
    ]
    assert digest(grid) == "9ea3953fb7a060cb"  # every arm at both contexts, not only the stages' cells


def test_the_recorded_rows_hash_as_their_specs_do():
    """Each committed row's config hash is the hash of the spec its columns name (none yet: nothing to check)."""
    rows_csv = ROOT / "studies" / "study2" / "rows.csv"
    if not rows_csv.exists():
        pytest.skip("no study rows committed yet")
    study = study2()
    with open(rows_csv, newline="") as f:
        for r in csv.DictReader(f):
            spec = study.Spec(r["stage"], r["context"], r["arm"], float(r["lr"]), int(r["seed"]))
            assert spec.config_hash() == r["config_hash"], spec.name


def test_the_study_script_reads_the_shared_table():
    study = study2()
    assert study.ARMS is study_arms.ARMS and study.CONTEXTS is study_arms.CONTEXTS
    assert study.Spec("s", "c512", "slw", 1e-2, 3).overrides() == study_arms.arm_overrides("c512", "slw", 1e-2, 3)


@pytest.mark.parametrize("arm", list(study_arms.ARMS))
def test_every_arm_builds_a_valid_config_at_both_contexts(arm):
    for context in study_arms.CONTEXTS:
        cfg = load_config(study_arms.BASE_CONFIG, study_arms.arm_overrides(context, arm, 3e-2, 1))
        assert cfg.train.max_tokens // (cfg.train.global_batch_size * cfg.curriculum.seqlen_end) == study_arms.STEPS


def test_plateau_steps_and_its_censoring():
    evals = [{"step": 4, "val/loss": 6.0}, {"step": 8, "val/loss": float("nan")}, {"step": 12, "val/loss": 5.4}]
    assert study_arms.plateau_steps(evals, unigram=5.75, steps=100) == 12  # 5.4 <= 5.75 - 0.3
    assert study_arms.plateau_steps(evals, unigram=5.6, steps=40) == 100  # never: censored at the protocol's 100
    assert study_arms.plateau_steps(evals, unigram=5.6, steps=40, censor=40) == 40


def test_run_measures_from_a_run_directory(tmp_path):
    rows = [{"step": s, "tokens": 100 * s, "loss": 6.0, "loss_ratio": 1.0 + s / 100,
             "diag/attn/0/logit_max": 2.0 * s, "diag/attn/0/entropy": 1 - s / 20,
             "diag/attn/1/logit_max": 50.0, "diag/attn/1/entropy": 0.9} for s in range(1, 11)]  # fmt: skip
    rows += [{"step": 5, "tokens": 500, "val/loss": 5.9}, {"step": 10, "tokens": 1000, "val/loss": 5.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    event = {"layer": 0, "start": 7, "end": None, "min_entropy": 0.5, "max_logit": 20.0}
    summary = {"tokens": 1000, "wall_s": 4.0, "unigram_loss": 5.6, "collapse_events": [event]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    m = study_arms.run_measures(tmp_path)
    assert m["steps"] == 10 and m["tokens_per_s"] == 250 and m["final_val_loss"] == 5.2
    assert m["plateau_steps"] == 10 and m["escaped"]  # 5.2 <= 5.6 - 0.3 at the second evaluation
    assert m["max_loss_ratio"] == pytest.approx(1.1)
    assert m["layer0_logit_max"] == 20.0 and m["layer0_entropy_min"] == pytest.approx(0.5)
    assert m["max_attn_logit"] == 50.0 and m["min_attn_entropy"] == pytest.approx(0.5)  # layer 1's logit is larger
    assert m["collapse"] == event
