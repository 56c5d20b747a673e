import json
import math
import re
import shlex

import pytest
import yaml

from seqwarm import lifecycle as trainer  # the module the CLI takes `train` from
from seqwarm.cli import main
from seqwarm.config import CurriculumConfig, load_config, resolve_config
from seqwarm.errors import ConfigError, DivergedError, SeqwarmError
from seqwarm.metrics import read_metrics
from seqwarm.plan import plan_steps
from seqwarm.tune import outputs as op
from seqwarm.tune import probes as pr
from seqwarm.tune import runner as rn
from seqwarm.tune import search as sr
from seqwarm.tune import settings as st

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
    assert sr.max_ratio(evals, until_step=len(ppls)) == pytest.approx(expected)


def test_fluctuation_verdict_at_the_factor():
    assert sr.max_ratio([(0, 100), (1, 50), (2, 65)], 2) <= 1.3  # stable
    assert sr.max_ratio([(0, 100), (1, 50), (2, 65.1)], 2) > 1.3  # fluctuates


def test_window_and_divergence():
    evals = [(0, 100), (5, 50), (10, 40), (15, 80)]
    assert sr.max_ratio(evals, 10) == pytest.approx(0.8)  # the spike at step 15 is after the window
    assert sr.max_ratio(evals, 15) == pytest.approx(2.0)
    assert sr.max_ratio(evals, 10, diverged_step=12) == pytest.approx(0.8)  # diverged after the window
    assert sr.max_ratio(evals, 15, diverged_step=12) == math.inf
    assert sr.max_ratio([(0, 100)], 10) == 0.0  # nothing to compare
    assert sr.ppl_ratios([100, 50, 75]) == [0.5, 1.5]


# --- the search on a fake probe with a known answer ------------------------------------------------------


def fake_probe(s_star: float, t_star: float, begin: int):
    """Stable at the very beginning iff seqlen_s >= s_star; over the horizon iff also T <= t_star."""
    calls = []

    def probe(seqlen_start, duration, steps):
        calls.append((seqlen_start, duration, steps))
        stable = seqlen_start >= s_star and (steps == begin or duration <= t_star)
        ppls = [50000, 2000, 900, 700] + [600 if stable else 1000]  # 1000 / 700 = 1.43: a fluctuation
        evals = tuple(zip([0, 1, 2, 3, steps], ppls))
        return sr.ProbeResult(seqlen_start, duration, steps, evals, steps_done=steps, tokens=10 * steps)

    return probe, calls


CANDIDATES = (8, 16, 32, 64, 128)
GRID = range(100, 3001, 100)  # 30 values


def make_plan(budget=None, grid=GRID):
    return sr.SearchPlan(
        1.3, CANDIDATES, t_start=400, begin_steps=100, horizon_steps=333, t_grid=grid, budget_steps=budget
    )


@pytest.mark.parametrize("s_star", [8, 9, 16, 50, 128, 129])
@pytest.mark.parametrize("t_star", [50, 100, 150, 1700, 2999, 3000, 5000])
def test_search_finds_smallest_stable_seqlen_and_largest_stable_t(s_star, t_star):
    probe, calls = fake_probe(s_star, t_star, begin=100)
    result = sr.search(probe, make_plan())
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
        return sr.ProbeResult(seqlen_start, duration, steps, ((0, 1000), (1, 500), (steps, 650)))

    result = sr.search(probe, make_plan())
    assert all(p.max_ratio == pytest.approx(1.3) and p.stable for p in result.probes)
    assert (result.seqlen_start, result.duration) == (8, GRID[-1])


def test_search_is_logarithmic_in_a_long_t_range():
    grid = range(1, 100_001)
    probe, calls = fake_probe(8, 31_337, begin=100)
    result = sr.search(probe, make_plan(grid=grid))
    assert result.duration == 31_337
    assert calls[0][2] == 100 and len(calls) - 1 <= math.ceil(math.log2(len(grid) + 1))  # 17 T probes at most


def test_budget_stops_with_the_best_known_so_far():
    probe, calls = fake_probe(16, 1700, begin=100)
    # seqlen_s probes: 8 (unstable), then bisection: 32 (stable), 16 (stable) -> 300 steps;
    # two T probes of 333 steps fit in 1000.
    result = sr.search(probe, make_plan(budget=1000))
    assert not result.complete and any("incomplete" in n for n in result.notes)
    assert len(result.probes) == 5 and result.probe_steps <= 1000
    assert result.seqlen_start == 16
    first_t = [p for p in result.probes if p.stage == sr.DURATION]
    assert result.duration == max(p.result.duration for p in first_t if p.stable)
    assert result.duration_verified

    # Out of budget before any T probe: step 1's T, flagged as not verified.
    result = sr.search(probe, make_plan(budget=300))
    assert (result.seqlen_start, result.duration, result.duration_verified) == (16, 400, False)
    # Nothing affordable: no recommendation.
    result = sr.search(probe, make_plan(budget=50))
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
        st.parse_settings(items)


def test_token_warmup_is_converted_with_the_probe_schedule(tiny_cfg):
    cfg = tiny_cfg("train.warmup_steps=0", "train.warmup_tokens=1000")
    plan, info = sr.resolve_plan(cfg, st.TuneSettings())
    w = info["warmup_steps"]
    # The fixed point: in step 1's probe (seqlen_s 8, T = 4 W) the clock reaches 1000 tokens at step W.
    rows = list(plan_steps(sr.with_curriculum(cfg, 8, 4 * w)))
    assert rows[w - 1]["tokens"] >= 1000 > rows[w - 2]["tokens"]
    assert plan.t_start == 4 * w and plan.t_grid.start == w
    assert w > math.ceil(1000 / (8 * 64))  # more steps than at full length: SLW's steps are short


@pytest.mark.parametrize("decay", [[], ["train.lr_decay_unit=steps", "train.max_steps=200"]])
def test_probe_config_is_a_prefix_of_the_full_run(tiny_cfg, tmp_path, decay):
    cfg = tiny_cfg("train.max_tokens=100000", *decay)
    plan, info = sr.resolve_plan(cfg, st.TuneSettings(eval_every_steps=3))
    probe = pr.probe_config(cfg, 16, 40, 17, info, tmp_path)
    full = sr.with_curriculum(cfg, 16, 40)
    assert probe.train.max_steps == 17 and probe.train.max_tokens == 100000
    head = [(r["seqlen"], r["lr"], r["tokens"]) for r in plan_steps(full)][:17]
    assert [(r["seqlen"], r["lr"], r["tokens"]) for r in plan_steps(probe)] == head  # identical LR schedule
    assert probe.eval.every_tokens == 3 * 8 * 16  # 3 steps at the fewest tokens per step (batch 8 x seqlen 16)
    assert probe.checkpoint.every_steps is None


# --- real probes -----------------------------------------------------------------------------------------------


def tiny_args(corpus_dir, out, *extra):
    return [
        "tune",
        "tiny-slw",
        f"data.path={corpus_dir}",
        "train.num_threads=1",
        "--out",
        str(out),
        *extra,
    ]


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
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a probe ran"))  # what the CLI passes
    assert main(tiny_args(corpus_dir, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqwarm: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_diverged_probe_is_unstable(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    plan, info = sr.resolve_plan(cfg, st.TuneSettings())
    probe = pr.probe_config(cfg, 8, 20, 5, info, tmp_path)

    def diverging_train(c, **kwargs):
        d = tmp_path / pr.probe_name(8, 20, 5)
        d.mkdir(parents=True)
        rows = [
            {"step": 0, "tokens": 0, "time_s": 0.1, "val/ppl": 5e4},
            {"step": 1, "tokens": 64, "loss": 10.0, "time_s": 0.2},
        ]
        rows += [
            {"step": 1, "tokens": 64, "time_s": 0.3, "val/ppl": 4e4},
            {"step": 2, "tokens": 128, "loss": math.nan, "time_s": 0.4},
        ]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        raise DivergedError("step 2: non-finite")

    result = rn.run_probe(probe, diverging_train, tmp_path)
    assert result.diverged_step == 2 and result.tokens == 128
    assert sr.max_ratio(result.evals, 5, result.diverged_step) == math.inf
    assert rn.run_probe(probe, diverging_train, tmp_path).cached  # a diverged probe is cached like any other


@pytest.mark.slow
def test_tune_end_to_end_and_resume(corpus_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "tune"
    # A horizon of 10 steps (the default, 17, exceeds the tiny run): seqlen_s probes of 5 steps at
    # T = 20, then T probes of 10 steps in 5, 10, 15.
    args = tiny_args(corpus_dir, out, "tune.horizon_steps=10", "tune.eval_every_steps=2")
    trained = []
    real_train = trainer.train
    monkeypatch.setattr(trainer, "train", lambda cfg, **k: (trained.append(cfg.run.dir), real_train(cfg, **k))[1])

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
    assert (snippet["length"], snippet["seqlen_start"], snippet["duration"], snippet["seqlen_end"]) == (
        "slw",
        rec["seqlen_start"],
        rec["duration"],
        64,
    )
    # The data_efficiency form deepspeed 0.19.8 accepts (its legacy top-level curriculum_learning is removed).
    ds = json.loads((out / "deepspeed.json").read_text())
    assert "curriculum_learning" not in ds
    metric = ds["data_efficiency"]["data_sampling"]["curriculum_learning"]["curriculum_metrics"]["seqlen_truncate"]
    assert {k: metric[k] for k in ("min_difficulty", "max_difficulty", "schedule_type", "schedule_config")} == {
        "min_difficulty": rec["seqlen_start"],
        "max_difficulty": 64,
        "schedule_type": "fixed_linear",
        "schedule_config": {"total_curriculum_step": rec["duration"], "difficulty_step": 8},
    }
    report = (out / "tune.md").read_text()
    assert "## Probes" in report and "% of the full run's 8,000-token budget" in report

    probes = record["probes"]
    dirs = [str(out / "probes" / pr.probe_name(p["seqlen_start"], p["duration"], p["steps"])) for p in probes]
    assert probes[0]["cached"] and trained == dirs  # the first probe was trained once, by the budgeted run
    assert all(p["steps"] == (5 if p["stage"] == sr.SEQLEN else 10) for p in probes)
    assert record["cost"]["tokens"] == sum(p["tokens"] for p in probes) > 0
    assert record["cost"]["fraction"] == pytest.approx(record["cost"]["tokens"] / 8000)
    for p in probes:
        d = out / "probes" / pr.probe_name(p["seqlen_start"], p["duration"], p["steps"])
        assert not (d / "checkpoints").exists()  # pruned; metrics.jsonl + probe.json are the cache
        evals = [r["step"] for r in read_metrics(d / "metrics.jsonl") if "val/ppl" in r]
        assert evals[0] == 0 and evals[-1] == p["steps"]
        assert max(b - a for a, b in zip(evals, evals[1:])) <= 2  # validation at least every 2 steps

    # A rerun trains nothing; an interrupted probe (no probe.json) is the only one trained again.
    last = out / "probes" / pr.probe_name(probes[-1]["seqlen_start"], probes[-1]["duration"], probes[-1]["steps"])
    (last / pr.PROBE).unlink()
    trained.clear()
    assert main(args) == 0
    assert trained == [str(last)]
    again = json.loads((out / "tune.json").read_text())
    assert again["recommendation"] == rec
    assert [p["cached"] for p in again["probes"]] == [True] * (len(probes) - 1) + [False]

    # Cached probes of another config are refused before anything runs.
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a probe ran"))
    assert main([*args, "train.lr=1e-3"]) == 2
    assert "different config" in capsys.readouterr().err


@pytest.mark.slow
def test_tune_searches_a_llama_model_and_recommends_for_it(corpus_dir, tmp_path, monkeypatch, capsys):
    """The real search with the Llama-style family (docs/MODEL.md): every probe trains the llama model, a rerun reads
    them all from the cache, the gpt2 family's tune refuses that cache, and the recommendation's command line keeps
    the tune's overrides, so it trains the family that was tuned (it used to print `seqwarm train tiny-slw` and the
    curriculum alone: a gpt2 run)."""
    out = tmp_path / "tune"
    llama = ["model.family=llama", "model.qk_norm=true", "model.n_kv_head=1"]
    # seqlen_s probes of 5 steps (one LR warmup), T probes of 6 steps over T in {5, 15}.
    settings = ["tune.horizon_steps=6", "tune.eval_every_steps=2", "tune.seqlen_candidates=[8, 16]", "tune.t_step=10"]
    trained = []
    real_train = trainer.train
    monkeypatch.setattr(trainer, "train", lambda cfg, **k: (trained.append(cfg), real_train(cfg, **k))[1])
    assert main(tiny_args(corpus_dir, out, *llama, *settings)) == 0
    capsys.readouterr()
    record = json.loads((out / "tune.json").read_text())
    rec = record["recommendation"]
    assert record["complete"] and rec["seqlen_start"] in (8, 16) and rec["duration"] in (5, 15)
    assert len(trained) == len(record["probes"]) >= 2
    assert {p["stage"] for p in record["probes"]} == {sr.SEQLEN, sr.DURATION}
    for p in record["probes"]:
        d = out / "probes" / pr.probe_name(p["seqlen_start"], p["duration"], p["steps"])
        model = load_config(d / "config.yaml").model.gpt()
        assert (model.family, model.qk_norm, model.kv_heads) == ("llama", True, 1)
        assert all(math.isfinite(ppl) for _, ppl in p["evals"])
    assert all(cfg.model.gpt().family == "llama" for cfg in trained)
    assert record["overrides"] == [f"data.path={corpus_dir}", "train.num_threads=1", *llama]

    # The command line tune.md gives trains this config with the recommendation.
    (command,) = re.findall(r"on the command line: `(seqwarm train [^`]*)`", (out / "tune.md").read_text())
    words = shlex.split(command)
    assert words[:3] == ["seqwarm", "train", "tiny-slw"]
    recommended = load_config(words[2], words[3:])
    assert recommended.model.gpt().family == "llama" and recommended.data.path == str(corpus_dir)
    c = recommended.curriculum
    assert (c.length, c.seqlen_start, c.duration) == ("slw", rec["seqlen_start"], rec["duration"])

    # A rerun trains nothing; the same tune of the gpt2 family refuses the llama probes before anything runs.
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a probe ran"))
    assert main(tiny_args(corpus_dir, out, *llama, *settings)) == 0
    assert json.loads((out / "tune.json").read_text())["recommendation"] == rec
    capsys.readouterr()
    assert main(tiny_args(corpus_dir, out, *settings)) == 2
    assert "different config (model.family: 'llama' -> None" in capsys.readouterr().err


def test_the_recommended_command_names_the_config_as_train_finds_it():
    cfg = tiny()
    shipped = str(resolve_config("tiny-slw"))  # as the command line passes it
    rec = ["curriculum.length=slw", "curriculum.seqlen_start=8", "curriculum.duration=10"]
    assert op.train_command(cfg, shipped, ["model.family=llama"], rec) == (
        "seqwarm train tiny-slw model.family=llama " + " ".join(rec)
    )
    # Another file by its path, seqwarm's defaults without one; the tune's own values of the recommended fields
    # (and seqwarm 0.2's curriculum.kind, which would override curriculum.length) give way to the recommendation.
    assert op.train_command(cfg, "my dir/exp.yaml", ["curriculum.duration=3", "curriculum.kind=slw"], rec) == (
        "seqwarm train 'my dir/exp.yaml' curriculum.batch=constant " + " ".join(rec)
    )
    assert op.train_command(cfg, None, ["data.path=d"], rec) == "seqwarm train data.path=d " + " ".join(rec)


def test_no_stable_t_after_a_stable_seqlen_gives_no_recommendation(corpus_dir, tmp_path, monkeypatch, capsys):
    # Step 2 finds seqlen_s = 8, but every T of step 3 fluctuates: nothing to recommend, and no
    # snippet may be written (it used to crash building a curriculum with T = None).
    real_search = sr.search
    monkeypatch.setattr(
        rn, "search", lambda probe, plan: real_search(fake_probe(8, 0, begin=plan.begin_steps)[0], plan)
    )
    out = tmp_path / "tune"
    assert main(tiny_args(corpus_dir, out, "tune.horizon_steps=10")) == 0
    assert "no recommendation" in capsys.readouterr().out
    record = json.loads((out / "tune.json").read_text())
    assert record["recommendation"]["seqlen_start"] == 8 and record["recommendation"]["duration"] is None
    assert not (out / "recommendation.yaml").exists() and not (out / "deepspeed.json").exists()
    assert "no recommendation" in (out / "tune.md").read_text()


# --- the pure core: plan resolution, notes, outputs -------------------------------------------------------


def tiny(*overrides):
    """The shipped tiny-slw config (batch 8, seqlen_end 64, multiple_of 8, 8,000 tokens), no data needed."""
    return load_config("tiny-slw", list(overrides))


def test_plan_in_steps_is_the_papers():
    # Section 4 with the paper's 117M numbers: a 3K-step warmup, 300K full-length steps.
    cfg = tiny("train.warmup_steps=3000", f"train.max_tokens={8 * 64 * 300_000}")
    plan, info = sr.resolve_plan(cfg, st.TuneSettings())
    assert (plan.begin_steps, plan.horizon_steps, plan.t_start) == (
        3000,
        10_000,
        12_000,
    )  # 1 W, the first 10K steps, 4 W
    assert plan.t_grid == range(3000, 300_001, 3000) and plan.candidates == (8, 16, 32)  # 64, 128 >= seqlen_end
    assert info == {
        "warmup_steps": 3000,
        "warmup_source": "train.warmup_steps",
        "eval_every_steps": 300,
        "eval_sequences": 8,
        "skipped_candidates": [64, 128],
    }
    assert sr.horizon_note(cfg, plan) is None
    # 7 T probes for 3K..300K in steps of 3K (docs/TUNING.md), and 1 seqlen_s probe when 8 is stable.
    probe, calls = fake_probe(8, 60_000, begin=3000)
    result = sr.search(probe, plan)
    assert result.duration == 60_000 and len(calls) == 1 + 7


def test_full_length_steps_and_the_horizon_note():
    assert sr.full_length_steps(tiny()) == 16  # 8,000 tokens / (8 x 64)
    assert sr.full_length_steps(tiny("train.max_steps=10")) == 10
    assert sr.full_length_steps(tiny("train.max_tokens=null", "train.max_steps=12", "train.lr_decay_unit=steps")) == 12
    plan, _ = sr.resolve_plan(tiny(), st.TuneSettings())
    assert plan.horizon_steps == 17
    assert "(17 steps) is as long as the full run (16 steps" in sr.horizon_note(tiny(), plan)


def test_no_warmup_scales_the_windows_from_the_horizon():
    plan, info = sr.resolve_plan(tiny("train.warmup_steps=0"), st.TuneSettings(horizon_steps=20))
    assert info["warmup_steps"] == 6.0 and "tune.horizon_steps" in info["warmup_source"]  # 20 / (10/3)
    assert (plan.horizon_steps, plan.begin_steps, plan.t_start, plan.t_grid.start) == (20, 6, 24, 6)


def test_search_notes_say_what_to_change():
    probe, _ = fake_probe(1000, 0, begin=100)  # no seqlen_s is stable
    result = sr.search(probe, make_plan())
    assert not result.recommended and any("no seqlen_s in [8, 16, 32, 64, 128]" in n for n in result.notes)
    probe, _ = fake_probe(16, 50, begin=100)  # seqlen_s 16, but even the smallest T fluctuates
    result = sr.search(probe, make_plan())
    assert (result.seqlen_start, result.duration, result.recommended) == (16, None, False)
    assert any("even T = 100 (tune.t_min) fluctuates" in n for n in result.notes)
    probe, _ = fake_probe(16, 1700, begin=100)
    result = sr.search(probe, make_plan())
    assert result.recommended and result.notes == [
        "seqlen_s = 8 fluctuates at the very beginning; 16 is the smallest that does not"
    ]


@pytest.mark.parametrize(
    "overrides,pacing,extra",
    [
        ([], "linear", {}),
        (["curriculum.kind=none"], "linear", {}),
        (["curriculum.pacing=root", "curriculum.root_degree=3"], "root", {"root_degree": 3.0}),
    ],
)
def test_snippets_describe_the_same_schedule(overrides, pacing, extra):
    cfg = tiny(*overrides)
    snippet = op.curriculum_snippet(cfg, 16, 40)
    assert snippet == {
        "length": "slw",
        "pacing": pacing,
        "seqlen_start": 16,
        "seqlen_end": 64,
        "duration": 40,
        **extra,
        "multiple_of": 8,
    }
    CurriculumConfig(**snippet)
    ds = op.deepspeed_block(cfg, 16, 40)["data_efficiency"]["data_sampling"]["curriculum_learning"]
    ds = ds["curriculum_metrics"]["seqlen_truncate"]
    assert ds["min_difficulty"] == 16 and ds["schedule_type"] == ("fixed_root" if pacing == "root" else "fixed_linear")
    assert ds["schedule_config"] == {"total_curriculum_step": 40, "difficulty_step": 8, **extra}


def test_report_and_record_without_a_recommendation():
    cfg = tiny()
    plan, info = sr.resolve_plan(cfg, st.TuneSettings())

    def probe(seqlen_start, duration, steps):  # diverges at step 2 in every probe
        return sr.ProbeResult(
            seqlen_start, duration, steps, ((0, 100.0),), diverged_step=2, steps_done=2, tokens=128, time_s=1.0
        )

    result = sr.search(probe, plan)
    assert not result.recommended and all(p.max_ratio == math.inf for p in result.probes)
    record = op.result_record(result, cfg, info, "tiny-slw")
    assert record["recommendation"] == {"seqlen_start": None, "duration": None, "duration_verified": False}
    assert all(p["max_ratio"] is None and not p["stable"] for p in record["probes"])  # inf is not JSON
    n = len(result.probes)
    assert record["cost"] == {
        "tokens": 128 * n,
        "full_run_tokens": 8000,
        "fraction": 128 * n / 8000,
        "steps": 5 * n,
        "time_s": 1.0 * n,
    }
    json.dumps(record, allow_nan=False)
    text = op.report_text(result, cfg, info, "tiny-slw")
    assert text.startswith("# seqwarm tune: tiny-slw\n") and "**Recommendation: no recommendation.**" in text
    assert "| fluctuates (diverged) |" in text and "## DeepSpeed" not in text
    assert f"{100 * 128 * n / 8000:.2f}% of the full run's 8,000-token budget" in text


# --- probe directories: only tune's own are replaced or pruned ------------------------------------------------


def test_cache_check_refuses_what_tune_did_not_make(tmp_path):
    cfg = tiny()
    plan, info = sr.resolve_plan(cfg, st.TuneSettings())
    probes_dir = tmp_path / "probes"
    pr.check_cache(cfg, info, probes_dir)  # nothing there yet
    (probes_dir / "empty").mkdir(parents=True)
    pr.check_cache(cfg, info, probes_dir)  # an empty directory is nothing to lose
    foreign = probes_dir / pr.probe_name(8, 20, 5)
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SeqwarmError, match="is not a seqwarm probe"):
        pr.check_cache(cfg, info, probes_dir)
    (foreign / "config.yaml").write_text(yaml.safe_dump({"run": {"dir": str(tmp_path / "elsewhere")}}))
    with pytest.raises(SeqwarmError, match="not a probe of this tune"):
        pr.check_cache(cfg, info, probes_dir)
    (foreign / "config.yaml").write_text(yaml.safe_dump({"run": {"dir": str(foreign)}}))
    pr.check_cache(cfg, info, probes_dir)  # an interrupted probe of this tune: trained again


def test_probes_outside_the_probes_directory_are_not_touched(tmp_path):
    cfg = tiny()
    plan, info = sr.resolve_plan(cfg, st.TuneSettings())
    probe = pr.probe_config(cfg, 8, 20, 5, info, tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="not a probe directory"):
        rn.run_probe(probe, lambda *a, **k: pytest.fail("a probe ran"), tmp_path / "probes")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match="refusing to delete"):
        pr.drop_checkpoints(run, tmp_path / "probes")
    assert (run / "checkpoints").exists()


def test_probe_cache_round_trip(tmp_path):
    result = sr.ProbeResult(8, 20, 5, ((0, 100.0), (5, 90.0)), diverged_step=None, steps_done=5, tokens=320, time_s=1.5)
    assert pr.cached_probe(tmp_path) is None
    pr.save_probe(tmp_path, result)
    assert pr.cached_probe(tmp_path) == sr.ProbeResult(**{**result.__dict__, "cached": True})
    assert json.loads((tmp_path / pr.PROBE).read_text())["cached"] is False


def test_a_probe_longer_than_the_run_is_named_by_the_steps_it_trains(tmp_path):
    # train.max_steps=12 is shorter than the 17-step horizon: the T probes stop at step 12, and a
    # rerun must find them under the name their cached result (steps = 12) gives.
    cfg = tiny("train.max_steps=12")
    plan, info = sr.resolve_plan(cfg, st.TuneSettings())
    probe = pr.probe_config(cfg, 8, 10, plan.horizon_steps, info, tmp_path)
    assert probe.train.max_steps == 12 and probe.run.dir == str(tmp_path / pr.probe_name(8, 10, 12))
