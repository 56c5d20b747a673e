"""LR sensitivity per seed and paired by seed (seqwarm.sweep.sensitivity) on a synthetic grid: Wortsman et
al. 2023's formula by hand, the completeness rule, and the paired statistics against scipy."""

import numpy as np
import pytest

from seqwarm import stats
from seqwarm.sweep import sensitivity as sens
from seqwarm.sweep import summary as sm

LRS = [1e-3, 3e-3, 1e-2]
SEEDS = [1, 2, 3, 4, 5]
L0 = {1: 10.0, 2: 10.2, 3: 9.9, 4: 10.1, 5: 10.0}  # each seed's initial loss
# (method, lr) -> final loss per seed; None: diverged
FINALS = {
    ("baseline", 1e-3): [4.0, 4.1, 3.9, 4.2, 4.0],
    ("baseline", 3e-3): [3.6, 3.7, 3.5, 3.8, 3.6],
    ("baseline", 1e-2): [None, 6.0, None, 11.0, 5.5],  # 11.0: worse than init, capped at L0
    ("qk_norm", 1e-3): [4.0, 4.0, 3.9, 4.1, 4.0],
    ("qk_norm", 3e-3): [3.5, 3.6, 3.5, 3.7, 3.5],
    ("qk_norm", 1e-2): [3.7, 3.8, 3.6, 3.9, 3.7],
}


def _grid():
    return [
        {
            "train.lr": lr,
            "run.seed": seed,
            "method": m,
            "status": "diverged" if f is None else "finished",
            "final_val_loss": f,
            "initial_val_loss": L0[seed],
        }  # fmt: skip
        for (m, lr), finals in FINALS.items()
        for seed, f in zip(SEEDS, finals)
    ]


def _by_hand(method, i):
    seed = SEEDS[i]
    curve = [FINALS[(method, lr)][i] for lr in LRS]
    capped = [L0[seed] if f is None else min(f, L0[seed]) for f in curve]
    return np.mean(capped) - min(f for f in curve if f is not None)


def test_each_seeds_sensitivity_is_wortsmans_formula_on_its_own_curve():
    table = sens.seed_sensitivities(_grid(), lambda r: r["method"], [])
    for m in ("baseline", "qk_norm"):
        assert table[()][m] == {s: pytest.approx(_by_hand(m, i)) for i, s in enumerate(SEEDS)}
    # seed 1 of the baseline by hand: (4.0 + 3.6 + 10.0) / 3 - 3.6
    assert table[()]["baseline"][1] == pytest.approx((4.0 + 3.6 + 10.0) / 3 - 3.6)
    # seed 4: 11.0 is capped at its own L0 10.1
    assert table[()]["baseline"][4] == pytest.approx((4.2 + 3.8 + 10.1) / 3 - 3.8)


def test_a_seed_counts_only_with_every_lr_finished_or_diverged():
    grid = _grid()
    for r in grid:
        if (r["method"], r["train.lr"], r["run.seed"]) == ("qk_norm", 1e-2, 2):
            r["status"], r["final_val_loss"] = "unfinished", None
    grid = [r for r in grid if (r["method"], r["train.lr"], r["run.seed"]) != ("qk_norm", 3e-3, 3)]  # not run
    table = sens.seed_sensitivities(grid, lambda r: r["method"], [])
    assert sorted(table[()]["qk_norm"]) == [1, 4, 5] and sorted(table[()]["baseline"]) == SEEDS
    rows = sens.sensitivity_statistics(grid, ["baseline", "qk_norm"], lambda r: r["method"], [], paired=True)
    paired = [r for r in rows if r["vs"] == "baseline"]
    assert [r["n"] for r in paired] == [3]  # the seeds both methods have


def test_paired_statistics_match_scipy_and_the_bootstrap():
    from scipy import stats as scipy_stats

    rows = sens.sensitivity_statistics(_grid(), ["baseline", "qk_norm"], lambda r: r["method"], [], paired=True)
    base = [_by_hand("baseline", i) for i in range(5)]
    qk = [_by_hand("qk_norm", i) for i in range(5)]
    cell = next(r for r in rows if r["method"] == "qk_norm" and r["vs"] is None)
    assert (cell["metric"], cell["n"], cell["mean"]) == ("lr_sensitivity", 5, pytest.approx(np.mean(qk)))
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx(stats.bootstrap_ci(qk))
    pair = next(r for r in rows if r["vs"] == "baseline")
    assert pair["mean"] == pytest.approx(np.mean(qk) - np.mean(base)) and pair["mean"] < 0
    assert pair["p_value"] == pytest.approx(scipy_stats.wilcoxon(qk, base).pvalue)
    assert not sens.sensitivity_statistics(_grid(), ["baseline", "qk_norm"], lambda r: r["method"], [], paired=False)[
        -1
    ]["vs"]


def test_the_report_has_the_per_seed_section_only_with_seeds_and_lrs():
    keys = ["train.lr", "run.seed", "method"]
    text = sm.render_markdown([{**r, **_report_fields()} for r in _grid()], keys)
    assert "## LR sensitivity over seeds" in text and "### LR sensitivity, method - baseline, paired by seed" in text
    order = ["## LR sensitivity (Wortsman", "## LR sensitivity over seeds", "![final validation loss"]
    assert [text.index(h) for h in order] == sorted(text.index(h) for h in order)
    qk = np.mean([_by_hand("qk_norm", i) for i in range(5)])
    assert f"| qk_norm | 5 | {qk:.3f} |" in text
    one_seed = [{**r, **_report_fields()} for r in _grid() if r["run.seed"] == 1]
    assert "over seeds" not in sm.render_markdown(one_seed, ["train.lr", "method"])


def _report_fields():
    return {"run": "r", "steps_loss_ratio_gt_1.5": 0, "steps_loss_ratio_gt_1.2": 0, "max_loss_ratio": 1.0, "_evals": []}


def test_the_formula_by_hand():
    # losses 3.0, 2.0, diverged (counts as L0 = 10), 12 (worse than L0: capped at 10); best 2.0
    assert sens.lr_sensitivity({1e-3: 3.0, 2e-3: 2.0, 4e-3: None, 8e-3: 12.0}, 10.0) == pytest.approx(
        (3 + 2 + 10 + 10) / 4 - 2
    )
    assert sens.lr_sensitivity({1e-3: None, 2e-3: None}, 10.0) == 0.0  # all diverged: all at L0, the best is L0
    assert sens.lr_sensitivity({}, 10.0) is None and sens.lr_sensitivity({1e-3: 2.0}, None) is None
