import json
import math

import pytest
import yaml

from seqwarm import tune as tn
from seqwarm.cli import main
from seqwarm.config import CurriculumConfig
from seqwarm.errors import ConfigError, DivergedError
from seqwarm.plan import plan_steps
from seqwarm.metrics import read_metrics

# --- the fluctuation rule on hand-made perplexity sequences -------------------------------------------


@pytest.mark.parametrize(
    "ppls,expected",
    [
        ([100, 50, 64], 64 / 50),  # below 1.3x the best: not a fluctuation
        ([100, 50, 65], 1.3),  # exactly 1.3x: "larger than 1.3x" is needed
        ([100, 50, 66], 66 / 50),
        ([100, 40, 50, 55], 55 / 40),  # against the best so far (40), not the previous value (50)
        ([100, 50, 80, 45], 80 / 50),  # a spike counts even if the curve recovers
        ([1000, 900, 800], 0.9),  # always improving: every ratio below 1
        ([100, float("nan"), 90], math.inf),  # a non-finite perplexity is a fluctuation
    ],
)
def test_max_ratio_is_against_the_best_before(ppls, expected):
    evals = list(enumerate(ppls))
    assert tn.max_ratio(evals, until_step=len(ppls)) == pytest.approx(expected)


def test_fluctuation_verdict_at_the_factor():
    assert tn.max_ratio([(0, 100), (1, 50), (2, 65)], 2) <= 1.3  # stable
    assert tn.max_ratio([(0, 100), (1, 50), (2, 65.1)], 2) > 1.3  # fluctuates


def test_window_and_divergence():
    evals = [(0, 100), (5, 50), (10, 40), (15, 80)]
    assert tn.max_ratio(evals, 10) == pytest.approx(0.8)  # the spike at step 15 is after the window
    assert tn.max_ratio(evals, 15) == pytest.approx(2.0)
    assert tn.max_ratio(evals, 10, diverged_step=12) == pytest.approx(0.8)  # diverged after the window
    assert tn.max_ratio(evals, 15, diverged_step=12) == math.inf
    assert tn.max_ratio([(0, 100)], 10) == 0.0  # nothing to compare
    assert tn.ppl_ratios([100, 50, 75]) == [0.5, 1.5]


# --- the search on a fake probe with a known answer ------------------------------------------------------


def fake_probe(s_star: float, t_star: float, begin: int):
    """Stable at the very beginning iff seqlen_s >= s_star; over the horizon iff also T <= t_star."""
    calls = []

    def probe(seqlen_start, duration, steps):
        calls.append((seqlen_start, duration, steps))
        stable = seqlen_start >= s_star and (steps == begin or duration <= t_star)
        ppls = [50000, 2000, 900, 700] + [600 if stable else 1000]  # 1000 / 700 = 1.43: a fluctuation
        evals = tuple(zip([0, 1, 2, 3, steps], ppls))
        return tn.ProbeResult(seqlen_start, duration, steps, evals, steps_done=steps, tokens=10 * steps)

    return probe, calls


CANDIDATES = (8, 16, 32, 64, 128)
GRID = range(100, 3001, 100)  # 30 values


def make_plan(budget=None, grid=GRID):
    return tn.SearchPlan(1.3, CANDIDATES, t_start=400, begin_steps=100, horizon_steps=333, t_grid=grid, budget_steps=budget)


@pytest.mark.parametrize("s_star", [8, 9, 16, 50, 128, 129])
@pytest.mark.parametrize("t_star", [50, 100, 150, 1700, 2999, 3000, 5000])
def test_search_finds_smallest_stable_seqlen_and_largest_stable_t(s_star, t_star):
    probe, calls = fake_probe(s_star, t_star, begin=100)
    result = tn.search(probe, make_plan())
    stable_s = [s for s in CANDIDATES if s >= s_star]
    stable_t = [t for t in GRID if t <= t_star]
    assert result.complete
    assert result.seqlen_start == (stable_s[0] if stable_s else None)
    s_probes = [c for c in calls if c[2] == 100]
    t_probes = [c for c in calls if c[2] == 333]
    assert all(d == 400 for _, d, _ in s_probes)  # step 2 uses step 1's T
    # Smallest first (the paper's 8), then bisection over the rest.
    assert s_probes[0][0] == 8
    assert len(s_probes) == 1 if s_star <= 8 else len(s_probes) <= 1 + math.ceil(math.log2(len(CANDIDATES)))
    if not stable_s:
        assert not t_probes and result.duration is None
        return
    assert all(s == result.seqlen_start for s, _, _ in t_probes)  # step 3 at step 2's seqlen_s
    assert len(t_probes) <= math.ceil(math.log2(len(GRID) + 1))  # 5 probes for 30 values
    assert result.duration == (stable_t[-1] if stable_t else None)
    assert result.duration_verified == bool(stable_t)
    assert [p.stable for p in result.probes] == [c[0] >= s_star and (c[2] == 100 or c[1] <= t_star) for c in calls]
    if stable_t and stable_t[-1] == GRID[-1]:
        assert any("raise tune.t_max" in n for n in result.notes)


def test_a_ratio_equal_to_the_factor_is_stable():
    def probe(seqlen_start, duration, steps):  # 650 / 500 = 1.3 exactly, in every probe
        return tn.ProbeResult(seqlen_start, duration, steps, ((0, 1000), (1, 500), (steps, 650)))

    result = tn.search(probe, make_plan())
    assert all(p.max_ratio == pytest.approx(1.3) and p.stable for p in result.probes)
    assert (result.seqlen_start, result.duration) == (8, GRID[-1])


def test_search_is_logarithmic_in_a_long_t_range():
    grid = range(1, 100_001)
    probe, calls = fake_probe(8, 31_337, begin=100)
    result = tn.search(probe, make_plan(grid=grid))
    assert result.duration == 31_337
    assert calls[0][2] == 100 and len(calls) - 1 <= math.ceil(math.log2(len(grid) + 1))  # 17 T probes at most


def test_budget_stops_with_the_best_known_so_far():
    probe, calls = fake_probe(16, 1700, begin=100)
    # seqlen_s probes: 8 (unstable), then bisection: 32 (stable), 16 (stable) -> 300 steps;
    # two T probes of 333 steps fit in 1000.
    result = tn.search(probe, make_plan(budget=1000))
    assert not result.complete and any("incomplete" in n for n in result.notes)
    assert len(result.probes) == 5 and result.probe_steps <= 1000
    assert result.seqlen_start == 16
    first_t = [p for p in result.probes if p.stage == tn.DURATION]
    assert result.duration == max(p.result.duration for p in first_t if p.stable)
    assert result.duration_verified

    # Out of budget before any T probe: step 1's T, flagged as not verified.
    result = tn.search(probe, make_plan(budget=300))
    assert (result.seqlen_start, result.duration, result.duration_verified) == (16, 400, False)
    # Nothing affordable: no recommendation.
    result = tn.search(probe, make_plan(budget=50))
    assert result.probes == [] and result.seqlen_start is None and not result.complete


# --- settings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "items,message",
    [
        (["tune.factor=1.0"], "tune.factor"),
        (["tune.seqlen_candidates=[]"], "empty"),
        (["tune.seqlen_candidates=[16, 8]"], "increasing"),
        (["tune.t_min=50", "tune.t_max=10"], "inverted"),
        (["tune.horizon=3"], "unknown tune setting"),
        (["tune.t_step=fast"], "tune.t_step"),
    ],
)
def test_bad_settings_parse(items, message):
    with pytest.raises(ConfigError, match=message):
        tn.parse_settings(items)


def test_token_warmup_is_converted_with_the_probe_schedule(tiny_cfg):
    cfg = tiny_cfg("train.warmup_steps=0", "train.warmup_tokens=1000")
    plan, info = tn.resolve_plan(cfg, tn.TuneSettings())
    w = info["warmup_steps"]
    # The fixed point: in step 1's probe (seqlen_s 8, T = 4 W) the clock reaches 1000 tokens at step W.
    rows = list(plan_steps(tn._with_curriculum(cfg, 8, 4 * w)))
    assert rows[w - 1]["tokens"] >= 1000 > rows[w - 2]["tokens"]
    assert plan.t_start == 4 * w and plan.t_grid.start == w
    assert w > math.ceil(1000 / (8 * 64))  # more steps than at full length: SLW's steps are short


@pytest.mark.parametrize("decay", [[], ["train.lr_decay_unit=steps", "train.max_steps=200"]])
def test_probe_config_is_a_prefix_of_the_full_run(tiny_cfg, tmp_path, decay):
    cfg = tiny_cfg("train.max_tokens=100000", *decay)
    plan, info = tn.resolve_plan(cfg, tn.TuneSettings(eval_every_steps=3))
    probe = tn.probe_config(cfg, 16, 40, 17, info, tmp_path)
    full = tn._with_curriculum(cfg, 16, 40)
    assert probe.train.max_steps == 17 and probe.train.max_tokens == 100000
    head = [(r["seqlen"], r["lr"], r["tokens"]) for r in plan_steps(full)][:17]
    assert [(r["seqlen"], r["lr"], r["tokens"]) for r in plan_steps(probe)] == head  # identical LR schedule
    assert probe.eval.every_tokens == 3 * 8 * 16  # 3 steps at the fewest tokens per step (batch 8 x seqlen 16)
    assert probe.checkpoint.every_steps is None


# --- real probes -----------------------------------------------------------------------------------------------


def tiny_args(corpus_dir, out, *extra):
    return ["tune", "configs/tiny-slw.yaml", f"data.path={corpus_dir}", "train.num_threads=1", "--out", str(out), *extra]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["tune.seqlen_candidates=[64, 128]"], "search range is empty"),
        (["tune.horizon_steps=2", "tune.eval_every_steps=3"], "shorter than one validation interval"),
        (["tune.begin_warmups=0.2", "tune.eval_every_steps=2"], "shorter than one validation interval"),
        (["tune.t_min=30", "tune.t_max=10"], "inverted"),
        (["tune.t_min=30"], "inverted"),  # above the default t_max (the full run's 16 steps)
        (["train.warmup_steps=0"], "no LR warmup"),
        (["curriculum.pacing=discrete", "curriculum.stages=[[4, 8]]"], "discrete"),
        (["--budget-steps", "0"], "budget-steps"),
    ],
)
def test_bad_settings_fail_before_any_probe(corpus_dir, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setattr(tn, "train", lambda *a, **k: pytest.fail("a probe ran"))
    assert main(tiny_args(corpus_dir, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqwarm: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_diverged_probe_is_unstable(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg()
    plan, info = tn.resolve_plan(cfg, tn.TuneSettings())
    probe = tn.probe_config(cfg, 8, 20, 5, info, tmp_path)

    def diverging_train(c, **kwargs):
        d = tmp_path / tn.probe_name(8, 20, 5)
        d.mkdir(parents=True)
        rows = [{"step": 0, "tokens": 0, "time_s": 0.1, "val/ppl": 5e4}, {"step": 1, "tokens": 64, "loss": 10.0, "time_s": 0.2}]
        rows += [{"step": 1, "tokens": 64, "time_s": 0.3, "val/ppl": 4e4}, {"step": 2, "tokens": 128, "loss": math.nan, "time_s": 0.4}]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        raise DivergedError("step 2: non-finite")

    monkeypatch.setattr(tn, "train", diverging_train)
    result = tn.run_probe(probe)
    assert result.diverged_step == 2 and result.tokens == 128
    assert tn.max_ratio(result.evals, 5, result.diverged_step) == math.inf
    assert tn.run_probe(probe).cached  # a diverged probe is cached like any other


def test_tune_end_to_end_and_resume(corpus_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "tune"
    # A horizon of 10 steps (the default, 17, exceeds the tiny run): seqlen_s probes of 5 steps at
    # T = 20, then T probes of 10 steps in 5, 10, 15.
    args = tiny_args(corpus_dir, out, "tune.horizon_steps=10", "tune.eval_every_steps=2")
    trained = []
    real_train = tn.train
    monkeypatch.setattr(tn, "train", lambda cfg, **k: (trained.append(cfg.run.dir), real_train(cfg, **k))[1])

    # A budget that affords only the seqlen_s probe: an incomplete tune, T not verified.
    assert main([*args, "--budget-steps", "9"]) == 0
    assert "(not verified)" in capsys.readouterr().out
    partial = json.loads((out / "tune.json").read_text())
    assert not partial["complete"] and len(partial["probes"]) == 1 and len(trained) == 1
    assert partial["recommendation"]["duration_verified"] is False
    assert "INCOMPLETE" in (out / "recommendation.yaml").read_text()

    # Without the budget the tune resumes: the seqlen_s probe is read from the cache.
    assert main(args) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "tune.json").read_text())
    rec = record["recommendation"]
    assert record["complete"] and rec["seqlen_start"] in (8, 16, 32) and rec["duration"] in (5, 10, 15)
    assert f"seqlen_s = {rec['seqlen_start']}, T = {rec['duration']}" in printed

    # Both formats carry the same recommendation.
    snippet = yaml.safe_load((out / "recommendation.yaml").read_text())["curriculum"]
    CurriculumConfig(**snippet)  # a valid seqwarm curriculum section
    assert (snippet["kind"], snippet["seqlen_start"], snippet["duration"], snippet["seqlen_end"]) == (
        "slw",
        rec["seqlen_start"],
        rec["duration"],
        64,
    )
    ds = json.loads((out / "deepspeed.json").read_text())["curriculum_learning"]
    assert ds == {
        "enabled": True,
        "curriculum_type": "seqlen",
        "min_difficulty": rec["seqlen_start"],
        "max_difficulty": 64,
        "schedule_type": "fixed_linear",
        "schedule_config": {"total_curriculum_step": rec["duration"], "difficulty_step": 8},
    }
    report = (out / "tune.md").read_text()
    assert "## Probes" in report and "% of the full run's 8,000-token budget" in report

    probes = record["probes"]
    dirs = [str(out / "probes" / tn.probe_name(p["seqlen_start"], p["duration"], p["steps"])) for p in probes]
    assert probes[0]["cached"] and trained == dirs  # the first probe was trained once, by the budgeted run
    assert all(p["steps"] == (5 if p["stage"] == tn.SEQLEN else 10) for p in probes)
    assert record["cost"]["tokens"] == sum(p["tokens"] for p in probes) > 0
    assert record["cost"]["fraction"] == pytest.approx(record["cost"]["tokens"] / 8000)
    for p in probes:
        d = out / "probes" / tn.probe_name(p["seqlen_start"], p["duration"], p["steps"])
        assert not (d / "checkpoints").exists()  # pruned; metrics.jsonl + probe.json are the cache
        evals = [r["step"] for r in read_metrics(d / "metrics.jsonl") if "val/ppl" in r]
        assert evals[0] == 0 and evals[-1] == p["steps"]
        assert max(b - a for a, b in zip(evals, evals[1:])) <= 2  # validation at least every 2 steps

    # A rerun trains nothing; an interrupted probe (no probe.json) is the only one trained again.
    last = out / "probes" / tn.probe_name(probes[-1]["seqlen_start"], probes[-1]["duration"], probes[-1]["steps"])
    (last / tn.PROBE).unlink()
    trained.clear()
    assert main(args) == 0
    assert trained == [str(last)]
    again = json.loads((out / "tune.json").read_text())
    assert again["recommendation"] == rec
    assert [p["cached"] for p in again["probes"]] == [True] * (len(probes) - 1) + [False]

    # Cached probes of another config are refused before anything runs.
    monkeypatch.setattr(tn, "train", lambda *a, **k: pytest.fail("a probe ran"))
    assert main([*args, "train.lr=1e-3"]) == 2
    assert "different config" in capsys.readouterr().err


def test_no_stable_t_after_a_stable_seqlen_gives_no_recommendation(corpus_dir, tmp_path, monkeypatch, capsys):
    # Step 2 finds seqlen_s = 8, but every T of step 3 fluctuates: nothing to recommend, and no
    # snippet may be written (it used to crash building a curriculum with T = None).
    real_search = tn.search
    monkeypatch.setattr(tn, "search", lambda probe, plan: real_search(fake_probe(8, 0, begin=plan.begin_steps)[0], plan))
    out = tmp_path / "tune"
    assert main(tiny_args(corpus_dir, out, "tune.horizon_steps=10")) == 0
    assert "no recommendation" in capsys.readouterr().out
    record = json.loads((out / "tune.json").read_text())
    assert record["recommendation"]["seqlen_start"] == 8 and record["recommendation"]["duration"] is None
    assert not (out / "recommendation.yaml").exists() and not (out / "deepspeed.json").exists()
    assert "no recommendation" in (out / "tune.md").read_text()
