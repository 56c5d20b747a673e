"""`seqwarm report` on runs with the instruments on (issue 25): their figure, their rows in Table 3, the events."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_report import adam_run, make_run

from seqwarm.cli import main
from seqwarm.lifecycle import train
from seqwarm.report import correlation_table, write_report
from seqwarm.report_instruments import events, figure_name, instrument_keys

LAYER_KEYS = [f"diag/attn/{layer}/{what}" for layer in (0, 1, 10) for what in ("logit_max", "entropy")]
OUTPUT = ["diag/output/logz_mean", "diag/output/logz_max", "diag/output/logit_absmax"]
GROUPS = ["adam/embeddings/var_max", "adam/attention/var_max", "adam/embeddings/var_l1", "adam/attention/var_l1"]


def instrumented_run(n: int = 40, every: int = 2) -> list[dict]:
    """adam_run's rows with the instruments on every `every`-th step; layer 1 collapses at step 20 and recovers at 30,
    and the loss leaves the plateau at step 12. Layer 0's max logit follows the loss ratio (a known correlation)."""
    rng = np.random.default_rng(1)
    rows = adam_run(n)
    for r in rows:
        if "loss" not in r or r["step"] % every:
            continue
        step, ratio = r["step"], r["loss_ratio"]
        collapsed = 20 <= step < 30
        r |= {key: float(rng.uniform(0.2, 0.9)) for key in LAYER_KEYS + OUTPUT + GROUPS}
        r |= {"diag/attn/0/logit_max": 4 + 10 * ratio, "diag/attn/1/logit_max": 30.0 if collapsed else 3.0}
        r |= {"diag/attn/1/entropy": 0.02 if collapsed else 0.8}
        if step == 20:
            r["event/collapse"] = [1]
        if step == 30:
            r["event/recovered"] = [1]
        if step == 12:
            r["event/plateau_escape"] = 12
    return rows


def test_instrument_keys_in_a_fixed_order_and_none_without_instruments():
    rows = instrumented_run()
    assert instrument_keys(rows) == [
        *[f"diag/attn/{layer}/{what}" for layer in (0, 1, 10) for what in ("logit_max", "entropy")],  # 10 after 1
        *OUTPUT,
        "adam/embeddings/var_max",
        "adam/attention/var_max",  # instruments.GROUPS order
        "adam/embeddings/var_l1",
        "adam/attention/var_l1",
    ]
    assert instrument_keys(adam_run(20)) == []
    assert [(e.step, e.kind, e.what) for e in events(rows)] == [
        (12, "event/plateau_escape", ""),
        (20, "event/collapse", "L1"),
        (30, "event/recovered", "L1"),
    ]


def test_correlation_table_gains_the_instruments_over_their_steps():
    rows = instrumented_run()
    table = {row["y"]: row for row in correlation_table(rows)}
    assert list(table)[:2] == ["adam/var_l1", "adam/var_max"]  # Table 3's rows first, as proxy_study reads them
    assert set(table) == {"adam/var_l1", "adam/var_max", *instrument_keys(rows)}
    steps = [r for r in rows if "diag/attn/0/logit_max" in r]
    assert table["diag/attn/0/logit_max"]["n"] == len(steps) == 20  # every 2nd of 40 steps
    expected = stats.pearsonr([r["loss_ratio"] for r in steps], [r["diag/attn/1/logit_max"] for r in steps])
    assert table["diag/attn/1/logit_max"]["pearson_r"] == pytest.approx(expected.statistic)
    assert table["diag/attn/0/logit_max"]["pearson_r"] == pytest.approx(1.0)  # a linear function of the ratio
    # Without instruments, Table 3 is the paper's two rows, as before.
    assert [row["y"] for row in correlation_table(adam_run(20))] == ["adam/var_l1", "adam/var_max"]


def test_report_draws_an_instrument_figure_per_instrumented_run_and_removes_stale_ones(tmp_path):
    inst = make_run(tmp_path / "inst", instrumented_run())
    plain = make_run(tmp_path / "plain", adam_run(20))
    out = tmp_path / "report"
    report = write_report([inst, plain], out).read_text()
    assert (out / figure_name("inst")).stat().st_size > 10_000
    assert not (out / figure_name("plain")).exists()
    assert "## Instruments" in report and f"![instruments of inst]({figure_name('inst')})" in report
    with open(out / "table3_correlation.csv") as f:
        table3 = list(csv.DictReader(f))
    assert {r["y"] for r in table3 if r["run"] == "inst"} >= set(LAYER_KEYS + OUTPUT + GROUPS)
    assert {r["y"] for r in table3 if r["run"] == "plain"} == {"adam/var_l1", "adam/var_max"}
    # A report of the plain run alone into the same directory: no instrument section, the old figure gone.
    report = write_report([plain], out).read_text()
    assert "## Instruments" not in report and not list(out.glob("instruments_*.png"))


def test_seqwarm_report_on_a_trained_run_with_instruments(tiny_cfg, tmp_path):
    # The real model's diagnostics (the Llama branch's model side): per layer attention, the output layer's log Z.
    cfg = tiny_cfg("train.max_tokens=1600", "monitor.instruments=true", "monitor.every=2", "train.preflight=false")
    train(cfg, progress=False)
    run = Path(cfg.run.dir)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "diag/attn/0/logit_max" in r]
    assert logged and all(r["step"] % 2 == 0 for r in logged)
    assert all("adam/embeddings/var_max" in r for r in logged)  # the trainer's per-group Adam statistics

    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    name = figure_name(run.name)
    assert (out / name).stat().st_size > 10_000
    assert f"]({name})" in (out / "report.md").read_text()
    with open(out / "table3_correlation.csv") as f:
        table3 = {r["y"]: r for r in csv.DictReader(f)}
    for key in ("diag/attn/1/entropy", "diag/output/logz_mean", "adam/embeddings/var_max", "adam/mlp/var_l1"):
        assert int(table3[key]["n"]) == len(logged)
        assert table3[key]["pearson_r"] != ""
