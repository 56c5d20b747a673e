"""`seqwarm report` on hand-made run directories whose tables are known in advance."""

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from seqwarm.cli import main
from seqwarm.config import load_config, save_config
from seqwarm.report import (
    PLOTS,
    ReportError,
    correlation_table,
    loss_ratio_table,
    run_labels,
    summary_table,
    write_report,
)

TINY_PARAMS = load_config("tiny-slw").model.gpt().n_params()


def train_row(step: int, loss_ratio: float, **extra) -> dict:
    row = {
        "step": step,
        "tokens": 64 * step,
        "seqlen": min(8 * step, 64),
        "batch_size": 8,
        "lr": 1e-3,
        "loss": 10.0 - step * 0.01,
        "loss_ratio": loss_ratio,
        "grad_norm": 1.0,
        "time_s": 0.1 * step,
    }
    return row | extra


def eval_row(step: int, val_loss: float) -> dict:
    row = {"step": step, "tokens": 64 * step, "time_s": 0.1 * step + 0.05}
    return row | {"val/loss": val_loss, "val/ppl": math.exp(val_loss)}


def make_run(path, rows: list[dict], tail: str = ""):
    """A run directory: the tiny config and metrics.jsonl with `rows`, then `tail` (a cut last line)."""
    path.mkdir(parents=True)
    save_config(load_config("tiny-slw"), path / "config.yaml")
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def adam_run(n: int, seed: int = 0) -> list[dict]:
    """Train rows with Adam statistics on every step, eval rows every 10 steps."""
    rng = np.random.default_rng(seed)
    ratios = 1 + rng.exponential(0.1, n)
    rows = [eval_row(0, 10.8)]
    for i, ratio in enumerate(ratios, 1):
        var_l1, var_max = 5 + 3 * ratio + rng.normal(0, 0.1), 0.01 * ratio**2 + rng.uniform(0, 0.01)
        rows.append(train_row(i, ratio, clipped=bool(i % 2), **{"adam/var_l1": var_l1, "adam/var_max": var_max}))
        if i % 10 == 0:
            rows.append(eval_row(i, 10.0 - i * 0.02))
    return rows


def test_loss_ratio_table_counts_percentages_and_max():
    ratios = [1.0, 1.1, 1.25, 1.2, 1.6, 1.5, 2.5, 0.9, float("nan"), 1.3]
    rows = [eval_row(0, 10.0)] + [train_row(i, x) for i, x in enumerate(ratios, 1)] + [eval_row(10, 9.0)]
    t = loss_ratio_table(rows)
    assert t["steps"] == 10
    assert t["steps_loss_ratio_gt_1.2"] == 5  # 1.25, 1.6, 1.5, 2.5, 1.3: strictly above, NaN not counted
    assert t["pct_steps_loss_ratio_gt_1.2"] == pytest.approx(50.0)
    assert t["steps_loss_ratio_gt_1.5"] == 2
    assert t["pct_steps_loss_ratio_gt_1.5"] == pytest.approx(20.0)
    assert t["max_loss_ratio"] == 2.5


def test_correlation_table_equals_scipy_pearsonr():
    rows = adam_run(60)
    train = [r for r in rows if "loss" in r]
    # Adam statistics logged every k steps, or not finite, leave those steps out of the pairs
    del train[5]["adam/var_l1"], train[7]["adam/var_max"]
    train[9]["adam/var_l1"], train[11]["adam/var_max"] = None, float("nan")
    table = {row["y"]: row for row in correlation_table(rows)}
    for key in ("adam/var_l1", "adam/var_max"):
        both = [r for r in train if isinstance(r.get(key), float) and math.isfinite(r[key])]
        expected = stats.pearsonr([r["loss_ratio"] for r in both], [r[key] for r in both])
        assert table[key]["n"] == len(both) == 58
        assert table[key]["pearson_r"] == pytest.approx(expected.statistic, rel=1e-12)
        assert table[key]["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert table["adam/var_l1"]["pearson_r"] > 0.5  # the synthetic variance follows the ratio


@pytest.mark.parametrize(
    "rows",
    [
        [train_row(i, 1.0 + i / 10) for i in range(1, 6)],  # no Adam statistics (an older run)
        [train_row(i, 1.0 + i / 10, **{"adam/var_l1": 1.0 + i, "adam/var_max": 1.0 + i}) for i in (1, 2)],  # 2 points
        [train_row(i, 1.0 + i / 10, **{"adam/var_l1": 3.0, "adam/var_max": 3.0}) for i in range(1, 6)],  # constant
    ],
    ids=["missing", "two-points", "constant"],
)
def test_correlation_is_na_without_enough_varying_points(rows):
    assert all(row["pearson_r"] is None and row["p_value"] is None for row in correlation_table(rows))


def test_summary_table():
    rows = adam_run(30)
    rows[3]["skipped"] = "fp16 overflow"
    rows[4]["skipped"] = "non-finite"
    rows[6]["skipped"] = "fp16 overflow"
    s = summary_table(rows)
    assert (s["tokens"], s["steps"]) == (64 * 30, 30)
    assert s["wall_s"] == pytest.approx(3.0 + 0.05)  # the final eval row comes last
    assert s["final_val_loss"] == pytest.approx(10.0 - 30 * 0.02)
    assert s["best_val_ppl"] == pytest.approx(math.exp(10.0 - 30 * 0.02))
    assert s["clip_count"] == 15
    assert (s["skipped_steps"], s["skipped_reasons"]) == (3, "fp16 overflow: 2, non-finite: 1")
    older = summary_table([train_row(1, 1.0)])  # `clipped` not logged: unknown, not 0
    assert older["clip_count"] is None and older["skipped_steps"] == 0 and older["final_val_ppl"] is None


def test_labels_tell_equal_names_apart(tmp_path):
    paths = [tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c" / "other"]
    assert run_labels(paths) == ["a/run", "b/run", "other"]
    assert run_labels([tmp_path / "x" / "a" / "run", tmp_path / "y" / "a" / "run"]) == ["x/a/run", "y/a/run"]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_of_runs_of_different_lengths_with_and_without_data(tmp_path):
    long = make_run(tmp_path / "long", adam_run(40), tail='{"step": 41, "tokens": 26')  # cut by a crash
    no_eval = make_run(tmp_path / "noeval", [train_row(i, 1.0 + (i == 3) * 0.4) for i in range(1, 8)])
    (long / "summary.json").write_text(json.dumps({"steps": 40}))
    out = tmp_path / "report"
    (out).mkdir()
    (out / "report.md").write_text("an earlier report")

    path = write_report([long, no_eval], out)

    assert path == out / "report.md"
    md = path.read_text()
    assert "an earlier report" not in md and "Section 3" in md
    assert "| noeval | 3.33M | 7 | 1 (14.29%) | 0 (0.00%) | 1.400 |" in md
    table1 = {r["run"]: r for r in read_csv(out / "table1_loss_ratio.csv")}
    assert table1["long"]["steps"] == "40" and table1["noeval"]["steps"] == "7"
    assert int(table1["long"]["params"]) == TINY_PARAMS
    table3 = read_csv(out / "table3_correlation.csv")
    assert [(r["run"], r["y"], r["n"]) for r in table3] == [
        ("long", "adam/var_l1", "40"),
        ("long", "adam/var_max", "40"),
        ("noeval", "adam/var_l1", "0"),
        ("noeval", "adam/var_max", "0"),
    ]
    assert table3[2]["pearson_r"] == "" and "| noeval | loss_ratio vs adam/var_l1 | 0 | n/a | n/a |" in md
    summary = {r["run"]: r for r in read_csv(out / "summary.csv")}
    assert summary["long"]["finished"] == "True" and summary["noeval"]["finished"] == "False"
    assert summary["noeval"]["final_val_ppl"] == "" and summary["noeval"]["clip_count"] == ""
    for plot in PLOTS:
        png = out / f"{plot.name}.png"
        if plot.y == "adam/mom_l1":  # neither run logged it
            assert not png.exists() and plot.name in md
        else:
            assert png.stat().st_size > 1024 and f"({png.name})" in md


def test_report_skips_figures_without_data_and_removes_stale_ones(tmp_path):
    run = make_run(tmp_path / "run", [train_row(i, 1.0) for i in range(1, 4)])
    out = tmp_path / "report"
    write_report([run], out)
    stale = out / "val_ppl_vs_tokens.png"
    stale.write_bytes(b"an earlier report's figure")
    md = write_report([run], out).read_text()
    assert not stale.exists()
    assert "Not drawn, no run logged the data: " in md and "val_ppl_vs_tokens" in md
    assert (out / "loss_vs_step.png").stat().st_size > 1024


def test_run_without_train_rows_is_an_empty_row(tmp_path):
    started = make_run(tmp_path / "started", [eval_row(0, 10.8)], tail='{"step": 1, "tok')
    md = write_report([started], tmp_path / "report").read_text()
    assert "| started | 3.33M | 0 | 0 (n/a) | 0 (n/a) | n/a |" in md
    assert "no complete train row" in md


def test_cli_report(tmp_path, capsys):
    run = make_run(tmp_path / "run", adam_run(12))
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'report' / 'report.md'}"


@pytest.mark.parametrize("what", ["missing", "not-a-run", "file"])
def test_cli_rejects_a_path_that_is_not_a_run(tmp_path, capsys, what):
    good = make_run(tmp_path / "run", adam_run(12))
    bad = tmp_path / what
    if what == "not-a-run":
        bad.mkdir()
        (bad / "notes.txt").write_text("not a run")
    elif what == "file":
        bad.write_text("a file")
    out = tmp_path / "report"
    assert main(["report", str(good), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"seqwarm: error: {bad}: ")
    assert not out.exists()  # every input is checked before anything is written
    with pytest.raises(ReportError, match=str(bad)):
        write_report([bad], out)
