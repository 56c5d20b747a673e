import csv
import json
from pathlib import Path

import numpy as np
import pytest

from seqwarm.cli import main
from seqwarm.config import load_config
from seqwarm.errors import ConfigError, DivergedError, SeqwarmError
from seqwarm.lifecycle import train as real_train
from seqwarm.rundir import config_path
from seqwarm.sweep import grid as sw
from seqwarm.sweep import runner, state
from seqwarm.sweep import summary as sm


def grid_2x2(corpus_dir) -> sw.Sweep:
    return sw.Sweep(
        config="tiny-baseline",
        overrides=[f"data.path={corpus_dir}", "train.num_threads=1", "curriculum.duration=8"],
        axes=[sw.parse_grid("train.lr=[3e-3, 1e-2]"), sw.parse_grid("curriculum.kind=[none, slw]")],
    )


def test_grid_expands_to_named_cartesian_product(corpus_dir, tmp_path):
    cells = sw.build_cells(grid_2x2(corpus_dir), tmp_path / "out")
    assert [c.name for c in cells] == [
        "lr=0.003__kind=none",
        "lr=0.003__kind=slw",
        "lr=0.01__kind=none",
        "lr=0.01__kind=slw",
    ]
    assert [(c.cfg.train.lr, c.cfg.curriculum.kind) for c in cells] == [
        (3e-3, "none"),
        (3e-3, "slw"),
        (1e-2, "none"),
        (1e-2, "slw"),
    ]
    assert all(Path(c.cfg.run.dir) == tmp_path / "out" / c.name for c in cells)
    assert not (tmp_path / "out").exists()  # building the grid writes nothing


@pytest.mark.parametrize(
    "grid,message",
    [
        ("train.lr=[]", "empty"),
        ("train.lr=3e-3", "expected a list"),
        ("train.lrr=[1, 2]", "did you mean train.lr"),
        ("train.lr=[1e-3, fast]", "train.lr"),
        ("train.lr=[1e-3, 0.001]", "same setting"),
        ("run.seed=[1, 1]", "listed twice"),
    ],
)
def test_bad_grids_fail_before_any_run(corpus_dir, tmp_path, grid, message):
    sweep = sw.Sweep("tiny-baseline", [f"data.path={corpus_dir}"], [sw.parse_grid("run.seed=[1, 2]")])
    with pytest.raises(ConfigError, match=message):
        sweep.axes = sw.merge_axes(sweep.axes, [sw.parse_grid(grid)])
        runner.run_sweep(sweep, tmp_path / "out", train_fn=real_train)
    assert not (tmp_path / "out").exists()


def test_sweep_file_methods_are_one_axis(tmp_path, corpus_dir):
    spec = tmp_path / "grid.yaml"
    spec.write_text(
        f"""
sweep:
  config: tiny-baseline
  out: {tmp_path / "runs"}
  overrides: {{data.path: {corpus_dir}}}
  grid:
    run.seed: [1, 2]
  methods:
    baseline: {{}}
    long-warmup: {{train.warmup_steps: 8}}
    slw: {{curriculum.kind: slw, curriculum.duration: 8}}
"""
    )
    sweep = sw.load_sweep_file(spec)
    cells = sw.build_cells(sweep, sweep.out)
    assert [c.name for c in cells][:3] == [
        "seed=1__method=baseline",
        "seed=1__method=long-warmup",
        "seed=1__method=slw",
    ]
    assert [c.cfg.train.warmup_steps for c in cells[:3]] == [5, 8, 5]
    assert [c.cfg.curriculum.kind for c in cells[:3]] == ["none", "none", "slw"]
    spec.write_text(spec.read_text().replace("run.seed: [1, 2]", "train.warmup_steps: [1, 2]"))
    with pytest.raises(ConfigError, match="long-warmup: sets train.warmup_steps, which is also a grid axis"):
        sw.build_cells(sw.load_sweep_file(spec), tmp_path)


@pytest.mark.slow
def test_sweep_trains_skips_resumes_and_reports(corpus_dir, tmp_path):
    out = tmp_path / "out"
    sweep = grid_2x2(corpus_dir)
    calls = []

    def interrupted_train(cfg, **kw):
        calls.append((Path(cfg.run.dir).name, kw["resume"]))
        if len(calls) == 3:  # the third run is killed after its checkpoint at step 10

            def stop(clock):
                if clock.step == 12:
                    raise KeyboardInterrupt

            return real_train(cfg, **kw, on_step=stop)
        return real_train(cfg, **kw)

    assert sw.build_cells(sweep, out)[2].cfg.checkpoint.every_steps == 10
    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(sweep, out, train_fn=interrupted_train, progress=False)
    assert [c[0] for c in calls] == ["lr=0.003__kind=none", "lr=0.003__kind=slw", "lr=0.01__kind=none"]
    assert state.status(sw.build_cells(sweep, out)[2]) == "resume"

    calls.clear()
    runner.run_sweep(sweep, out, train_fn=interrupted_train, progress=False)
    # finished runs are skipped; the interrupted one resumes from its checkpoint; the last one starts
    assert calls == [("lr=0.01__kind=none", True), ("lr=0.01__kind=slw", False)]
    resumed = [json.loads(line) for line in (out / "lr=0.01__kind=none" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in resumed if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # one row per step across the interruption

    # the report's table is the runs' own summaries
    with open(out / sm.RUNS_CSV) as f:
        table = {r["run"]: r for r in csv.DictReader(f)}
    assert set(table) == {c.name for c in sw.build_cells(sweep, out)}
    for name, row in table.items():
        summary = json.loads((out / name / "summary.json").read_text())
        assert row["status"] == "finished"
        assert float(row["final_val_loss"]) == pytest.approx(summary["final_val_loss"])
        assert int(row["steps_loss_ratio_gt_1.5"]) == summary["steps_loss_ratio_gt_1.5"]
        assert int(row["steps"]) == summary["steps"]
    report = (out / sm.REPORT).read_text()
    assert "| train.lr | none | slw |" in report and "LR sensitivity" in report
    assert (out / sm.FIGURE).exists() and (out / sm.UNSTABLE / "report.md").exists()

    calls.clear()
    runner.run_sweep(sweep, out, train_fn=interrupted_train, progress=False)
    assert calls == []  # everything finished: nothing retrained


LLAMA = ["model.family=llama", "model.qk_norm=true", "model.n_kv_head=1"]


@pytest.mark.slow
def test_a_llama_grid_trains_resumes_and_reports(corpus_dir, tmp_path):
    """The sweep with the Llama-style family (docs/MODEL.md): every run trains the llama model the grid names, an
    interrupted one resumes from its checkpoint (which a rerun accepts as this grid's run: its saved llama options
    equal the grid's), finished ones are skipped, and the report has a row per run."""
    out = tmp_path / "out"
    sweep = sw.Sweep(
        "tiny-slw",
        [f"data.path={corpus_dir}", "train.num_threads=1", *LLAMA, "train.max_tokens=1536"]
        + ["curriculum.duration=4", "checkpoint.every_steps=2", "eval.every_tokens=768"],
        [sw.parse_grid("curriculum.length=[none, slw]")],
    )
    calls = []

    def interrupted_train(cfg, **kw):
        calls.append((Path(cfg.run.dir).name, cfg.model.gpt().family, kw["resume"]))
        if cfg.curriculum.length == "slw" and not kw["resume"]:  # killed after its checkpoint at step 2

            def stop(clock):
                if clock.step == 3:
                    raise KeyboardInterrupt

            return real_train(cfg, **kw, on_step=stop)
        return real_train(cfg, **kw)

    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(sweep, out, train_fn=interrupted_train, progress=False, log=lambda _: None)
    assert state.status(sw.build_cells(sweep, out)[1]) == "resume"
    runner.run_sweep(sweep, out, train_fn=interrupted_train, progress=False, log=lambda _: None)
    assert calls == [("length=none", "llama", False), ("length=slw", "llama", False), ("length=slw", "llama", True)]

    with open(out / sm.RUNS_CSV) as f:
        table = {r["run"]: r for r in csv.DictReader(f)}
    assert set(table) == {"length=none", "length=slw"}
    for name, row in table.items():
        model = load_config(config_path(out / name)).model.gpt()  # what the run trained (and a resume rebuilds)
        assert (model.family, model.qk_norm, model.kv_heads) == ("llama", True, 1)
        summary = json.loads((out / name / "summary.json").read_text())
        assert row["status"] == "finished" and float(row["final_val_loss"]) == pytest.approx(summary["final_val_loss"])
        assert np.isfinite(summary["final_val_loss"])
    resumed = [json.loads(line) for line in (out / "length=slw" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in resumed if "loss" in r]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 3  # one row per step across the interruption
    assert "| none | slw |" in (out / sm.REPORT).read_text()


@pytest.mark.slow
def test_diverged_run_is_recorded_and_the_sweep_goes_on(corpus_dir, tmp_path):
    out = tmp_path / "out"
    sweep = grid_2x2(corpus_dir)
    sweep.axes = sweep.axes[:1]  # train.lr only

    def train_or_diverge(cfg, **kw):
        if cfg.train.lr == 1e-2:
            Path(cfg.run.dir).mkdir(parents=True)
            raise DivergedError("step 3: loss nan; stopping")
        return real_train(cfg, **kw)

    runner.run_sweep(sweep, out, train_fn=train_or_diverge, progress=False)
    assert (out / "lr=0.01" / state.DIVERGED).exists()
    assert state.status(sw.build_cells(sweep, out)[1]) == "diverged"
    assert "diverged" in (out / sm.REPORT).read_text()


def test_a_run_dir_with_another_config_is_refused(corpus_dir, tmp_path):
    out = tmp_path / "out"
    sweep = grid_2x2(corpus_dir)
    sweep.axes = sweep.axes[:1]
    cell = sw.build_cells(sweep, out)[0]
    cell.cfg.train.max_tokens = 1000
    real_train(cell.cfg, progress=False)
    with pytest.raises(SeqwarmError, match="train.max_tokens: 1000 -> 8000"):
        runner.run_sweep(sweep, out, train_fn=real_train, progress=False)


def test_lr_sensitivity_by_hand():
    # losses 3.0, 2.0, diverged (counts as L0 = 10), 12 (worse than L0: capped at 10); best 2.0
    assert sm.lr_sensitivity({1e-3: 3.0, 2e-3: 2.0, 4e-3: None, 8e-3: 12.0}, 10.0) == pytest.approx(
        (3 + 2 + 10 + 10) / 4 - 2
    )
    assert sm.lr_sensitivity({1e-3: 2.0, 2e-3: 2.0}, 10.0) == 0.0
    assert sm.lr_sensitivity({1e-3: 2.0}, None) is None


def test_cli_sweep_bad_grid_is_one_line_exit_2(capsys, tmp_path):
    assert main(["sweep", "tiny-baseline", "--grid", "train.lr=oops", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqwarm: error: --grid train.lr") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_shards_split_the_grid_and_each_report_covers_all_of_it(corpus_dir, tmp_path):
    out = tmp_path / "out"
    sweep = grid_2x2(corpus_dir)
    names = [c.name for c in sw.build_cells(sweep, out)]
    shards = [[c.name for c in sw.shard_cells(sw.build_cells(sweep, out), (i, 3))] for i in (1, 2, 3)]
    assert sorted(sum(shards, [])) == sorted(names) and shards[0] == [names[0], names[3]]  # disjoint, covering
    trained = []

    def fake_train(cfg, **kw):  # a run's files as train leaves them, without the training
        trained.append(Path(cfg.run.dir).name)
        return real_train(cfg, **kw, on_step=lambda clock: None)

    runner.run_sweep(sweep, out, train_fn=fake_train, progress=False, shard=(2, 3))
    assert trained == shards[1]
    table = (out / sm.RUNS_CSV).read_text()
    assert all(name in table for name in names) and table.count("not run") == 3  # the others, not yet


@pytest.mark.parametrize("shard", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_cli_sweep_bad_shard_is_one_line_exit_2(capsys, tmp_path, shard):
    assert main(["sweep", "tiny-baseline", "--shard", shard, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqwarm: error: --shard") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


# --- the pure core: the grid and the report from plain data, no training -------------------------


def test_command_line_axes_replace_the_files_and_out_defaults(tmp_path):
    spec = tmp_path / "grid.yaml"
    spec.write_text(
        "sweep:\n  config: tiny-baseline\n  out: somewhere\n  grid:\n    train.lr: [1e-3, 2e-3]\n    run.seed: [1, 2]\n"
    )
    sweep = sw.command_line_sweep(
        str(spec), ["train.max_tokens=100"], ["train.lr=[5e-3]", "train.warmup_steps=[1]"], None
    )
    assert [(a.key, a.values) for a in sweep.axes] == [
        ("train.lr", ("5e-3",)),
        ("run.seed", ("1", "2")),
        ("train.warmup_steps", ("1",)),
    ]
    assert sweep.overrides == ["train.max_tokens=100"] and sweep.out == Path("somewhere")
    assert sw.command_line_sweep(str(spec), [], [], str(tmp_path / "o")).out == tmp_path / "o"
    plain = sw.command_line_sweep("tiny-baseline", ["run.seed=3"], ["train.lr=[1e-3]"], None)
    assert (plain.config, plain.overrides, plain.out) == (
        "tiny-baseline",
        ["run.seed=3"],
        Path("runs/sweep-tiny-baseline"),
    )
    assert sw.command_line_sweep(None, [], [], None).out == Path("runs/sweep-defaults")


def test_run_names_use_short_keys_unless_they_clash():
    axes = [sw.field_axis("train.lr", [1]), sw.field_axis("run.seed", [1]), sw.field_axis("curriculum.seqlen_end", [1])]
    assert sw.short_keys(axes) == {"train.lr": "lr", "run.seed": "seed", "curriculum.seqlen_end": "seqlen_end"}
    clash = [sw.field_axis("curriculum.seqlen_start", [1]), sw.field_axis("curriculum.seqlen_end", [1])]
    assert sw.short_keys(clash + [sw.Axis("x.seqlen_end", ("1",))])["curriculum.seqlen_end"] == "curriculum.seqlen_end"
    assert [sw.format_value(v) for v in (0.003, 1e-2, 3, "a/b c")] == ["0.003", "0.01", "3", "a-bc"]
    assert sw.method_axis({"base": None, "slw": {"curriculum.kind": "slw"}}).overrides("slw") == ["curriculum.kind=slw"]
    with pytest.raises(ConfigError, match="--grid method"):
        sw.parse_grid("method=[a, b]")


def _rows(losses, ratios, evals):
    """A run's metrics rows: train rows with these losses and ratios, eval rows (step, tokens, val loss)."""
    rows = [
        {"step": i, "tokens": 100 * i, "loss": x, "loss_ratio": q} for i, (x, q) in enumerate(zip(losses, ratios), 1)
    ]
    rows += [{"step": s, "tokens": t, "time_s": t / 10, "val/loss": v, "val/ppl": 2.7**v} for s, t, v in evals]
    return sorted(rows, key=lambda r: (r["step"], "loss" in r))


def test_summarise_cell_counts_spikes_and_marks_unfinished_runs():
    rows = _rows([5, 4, 7, 3], [1.0, 1.0, 1.75, 1.0], [(0, 0, 10.0), (4, 400, 3.5)])
    r = sm.summarise_cell("lr=0.01", {"train.lr": 0.01}, "finished", rows, {"wall_s": 2.0, "final_val_loss": 3.5})
    assert {k: r[k] for k in ("run", "train.lr", "status", "steps", "tokens", "wall_s", "initial_val_loss", "final_val_loss")} == {
        "run": "lr=0.01", "train.lr": 0.01, "status": "finished", "steps": 4, "tokens": 400, "wall_s": 2.0,
        "initial_val_loss": 10.0, "final_val_loss": 3.5,
    }  # fmt: skip
    assert (r["steps_loss_ratio_gt_1.5"], r["steps_loss_ratio_gt_1.2"], r["max_loss_ratio"]) == (1, 1, 1.75)
    assert [e["step"] for e in r["_evals"]] == [0, 4] and "_evals" not in sm.csv_rows([r])[0]
    assert sm.summarise_cell("a", {}, "resume", rows, {})["status"] == "unfinished"
    assert sm.summarise_cell("a", {}, "restart", rows, {})["status"] == "unfinished"
    assert sm.summarise_cell("a", {}, "diverged", rows, {})["status"] == "diverged"
    assert sm.summarise_cell("a", {}, "new", [], {})["status"] == "not run"
    late = sm.summarise_cell("a", {}, "finished", _rows([5], [1.0], [(1, 100, 4.0)]), {})
    assert late["initial_val_loss"] is None  # no eval at step 0: no initial loss


def _result(lr, seed, method, state, final, spikes=0, max_ratio=1.0, evals=(), initial=10.0):
    return {"run": f"{lr}-{seed}-{method}", "train.lr": lr, "run.seed": seed, "method": method, "status": state,
            "initial_val_loss": initial, "final_val_loss": final, "steps_loss_ratio_gt_1.5": spikes,
            "steps_loss_ratio_gt_1.2": spikes, "max_loss_ratio": max_ratio,
            "_evals": [{"tokens": t, "time_s": t / 100, "val/loss": v} for t, v in evals]}  # fmt: skip


GRID = [
    _result(1e-3, 1, "baseline", "finished", 4.0, evals=[(100, 6.0), (200, 4.0)]),
    _result(1e-3, 1, "slw", "finished", 3.5, evals=[(100, 5.0), (150, 3.9), (200, 3.5)]),
    _result(1e-3, 2, "baseline", "finished", 4.2, spikes=1, max_ratio=1.6, evals=[(200, 4.2)]),
    _result(1e-3, 2, "slw", "unfinished", None, evals=[(100, 5.0)]),
    _result(1e-2, 1, "baseline", "diverged", None, spikes=7, max_ratio=3.0),
    _result(1e-2, 1, "slw", "finished", 3.0, evals=[(200, 3.0)]),
    _result(1e-2, 2, "baseline", "finished", 5.0, spikes=7, max_ratio=2.0, evals=[(200, 5.0)]),
    _result(1e-2, 2, "slw", "not run", None, initial=None),
]
KEYS = ["train.lr", "run.seed", "method"]


def test_layout_columns_are_methods_the_first_the_baseline():
    layout = sm.Layout.of(GRID, KEYS)
    assert (layout.method_key, layout.methods, layout.row_keys, layout.baseline) == (
        "method",
        ["baseline", "slw"],
        ["train.lr", "run.seed"],
        "baseline",
    )
    assert list(layout.groups(GRID)) == [(1e-3, 1), (1e-3, 2), (1e-2, 1), (1e-2, 2)]
    by_kind = [{"train.lr": 1e-3, "curriculum.kind": k} for k in ("none", "slw")]
    assert sm.Layout.of(by_kind, ["train.lr", "curriculum.kind"]).methods == ["none", "slw"]
    plain = sm.Layout.of([{"train.lr": 1e-3}], ["train.lr"])
    assert (plain.method_key, plain.methods, plain.method_of({"train.lr": 1e-3})) == (None, ["run"], "run")


def test_method_curves_leave_out_unfinished_lrs_and_count_divergence():
    curves = sm.method_curves(GRID, sm.Layout.of(GRID, KEYS))
    assert curves["baseline"] == ({1e-3: pytest.approx(4.1), 1e-2: None}, 10.0)
    assert curves["slw"] == ({}, 10.0)  # 1e-3 has an unfinished run, 1e-2 one not run
    assert sm.lr_sensitivity(*curves["baseline"]) == pytest.approx((4.1 + 10) / 2 - 4.1)


def test_most_unstable_is_the_baselines_spikiest_row_ties_by_max_ratio():
    groups = sm.Layout.of(GRID, KEYS).groups(GRID)
    assert sm.most_unstable(groups, "baseline") == (1e-2, 1)  # 7 spikes, max ratio 3.0 beats 2.0
    assert sm.most_unstable(groups, "nobody") is None
    assert sm.first_reaching(GRID[1]["_evals"], 4.0)["tokens"] == 150
    assert sm.first_reaching(GRID[1]["_evals"], 1.0) is None


def test_render_markdown_lays_out_table5_and_marks_run_states():
    text = sm.render_markdown(GRID, KEYS)
    assert "8 runs: 5 finished, 1 unfinished, 1 diverged, 1 not run." in text
    assert (
        "| train.lr | run.seed | baseline | slw |\n|---|---|---|---|\n| 0.001 | 1 | 0 | 0 |\n| 0.001 | 2 | 1 | 0* |"
        in text
    )
    assert "| 0.01 | 1 | 7 (diverged) | 0 |\n| 0.01 | 2 | 7 | - |" in text
    assert "Totals: baseline 15, slw 0." in text
    assert "| 0.001 | 2 | 4.200 | n/a* |" in text and "| 0.01 | 1 | diverged | 3.000 |" in text
    # over seeds: finished runs only, diverged ones counted beside
    assert "| 0.001 | 4.100 ± 0.100 | 3.500 |\n| 0.01 | 5.000 (1 diverged) | 3.000 |" in text
    assert "| baseline | 2 | 4.100 | 10.000 | 2.950 |\n| slw | 0 | n/a | 10.000 | n/a |" in text
    assert f"![final validation loss vs learning rate]({sm.FIGURE})" in text
    assert "## Tokens and wall time to reach baseline's final validation loss" in text
    assert "| 0.001 | 1 | 200 tok, 2 s | 150 tok, 2 s |\n| 0.001 | 2 | 200 tok, 2 s | not reached |" in text
    assert "| 0.01 | 1 | - | - |\n| 0.01 | 2 | 200 tok, 2 s | - |" in text
    assert "train.lr = 0.01, run.seed = 1 (most steps with loss ratio > 1.5 for baseline)" in text
    no_lr = sm.render_markdown([{**r, "train.lr": None} for r in GRID[:2]], ["run.seed", "method"])
    assert "LR sensitivity" not in no_lr and sm.FIGURE not in no_lr


def test_prune_deletes_only_the_checkpoints_of_runs_this_sweep_trained(corpus_dir, tmp_path):
    from seqwarm.rundir import SUMMARY, write_config

    def fake_train(cfg, **kw):
        d = Path(cfg.run.dir)
        (d / "checkpoints" / "step-00000001").mkdir(parents=True)
        write_config(d, cfg)
        (d / SUMMARY).write_text(json.dumps({"final_val_ppl": None, "tokens": 1, "wall_s": 0.0}))
        return {"final_val_ppl": None, "tokens": 1, "wall_s": 0.0}

    sweep = sw.Sweep("tiny-baseline", [f"data.path={corpus_dir}"], [sw.parse_grid("run.seed=[1, 2]")])
    first, second = sw.build_cells(sweep, tmp_path / "out")
    fake_train(first.cfg)  # finished before this sweep: skipped, its checkpoints kept
    logged = []
    runner.run_sweep(
        sweep, tmp_path / "out", train_fn=fake_train, prune_checkpoints=True, progress=False, log=logged.append
    )
    assert (first.dir / "checkpoints").exists() and not (second.dir / "checkpoints").exists()
    assert logged[1:] == [
        "[1/2] seed=1: finished, skipped",
        "[2/2] seed=2: training",
        "[2/2] seed=2: done, 1 tokens, 0 s",
    ]
    assert (tmp_path / "out" / sm.REPORT).exists() and (tmp_path / "out" / sm.RUNS_CSV).exists()


# --- statistics over seeds: the cells' intervals and the paired comparison with the baseline --------

SEEDS = [1, 2, 3, 4, 5]
FINALS = {  # (lr, method): final val loss per seed; None: diverged
    (1e-3, "baseline"): [4.02, 4.11, 3.95, 4.20, 4.05],
    (1e-3, "slw"): [3.91, 4.00, 3.97, 4.04, 3.90],
    (1e-3, "same"): [4.02, 4.11, 3.95, 4.20, 4.05],  # the baseline again: every difference zero
    (1e-2, "baseline"): [4.60, 4.75, None, 4.52, 4.81],
    (1e-2, "slw"): [4.10, 4.25, 4.30, 4.12, 4.20],
    (1e-2, "same"): [4.60, 4.75, None, 4.52, None],
}
SPIKES = {
    (1e-3, "baseline"): [2, 0, 3, 1, 4],
    (1e-3, "slw"): [0, 0, 1, 0, 1],
    (1e-3, "same"): [2, 0, 3, 1, 4],
    (1e-2, "baseline"): [6, 5, 9, 7, 8],
    (1e-2, "slw"): [1, 0, 2, 1, 0],
    (1e-2, "same"): [6, 5, 9, 7, 8],
}
SEED_GRID = [
    _result(lr, seed, m, "diverged" if final is None else "finished", final, spikes=spikes)
    for (lr, m), finals in FINALS.items()
    for seed, final, spikes in zip(SEEDS, finals, SPIKES[(lr, m)])
]
SEED_GRID[-1] = {**SEED_GRID[-1], "status": "unfinished"}  # lr 1e-2, same, seed 5: still training


def _stat(rows, lr, method, metric, vs):
    (row,) = [r for r in rows if (r["train.lr"], r["method"], r["metric"], r["vs"]) == (lr, method, metric, vs)]
    return row


def test_seed_statistics_pair_runs_by_seed_against_scipy():
    from scipy import stats as scipy_stats

    from seqwarm import stats

    rows = sm.seed_statistics(SEED_GRID, sm.Layout.of(SEED_GRID, KEYS))
    assert list(rows[0]) == ["train.lr", "method", "metric", "vs", "n", "mean", "ci_low", "ci_high", "p_value", "note"]
    cell = _stat(rows, 1e-3, "slw", "final_val_loss", None)
    assert (cell["n"], cell["mean"]) == (5, pytest.approx(np.mean(FINALS[(1e-3, "slw")])))
    assert (cell["ci_low"], cell["ci_high"]) == stats.bootstrap_ci(FINALS[(1e-3, "slw")])
    assert _stat(rows, 1e-2, "baseline", "final_val_loss", None)["n"] == 4  # the diverged seed has no final loss

    base, slw = FINALS[(1e-3, "baseline")], FINALS[(1e-3, "slw")]
    loss = _stat(rows, 1e-3, "slw", "final_val_loss", "baseline")
    assert loss["n"] == 5 and loss["mean"] == pytest.approx(np.mean(slw) - np.mean(base))
    assert loss["p_value"] == pytest.approx(scipy_stats.wilcoxon(slw, base).pvalue)
    assert (loss["ci_low"], loss["ci_high"]) == stats.bootstrap_ci(np.subtract(slw, base))
    assert loss["ci_high"] < 0  # SLW lower at every seed but seed 3

    # At 1e-2 the baseline's seed 3 diverged: no final loss to pair, but its 9 spikes count.
    loss = _stat(rows, 1e-2, "slw", "final_val_loss", "baseline")
    kept = [0, 1, 3, 4]
    slw2, base2 = ([FINALS[(1e-2, m)][i] for i in kept] for m in ("slw", "baseline"))
    assert loss["n"] == 4 and loss["p_value"] == pytest.approx(scipy_stats.wilcoxon(slw2, base2).pvalue)
    spikes = _stat(rows, 1e-2, "slw", "steps_loss_ratio_gt_1.5", "baseline")
    assert spikes["n"] == 5 and spikes["mean"] == pytest.approx((-5 - 5 - 7 - 6 - 8) / 5)
    assert spikes["p_value"] == pytest.approx(
        scipy_stats.wilcoxon(SPIKES[(1e-2, "slw")], SPIKES[(1e-2, "baseline")]).pvalue
    )

    # The baseline against itself: nothing to test, said so, not a crash or a p of 1.
    same = _stat(rows, 1e-3, "same", "final_val_loss", "baseline")
    assert (same["n"], same["mean"], same["p_value"], same["note"]) == (
        5,
        0.0,
        None,
        "all differences are zero: no test",
    )
    # Seed 3 diverged for both, seed 5 unfinished: 3 pairs of final losses, 4 of spike counts.
    assert _stat(rows, 1e-2, "same", "final_val_loss", "baseline")["n"] == 3
    assert _stat(rows, 1e-2, "same", "steps_loss_ratio_gt_1.5", "baseline")["n"] == 4
    assert not any(r["vs"] == "baseline" and r["method"] == "baseline" for r in rows)


def test_render_markdown_adds_the_seed_statistics_and_keeps_the_rest():
    from seqwarm import stats

    text = sm.render_markdown(SEED_GRID, KEYS)
    ci = stats.bootstrap_ci(FINALS[(1e-3, "slw")])
    assert (
        "## Final validation loss over seeds, mean [95% CI] (finished runs)" in text
        and f"| 0.001 | 4.066 [{stats.bootstrap_ci(FINALS[(1e-3, 'baseline')])[0]:.3f}, " in text
        and f"| 3.964 [{ci[0]:.3f}, {ci[1]:.3f}] (n=5) |" in text
    )
    assert "| 0.01 | 4.670 [" in text and "] (n=4, 1 diverged) |" in text
    assert "| 4.623 [4.520, 4.750] (n=3, 1 diverged) |" in text  # 'same' at 1e-2: seed 5 unfinished, left out
    assert "## Paired comparison with baseline over seeds" in text
    assert "### Final validation loss, method - baseline" in text
    assert "| 0.001 | same | 5 | +0.000 | [+0.000, +0.000] | n/a (all differences are zero: no test) |" in text
    d = np.subtract(SPIKES[(1e-2, "slw")], SPIKES[(1e-2, "baseline")])
    lo, hi = stats.bootstrap_ci(d)
    p = stats.paired_comparison(SPIKES[(1e-2, "slw")], SPIKES[(1e-2, "baseline")]).p_value
    # 5 seeds, two-sided: p = 0.0625 at best, so the table says so instead of a p that looks like a result
    assert p == pytest.approx(0.0625)
    assert f"| 0.01 | slw | 5 | -6.2 | [{lo:+.1f}, {hi:+.1f}] | n too small: p >= 0.0625 whatever the data |" in text
    # The new sections sit after the mean ± std one, before LR sensitivity; those around them are as before.
    order = [
        "## Final validation loss, mean ± std over seeds",
        "## Final validation loss over seeds, mean [95% CI]",
        "## Paired comparison with baseline over seeds",
        "### Steps with loss ratio > 1.5, method - baseline",
        "## LR sensitivity",
    ]
    assert [text.index(h) for h in order] == sorted(text.index(h) for h in order)
    # Without a seed axis there is nothing to pair: the report is what it was.
    one_seed = [r for r in GRID if r["run.seed"] == 1]
    assert "over seeds" not in sm.render_markdown(one_seed, ["train.lr", "method"])
    # A single column (no method axis): the intervals, no comparison.
    plain = sm.render_markdown([{**r, "method": None} for r in SEED_GRID[:5]], ["train.lr", "run.seed"])
    assert "mean [95% CI]" in plain and "Paired comparison" not in plain


def test_sweep_writes_the_statistics_csv_beside_an_unchanged_sweep_csv(corpus_dir, tmp_path):
    from seqwarm.rundir import SUMMARY, write_config

    finals = {1: 4.0, 2: 4.2, 3: 3.9}

    def fake_train(cfg, **kw):
        d = Path(cfg.run.dir)
        d.mkdir(parents=True)
        write_config(d, cfg)
        spike = 2.0 if cfg.curriculum.kind == "none" else 1.0
        rows = _rows([5.0, 4.0, 4.0], [1.0, spike, 1.0], [(0, 0, 10.0), (3, 300, finals[cfg.run.seed])])
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = {"final_val_loss": finals[cfg.run.seed], "final_val_ppl": None, "tokens": 300, "wall_s": 0.0}
        (d / SUMMARY).write_text(json.dumps(summary))
        return summary

    sweep = sw.Sweep(
        "tiny-baseline",
        [f"data.path={corpus_dir}", "curriculum.duration=8"],
        [sw.parse_grid("run.seed=[1, 2, 3]"), sw.parse_grid("curriculum.kind=[none, slw]")],
    )
    runner.run_sweep(sweep, tmp_path / "out", train_fn=fake_train, progress=False, log=lambda _: None)
    with open(tmp_path / "out" / sm.RUNS_CSV) as f:
        assert next(csv.reader(f)) == [
            "run", "run.seed", "curriculum.kind", "status", "steps", "tokens", "wall_s", "initial_val_loss",
            "final_val_loss", "steps_loss_ratio_gt_1.5", "steps_loss_ratio_gt_1.2", "max_loss_ratio",
        ]  # fmt: skip
    with open(tmp_path / "out" / sm.STATS_CSV) as f:
        stats_rows = list(csv.DictReader(f))
    assert [(r["method"], r["metric"], r["vs"], r["n"]) for r in stats_rows] == [
        ("none", "final_val_loss", "", "3"),
        ("slw", "final_val_loss", "", "3"),
        ("slw", "final_val_loss", "none", "3"),
        ("slw", "steps_loss_ratio_gt_1.5", "none", "3"),
    ]
    assert float(stats_rows[0]["mean"]) == pytest.approx((4.0 + 4.2 + 3.9) / 3)
    # Equal losses per seed: no test; one spike fewer at every seed: difference -1 with a zero-width interval.
    assert stats_rows[2]["p_value"] == "" and stats_rows[2]["note"] == "all differences are zero: no test"
    assert (float(stats_rows[3]["mean"]), float(stats_rows[3]["ci_low"]), float(stats_rows[3]["ci_high"])) == (
        -1,
        -1,
        -1,
    )
    assert float(stats_rows[3]["p_value"]) == pytest.approx(0.25)  # 3 pairs, all one way: 2 / 2^3
    assert "## Paired comparison with none over seeds" in (tmp_path / "out" / sm.REPORT).read_text()


def test_two_seeds_say_n_too_small_instead_of_an_interval_and_a_p():
    """Issue 27: `9.024 [8.967, 9.081] (n=2)` was the min and max, beside a Wilcoxon p of 0.5."""
    from seqwarm import stats

    est = stats.mean_ci([8.967, 9.081])
    row = {"n": est.n, "ci_low": est.low, "ci_high": est.high}
    assert sm._interval(row, "{:.3f}") == "n too small"
    cmp = stats.paired_comparison([1.0, 2.0], [0.0, 0.0])
    assert cmp.p_value == pytest.approx(0.5)
    assert sm._p_text({"p_value": cmp.p_value, "note": cmp.note}) == "n too small: p >= 0.5 whatever the data"
    est = stats.mean_ci([8.967, 9.081, 9.0])
    assert sm._interval({"n": 3, "ci_low": est.low, "ci_high": est.high}, "{:.3f}").startswith("[8.")
