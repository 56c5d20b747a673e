import csv
import json
from pathlib import Path

import pytest

from seqwarm import sweep as sw
from seqwarm.cli import main
from seqwarm.errors import ConfigError, DivergedError, SeqwarmError
from seqwarm.train import train as real_train


def grid_2x2(corpus_dir) -> sw.Sweep:
    return sw.Sweep(
        config="configs/tiny-baseline.yaml",
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
    assert [(c.cfg.train.lr, c.cfg.curriculum.kind) for c in cells] == [(3e-3, "none"), (3e-3, "slw"), (1e-2, "none"), (1e-2, "slw")]
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
    sweep = sw.Sweep("configs/tiny-baseline.yaml", [f"data.path={corpus_dir}"], [sw.parse_grid("run.seed=[1, 2]")])
    with pytest.raises(ConfigError, match=message):
        sweep.axes = sw.merge_axes(sweep.axes, [sw.parse_grid(grid)])
        sw.run_sweep(sweep, tmp_path / "out")
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
    assert [c.name for c in cells][:3] == ["seed=1__method=baseline", "seed=1__method=long-warmup", "seed=1__method=slw"]
    assert [c.cfg.train.warmup_steps for c in cells[:3]] == [5, 8, 5]
    assert [c.cfg.curriculum.kind for c in cells[:3]] == ["none", "none", "slw"]
    spec.write_text(spec.read_text().replace("run.seed: [1, 2]", "train.warmup_steps: [1, 2]"))
    with pytest.raises(ConfigError, match="long-warmup: sets train.warmup_steps, which is also a grid axis"):
        sw.build_cells(sw.load_sweep_file(spec), tmp_path)


def test_sweep_trains_skips_resumes_and_reports(corpus_dir, tmp_path, monkeypatch):
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

    monkeypatch.setattr(sw, "train", interrupted_train)
    assert sw.build_cells(sweep, out)[2].cfg.checkpoint.every_steps == 10
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(sweep, out, progress=False)
    assert [c[0] for c in calls] == ["lr=0.003__kind=none", "lr=0.003__kind=slw", "lr=0.01__kind=none"]
    assert sw.status(sw.build_cells(sweep, out)[2]) == "resume"

    calls.clear()
    sw.run_sweep(sweep, out, progress=False)
    # finished runs are skipped; the interrupted one resumes from its checkpoint; the last one starts
    assert calls == [("lr=0.01__kind=none", True), ("lr=0.01__kind=slw", False)]
    resumed = [json.loads(line) for line in (out / "lr=0.01__kind=none" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in resumed if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # one row per step across the interruption

    # the report's table is the runs' own summaries
    with open(out / sw.RUNS_CSV) as f:
        table = {r["run"]: r for r in csv.DictReader(f)}
    assert set(table) == {c.name for c in sw.build_cells(sweep, out)}
    for name, row in table.items():
        summary = json.loads((out / name / "summary.json").read_text())
        assert row["status"] == "finished"
        assert float(row["final_val_loss"]) == pytest.approx(summary["final_val_loss"])
        assert int(row["steps_loss_ratio_gt_1.5"]) == summary["steps_loss_ratio_gt_1.5"]
        assert int(row["steps"]) == summary["steps"]
    report = (out / sw.REPORT).read_text()
    assert "| train.lr | none | slw |" in report and "LR sensitivity" in report
    assert (out / sw.FIGURE).exists() and (out / sw.UNSTABLE / "report.md").exists()

    calls.clear()
    sw.run_sweep(sweep, out, progress=False)
    assert calls == []  # everything finished: nothing retrained


def test_diverged_run_is_recorded_and_the_sweep_goes_on(corpus_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    sweep = grid_2x2(corpus_dir)
    sweep.axes = sweep.axes[:1]  # train.lr only

    def train_or_diverge(cfg, **kw):
        if cfg.train.lr == 1e-2:
            Path(cfg.run.dir).mkdir(parents=True)
            raise DivergedError("step 3: loss nan; stopping")
        return real_train(cfg, **kw)

    monkeypatch.setattr(sw, "train", train_or_diverge)
    sw.run_sweep(sweep, out, progress=False)
    assert (out / "lr=0.01" / sw.DIVERGED).exists()
    assert sw.status(sw.build_cells(sweep, out)[1]) == "diverged"
    assert "diverged" in (out / sw.REPORT).read_text()


def test_a_run_dir_with_another_config_is_refused(corpus_dir, tmp_path):
    out = tmp_path / "out"
    sweep = grid_2x2(corpus_dir)
    sweep.axes = sweep.axes[:1]
    cell = sw.build_cells(sweep, out)[0]
    cell.cfg.train.max_tokens = 1000
    real_train(cell.cfg, progress=False)
    with pytest.raises(SeqwarmError, match="train.max_tokens: 1000 -> 8000"):
        sw.run_sweep(sweep, out, progress=False)


def test_lr_sensitivity_by_hand():
    # losses 3.0, 2.0, diverged (counts as L0 = 10), 12 (worse than L0: capped at 10); best 2.0
    assert sw.lr_sensitivity({1e-3: 3.0, 2e-3: 2.0, 4e-3: None, 8e-3: 12.0}, 10.0) == pytest.approx((3 + 2 + 10 + 10) / 4 - 2)
    assert sw.lr_sensitivity({1e-3: 2.0, 2e-3: 2.0}, 10.0) == 0.0
    assert sw.lr_sensitivity({1e-3: 2.0}, None) is None


def test_cli_sweep_bad_grid_is_one_line_exit_2(capsys, tmp_path):
    assert main(["sweep", "tiny-baseline", "--grid", "train.lr=oops", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqwarm: error: --grid train.lr") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
