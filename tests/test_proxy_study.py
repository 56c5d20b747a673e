"""studies/proxy_study.py's pre-registered rules (docs/PROXY.md) on synthetic runs with known answers."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("proxy_study", ROOT / "studies" / "proxy_study.py")
study = importlib.util.module_from_spec(spec)
sys.modules["proxy_study"] = study  # dataclasses look their module up
spec.loader.exec_module(study)


def write_run(root: Path, seed: int, lr: float, method: str, *, spike: float, curve: list[float], finished=True):
    """A run directory as the trainer leaves it: train rows (a spike at step 3), eval rows every 100 tokens."""
    d = root / f"seed={seed}__lr={lr:g}__method={method}"
    d.mkdir(parents=True)
    rows = []
    for step in range(1, 11):
        ratio = spike if step == 3 else 1.0
        rows.append({"step": step, "tokens": 100 * step, "loss": 5.0 * ratio, "loss_ratio": ratio,
                     "adam/var_max": 0.01 * ratio + 0.0001 * (step % 3)})  # fmt: skip
    for i, loss in enumerate(curve):
        rows.append({"step": 2 * i, "tokens": 200 * i, "time_s": 10.0 * i, "val/loss": loss})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (d / "summary.json").write_text(json.dumps({"final_val_loss": curve[-1], "wall_s": 50.0}))


@pytest.fixture
def runs(tmp_path):
    for seed in range(1, 6):
        # SLW spikes less and reaches the baseline's final loss (4.0) two evals earlier, every seed.
        write_run(tmp_path, seed, 0.01, "baseline", spike=1.6 + 0.01 * seed, curve=[6.0, 5.0, 4.5, 4.2, 4.1, 4.0])
        write_run(tmp_path, seed, 0.01, "slw", spike=1.1, curve=[6.0, 4.8, 4.3, 4.0, 3.95, 3.9])
    return study.load_runs(tmp_path)


def test_directional_hypotheses_supported_when_every_seed_agrees(runs):
    _, h1 = study.h1_tests(runs)
    assert (0.01, "baseline", "supported") in h1
    _, _, h2 = study.h2(runs)
    assert h2[0.01] == "supported"
    table = study.table5(runs)
    assert "| 0.01 | 1 | 1 | 0 | 1 | 0 | 1.61 | 1.10 |" in table  # steps > 1.5 and > 1.2, max ratios


def test_h1_is_refuted_when_slw_spikes_more_and_unfinished_runs_are_marked(tmp_path):
    for seed in range(1, 6):
        write_run(tmp_path, seed, 0.03, "baseline", spike=1.1, curve=[6.0, 5.0], finished=seed != 5)
        write_run(tmp_path, seed, 0.03, "slw", spike=1.3 + 0.01 * seed, curve=[6.0, 5.1])
    runs = study.load_runs(tmp_path)
    _, h1 = study.h1_tests(runs)
    assert (0.03, "baseline", "refuted") in h1
    assert "| 0.03 | 5 | 0* |" in study.table5(runs)
    _, _, h2 = study.h2(runs)
    assert h2[0.03] == "not shown"  # SLW never reaches the baseline's final loss, but 4 seeds cannot refute


def test_h3_counts_positive_significant_correlations(runs):
    table, line = study.h3(runs)
    assert "5 of 5 with r > 0" in line and "H3: **supported**" in line  # the variance max follows the spike
    assert table.count("| 0.01 | baseline |") == 5 and table.count("| 0.01 | slw |") == 5


def test_h5_compares_keeping_tails_with_dropping_them(tmp_path):
    for seed in range(1, 6):
        for method, end in (("baseline", 4.0), ("slw", 4.1), ("slw-keep-tails", 4.05 - 0.001 * seed)):
            write_run(tmp_path, seed, 0.01, method, spike=1.0, curve=[6.0, end])
    table, verdicts = study.h5(study.load_runs(tmp_path))
    assert verdicts == {0.003: "not run", 0.01: "supported"}  # lower than dropping the tails in all 5 seeds
    assert "| 0.01 | 5 | -0.053 [" in table


def write_tune(root: Path, seed: int, seqlen_s, duration) -> None:
    d = root / f"seed={seed}"
    d.mkdir(parents=True)
    rec = {"recommendation": {"seqlen_start": seqlen_s, "duration": duration}, "cost": {"fraction": 0.1}}
    (d / "tune.json").write_text(json.dumps(rec))


@pytest.mark.parametrize("declines", [False, True])
def test_h4_judges_the_tuners_pick_against_the_grids_best_t(tmp_path, declines):
    runs_dir, tune = tmp_path / "runs", tmp_path / "tune"
    for seed in (1, 2, 3):
        for method, t in study.DURATIONS.items():
            end = {15: 4.0, 30: 4.1, 60: 4.2, 120: 4.3}[t]  # T matters: 7.5% from best to worst
            write_run(runs_dir, seed, study.PRIMARY_LR, method, spike=1.0, curve=[6.0, end])
        write_tune(tune, seed, None if declines and seed == 2 else 8, 30)  # T=30: 2.5% above the best
    lines = "\n".join(study.h4(study.load_runs(runs_dir), tune, None))
    assert "Best T: 15" in lines
    if declines:
        assert "recommended nothing for 1 of 3 seeds (2)" in lines and "H4: **not supported**" in lines
    else:
        assert "+2.50%" in lines and "H4: **refuted**" in lines
