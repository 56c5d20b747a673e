"""studies/study2.py: the pre-registered stages, selection and threshold rules, and the measures of one run,
on synthetic inputs with known answers (docs/STUDY2.md)."""

import json

import pytest
from study_script import study2

from seqwarm.config import load_config

study = study2()


def test_stages_have_the_protocols_runs():
    assert len(study.stage_specs("calibration")) == 4
    assert len(study.stage_specs("screen128")) == 2 + 3 * 2 * len(study.ARMS) == 92
    assert len(study.stage_specs("screen512")) == 20
    confirm = study.stage_specs("confirm", [])
    assert {s.seed for s in confirm if s.context == "c128"} == set(range(11, 18))  # fresh seeds: never the screen's
    assert {s.seed for s in confirm if s.context == "c512"} == set(range(11, 16))
    hashes = [s.config_hash() for st in ("calibration", "screen128", "screen512") for s in study.stage_specs(st)]
    assert len(hashes) == len(set(hashes))


def test_the_screen_carries_at_most_two_arms_at_least_ten_percent_better():
    rows = [
        {"stage": "screen128", "lr": lr, "arm": arm, "plateau_steps": p}
        for lr in study.AGGRESSIVE
        for arm, p in [("baseline", 100), ("z-loss", 95), ("zclip", 89), ("skip-step", 50), ("window", 70)]
    ]
    assert study.screen_selection(rows) == ["skip-step", "window"]
    carried = study.stage_specs("confirm", rows)
    assert {s.arm for s in carried if s.context == "c128"} >= {"skip-step", "window", "baseline", "slw"}


def test_thresholds_by_the_rule_and_the_fallback():
    def row(lr, logit, entropy, med_logit, med_entropy):
        return {"stage": "calibration", "lr": lr, "max_attn_logit": logit, "min_attn_entropy": entropy,
                "layer0_logit_median_20_80": med_logit, "layer0_entropy_median_20_80": med_entropy}  # fmt: skip

    rows = [row(3e-3, 4.0, 0.6, 3, 0.7), row(3e-3, 5.0, 0.5, 3, 0.7), row(1e-1, 90, 0.01, 80, 0.02)]
    rows.append(row(1e-1, 90, 0.01, 100, 0.04))
    th = study.calibrate(rows)
    assert th["source"] == "calibration"
    assert th["logit"] == pytest.approx((5.0 * 90) ** 0.5) and th["entropy"] == pytest.approx((0.5 + 0.03) / 2)
    rows[-1] = row(1e-1, 4, 0.6, 3, 0.7)
    rows[-2] = row(1e-1, 4, 0.6, 3, 0.7)
    assert study.calibrate(rows)["source"].startswith("defaults")


def test_measures_of_a_run(tmp_path):
    rows = []
    for step in range(1, 31):
        collapsed = step >= 10
        rows.append({"step": step, "tokens": step * 10, "loss": 6.0, "loss_ratio": 1.3 if step == 12 else 1.0,
                     "grad_norm": 1.0, "adam/var_max": 1.0,
                     "diag/attn/0/logit_max": 50.0 if collapsed else 2.0 + step / 10,
                     "diag/attn/0/entropy": 0.01 if collapsed else 0.8,
                     "diag/attn/1/logit_max": 3.0, "diag/attn/1/entropy": 0.7})  # fmt: skip
    rows += [{"step": s, "tokens": s * 10, "val/loss": v} for s, v in [(0, 7.0), (8, 6.0), (16, 5.4), (24, 5.0)]]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "summary.json").write_text(json.dumps({"wall_s": 1.0}))
    m = study.measures(tmp_path, {"logit": 10.0, "entropy": 0.1}, unigram=5.8)
    assert m["plateau_steps"] == 16  # 5.4 <= 5.8 - 0.3
    assert (m["collapsed"], m["collapse_onset"], m["collapse_layer"]) == (True, 10, 0)
    assert m["lead_logit"] == 0 and m["lead_entropy"] == 0 and m["lead_loss_ratio"] == -2  # the ratio came after
    assert m["max_attn_logit"] == 50.0 and m["final_val_loss"] == 5.0
    assert study.plateau_steps([{"step": 8, "val/loss": 6.0}], 5.8, 30) == study.STEPS  # never: censored


def test_every_arm_is_a_valid_config():
    arms = {s.arm: s for s in study.stage_specs("screen128")}  # one run of each arm at C128
    for s in [*arms.values(), *study.stage_specs("screen512")]:
        try:
            load_config("proxy", s.overrides())
        except Exception as e:  # noqa: BLE001 (the switch may not exist yet: say which)
            pytest.fail(f"{s.name}: {e}")


def test_holm_and_the_verdicts_on_synthetic_confirmation_rows():
    assert study.holm({"a": 0.01, "b": 0.04, "c": None}) == {"a": 0.02, "b": 0.04, "c": None}
    rows = []
    for seed in range(11, 18):
        for arm, p in [
            ("baseline", 100),
            ("slw", 99 + 2 * (seed % 2)),
            ("qk-norm", 40 + seed % 2),
            ("slw+qk-norm", 40),
        ]:
            rows.append({"stage": "confirm", "context": "c128", "lr": 3e-2, "seed": seed, "arm": arm,
                         "plateau_steps": p, "final_val_loss": 5.0 - (arm == "slw+qk-norm") * 0.01 * seed})  # fmt: skip
    for seed in range(11, 16):
        for arm, p in [("baseline", 100), ("slw", 60 + seed)]:
            rows.append({"stage": "confirm", "context": "c512", "lr": 1e-2, "seed": seed, "arm": arm,
                         "plateau_steps": p, "final_val_loss": 5.0})  # fmt: skip
    v = study.verdicts(rows)
    assert v["S1 qk-norm"].startswith("supported")  # 7 of 7 seeds shorter: p = 1/128, Holm over 3 arms < 0.05
    assert v["S1 slw"].startswith("not shown")
    assert v["S2"].startswith("supported")
    assert v["S4"].startswith("supported")
    assert v["S5"].startswith("not shown")


def test_rows_gain_columns_without_losing_values_and_incomplete_rows_are_superseded(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "HERE", tmp_path)
    monkeypatch.setattr(study, "ROWS", tmp_path / "rows.csv")
    study.append_row({"stage": "calibration", "config_hash": "a", "plateau_steps": 20})
    study.append_row({"stage": "screen128", "config_hash": "b", "plateau_steps": 30, "collapsed": ""})
    study.append_row(
        {"stage": "screen128", "config_hash": "c", "plateau_steps": 40, "collapsed": True, "lead_logit": 3}
    )
    every = study.read_rows(every=True)
    assert [r["plateau_steps"] for r in every] == ["20", "30", "40"] and every[0]["lead_logit"] == ""
    assert [r["config_hash"] for r in study.read_rows()] == ["a", "c"]  # b lacks its collapse measures: run again
    study.append_row({"stage": "screen128", "config_hash": "b", "plateau_steps": 30, "collapsed": False})
    assert sorted(r["config_hash"] for r in study.read_rows()) == ["a", "b", "c"]


def test_plateau_is_censored_at_100_steps_and_a_diverged_run_ranks_worst():
    """A run that never left the plateau records its own steps (SLW's 121): the tests read 100, a tie with a
    100-step baseline that never left it either; a diverged run's final loss is its initial loss."""
    assert study._num({"plateau_steps": "121"}, "plateau_steps") == study.STEPS
    assert study._num({"plateau_steps": "36"}, "plateau_steps") == 36
    diverged = {"final_val_loss": "", "initial_loss": "6.9", "diverged": "True"}
    assert study._num(diverged, "final_val_loss") == 6.9
    rows = [
        {"stage": "confirm", "context": "c128", "lr": 3e-2, "seed": s, "arm": arm, "plateau_steps": p}
        for s in range(11, 18)
        for arm, p in [("baseline", 100), ("slw", 121)]
    ]
    assert study.paired(rows, "c128", 3e-2, "slw", "baseline", "plateau_steps") == ([100.0] * 7, [100.0] * 7)
    screen = [
        {"stage": "screen128", "lr": lr, "arm": arm, "plateau_steps": p}
        for lr in study.AGGRESSIVE
        for arm, p in [("baseline", 100), ("window", 121), ("z-loss", 80)]
    ]
    assert study.screen_selection(screen) == ["z-loss"]


def test_the_summary_seqwarm_demo_prints_is_what_the_committed_rows_give():
    """`seqwarm demo` prints the confirmation's answer from seqwarm/study2_confirmed.json: it must be the rows'
    (rebuild it with `python studies/study2.py summary` after adding confirmation rows)."""
    shipped = json.loads(study.SUMMARY.read_text())
    assert shipped == json.loads(json.dumps(study.summary(study.read_rows()))), "run: python studies/study2.py summary"


def test_confirmation_means_and_the_summary_on_synthetic_rows():
    rows = [
        {"stage": "confirm", "context": "c128", "lr": 3e-2, "seed": s, "arm": arm, "plateau_steps": p,
         "final_val_loss": f, "initial_loss": 6.9, "diverged": str(f is None), "collapsed": str(arm == "baseline")}
        for s in range(11, 18)
        for arm, p, f in [("baseline", 121 if s % 2 else 60, 5.5), ("qk-norm", 40, 5.3 if s > 11 else None)]
    ]  # fmt: skip
    means = study.confirmation_means(rows)["c128"]
    assert means["baseline"]["plateau_mean"] == pytest.approx((4 * 100 + 3 * 60) / 7)  # 121 counts as 100
    assert means["baseline"]["escaped"] == 3 and means["baseline"]["collapsed"] == 7
    assert means["qk-norm"]["final_val_loss_mean"] == pytest.approx((6.9 + 6 * 5.3) / 7)  # diverged: initial loss
    s = study.summary(rows)
    assert s["arms"] == means and s["verdicts"]["S1 qk-norm"].startswith("supported")


def test_the_tables_pair_each_arm_with_its_familys_baseline_and_give_every_section():
    rows = [
        {
            "stage": "confirm",
            "context": "c128",
            "lr": "0.03",
            "seed": str(s),
            "arm": arm,
            "plateau_steps": str(p),
            "final_val_loss": "5.0",
            "initial_loss": "6.9",
            "diverged": "False",
            "collapsed": "False",
            "max_attn_logit": "10.0",
            "min_attn_entropy": "0.5",
        }
        for s in range(11, 14)
        for arm, p in [("baseline", 90), ("qk-norm", 50), ("llama", 60), ("llama-slw", 40)]
    ]  # fmt: skip  (as the CSV reader gives them: strings)
    text = study.tables(rows)
    for section in ("### confirm: 12 of", "### Paired by seed", "### LR sensitivity", "### Confirmation means",
                    "### Verdicts", "S1 on the raw plateau values"):  # fmt: skip
        assert section in text, section
    assert "| c128 | llama-slw | llama | plateau_steps | 3 | -20.000 |" in text
    assert "| c128 | qk-norm | baseline | plateau_steps | 3 | -40.000 |" in text
