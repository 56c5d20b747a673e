"""`seqwarm report` on logs seqwarm did not write: CSV, JSON Lines, TensorBoard events and a real Hugging Face
Trainer's TensorBoard log and trainer_state.json, with Table 1 and Table 3 values known in advance."""

import csv
import json
import math
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from seqwarm.cli import main
from seqwarm.external_logs import ExternalLogError, metric_rows, parse_map, read_external
from seqwarm.lifecycle import train
from seqwarm.report import write_report

# Reading and writing event files needs the tensorboard package: `[test]` pulls it in; an install without it skips
# these tests and says why instead of failing them (issue 27).
needs_tensorboard = pytest.mark.skipif(
    find_spec("tensorboard") is None, reason="needs tensorboard: pip install -e '.[test]' (or '.[tensorboard]')"
)

# Loss ratios (loss over the minimum of the earlier losses): 1, .833, 1.28, .8, 1.3, 1.75, nan, .95
LOSSES = [3.0, 2.5, 3.2, 2.0, 2.6, 3.5, math.nan, 1.9]
ABOVE_1_2, ABOVE_1_5, MAX_RATIO = 3, 1, 1.75


def table(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def report(tmp_path, *inputs, key_map=None) -> tuple[dict, dict, list[dict], str]:
    """Table 1 and the summary by run label, Table 3's rows, and report.md."""
    out = tmp_path / "report"
    md = write_report([Path(p) for p in inputs], out, key_map).read_text()
    by_run = lambda name: {r["run"]: r for r in table(out / name)}  # noqa: E731
    return by_run("table1_loss_ratio.csv"), by_run("summary.csv"), table(out / "table3_correlation.csv"), md


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


# --- the key map and the conversion (pure) -------------------------------------------------------


def test_parse_map_repeats_and_splits_on_commas():
    assert parse_map(["loss=train/loss, step=global_step", "adam/var_max=v=max"]) == {
        "loss": "train/loss",
        "step": "global_step",
        "adam/var_max": "v=max",  # only the first '=' splits
    }


@pytest.mark.parametrize(
    "spec, message",
    [
        ("loss", r"^--map 'loss': expected SEQWARM_KEY=LOG_KEY"),
        ("loss=", r"^--map 'loss=': expected"),
        ("los=train/loss", r"^--map los=train/loss: 'los' is not a seqwarm metric \(did you mean loss\?\)"),
        ("loss=a,loss=b", r"^--map: loss is mapped twice \(a and b\)"),
    ],
)
def test_bad_map_is_one_line_naming_it(spec, message):
    with pytest.raises(ExternalLogError, match=message):
        parse_map([spec])


def test_metric_rows_compute_the_loss_ratio_and_split_train_and_eval():
    foreign = [{"global_step": i, "loss": x} for i, x in enumerate(LOSSES, 1)]
    foreign.insert(4, {"global_step": 4, "eval_loss": 2.2})  # an evaluation after step 4
    foreign.append({"global_step": 8, "train_runtime": 9.0})  # a row of neither: left out
    rows, notes = metric_rows(foreign, {}, Path("log.jsonl"))
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    ratios = [r["loss_ratio"] for r in train_rows]
    expected = [1.0, 2.5 / 3.0, 3.2 / 2.5, 2.0 / 2.5, 2.6 / 2.0, 3.5 / 2.0, math.nan, 1.9 / 2.0]
    assert ratios == pytest.approx(expected, nan_ok=True)
    assert [r for r in rows if "val/loss" in r] == [
        {"step": 4, "val/loss": 2.2, "val/ppl": pytest.approx(math.exp(2.2))}
    ]
    assert "step <- global_step" in notes[0] and "computed from the logged losses" in notes[1]


# --- files, through the report -------------------------------------------------------------------


def test_csv_with_a_key_map_gives_table1_table3_and_the_summary(tmp_path, capsys):
    rng = np.random.default_rng(0)
    vmax = rng.uniform(0.01, 0.02, len(LOSSES))
    rows = [[i, x, 64 * i, "" if i == 2 else vmax[i - 1]] for i, x in enumerate(LOSSES, 1)]
    log = write_csv(tmp_path / "mine.csv", ["iter", "train_loss", "seen", "v_max"], rows)
    out = tmp_path / "report"
    spec = "step=iter,loss=train_loss,tokens=seen,adam/var_max=v_max"
    assert main(["report", str(log), "--out", str(out), "--map", spec]) == 0
    t1 = {r["run"]: r for r in table(out / "table1_loss_ratio.csv")}["mine"]
    assert (t1["steps"], t1["steps_loss_ratio_gt_1.2"], t1["steps_loss_ratio_gt_1.5"]) == ("8", "3", "1")
    assert float(t1["max_loss_ratio"]) == pytest.approx(MAX_RATIO) and float(t1["pct_steps_loss_ratio_gt_1.2"]) == 37.5
    assert "| mine | n/a | 8 | 3 (37.50%) | 1 (12.50%) | 1.750 |" in (out / "report.md").read_text()
    # Table 3 over the steps with both a finite ratio and v_max: not step 2 (empty cell) nor 7 (NaN loss)
    ratios = dict(zip(range(1, 9), [1.0, 2.5 / 3, 3.2 / 2.5, 0.8, 1.3, 1.75, math.nan, 0.95]))
    steps = [1, 3, 4, 5, 6, 8]
    r, p = stats.pearsonr([ratios[s] for s in steps], [vmax[s - 1] for s in steps])
    t3 = {row["y"]: row for row in table(out / "table3_correlation.csv")}
    assert t3["adam/var_max"]["n"] == "6" and float(t3["adam/var_max"]["pearson_r"]) == pytest.approx(r)
    assert float(t3["adam/var_max"]["p_value"]) == pytest.approx(p) and t3["adam/var_l1"]["pearson_r"] == ""
    summary = table(out / "summary.csv")[0]
    assert (summary["tokens"], summary["steps"], summary["finished"], summary["wall_s"]) == ("512", "8", "", "")
    assert (out / "loss_vs_tokens.png").stat().st_size > 1024 and (out / "adam_var_max_vs_step.png").exists()


def test_jsonl_in_seqwarm_names_keeps_its_own_loss_ratio(tmp_path):
    rows = [{"step": i, "loss": x, "loss_ratio": 1.0 + 0.1 * i, "time_s": 0.5 * i} for i, x in enumerate(LOSSES, 1)]
    rows.insert(4, {"step": 4, "val/loss": 2.0})
    log = tmp_path / "other.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')  # cut by a crash
    t1, summary, _, md = report(tmp_path, log)
    # its own ratios 1.1 ... 1.8: above 1.2 from step 3, above 1.5 from step 6
    assert (t1["other"]["steps_loss_ratio_gt_1.2"], t1["other"]["steps_loss_ratio_gt_1.5"]) == ("6", "3")
    assert float(t1["other"]["max_loss_ratio"]) == pytest.approx(1.8)
    assert float(summary["other"]["final_val_ppl"]) == pytest.approx(math.exp(2.0))
    assert float(summary["other"]["wall_s"]) == 4.0 and "computed from the logged losses" not in md


@needs_tensorboard
def test_tensorboard_events_with_hf_tags(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "tb" / "runs" / "Dec01_host"  # where Hugging Face puts them; the parent is given
    writer = SummaryWriter(str(run))
    for i, x in enumerate(LOSSES, 1):
        writer.add_scalar("train/loss", x, i)
        writer.add_scalar("train/learning_rate", 1e-3, i)
        if i % 4 == 0:
            writer.add_scalar("eval/loss", 2.0 + 0.1 * i, i)
    writer.close()
    t1, summary, _, md = report(tmp_path, tmp_path / "tb")
    row = t1["tb"]
    assert (row["steps"], row["steps_loss_ratio_gt_1.2"], row["steps_loss_ratio_gt_1.5"]) == ("8", "3", "1")
    assert float(row["max_loss_ratio"]) == pytest.approx(MAX_RATIO)  # float32 events
    assert float(summary["tb"]["final_val_loss"]) == pytest.approx(2.8) and summary["tb"]["wall_s"] != ""
    assert "loss <- train/loss" in md and "val/loss <- eval/loss" in md


@pytest.mark.slow
@needs_tensorboard
def test_seqwarms_own_tensorboard_mirror_reports_as_its_metrics(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.max_steps=6", "log.tensorboard=true", "monitor.adam_every_steps=1")
    train(cfg, progress=False)
    run = Path(cfg.run.dir)
    t1, _, t3, _ = report(tmp_path, run, run / "tensorboard")
    native, mirrored = t1["run"], t1["tensorboard"]
    assert mirrored["steps"] == native["steps"] == "6"
    assert float(mirrored["max_loss_ratio"]) == pytest.approx(float(native["max_loss_ratio"]), rel=1e-6)
    r = {(row["run"], row["y"]): row["pearson_r"] for row in t3}
    assert float(r["tensorboard", "adam/var_l1"]) == pytest.approx(float(r["run", "adam/var_l1"]), abs=1e-4)


# --- bad inputs ----------------------------------------------------------------------------------


def run_cli(capsys, *args) -> str:
    assert main(["report", *map(str, args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_missing_required_key_names_it_the_file_and_the_keys(tmp_path, capsys):
    log = write_csv(tmp_path / "nostep.csv", ["iteration", "loss"], [[1, 2.0], [2, 1.9]])
    err = run_cli(capsys, log, "--out", tmp_path / "report")
    assert err.startswith(f"seqwarm: error: {log}: no 'step' key (tried step, global_step, train/global_step; ")
    assert err.rstrip().endswith("keys in the log: iteration, loss")
    assert not (tmp_path / "report").exists()  # checked before anything is written


def test_a_mapped_key_must_exist(tmp_path, capsys):
    log = write_csv(tmp_path / "log.csv", ["step", "loss"], [[1, 2.0]])
    err = run_cli(capsys, log, "--out", tmp_path / "report", "--map", "loss=train/loss")
    assert f"{log}: --map loss=train/loss: no key 'train/loss' in the log (keys: loss, step)" in err


def test_bad_map_on_the_command_line(tmp_path, capsys):
    log = write_csv(tmp_path / "log.csv", ["step", "loss"], [[1, 2.0]])
    err = run_cli(capsys, log, "--out", tmp_path / "report", "--map", "loss:train/loss")
    assert "--map 'loss:train/loss': expected SEQWARM_KEY=LOG_KEY" in err


@needs_tensorboard
def test_several_tensorboard_runs_under_one_directory(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for name in ("a", "b"):
        with SummaryWriter(str(tmp_path / "runs" / name)) as w:
            w.add_scalar("loss", 1.0, 1)
    with pytest.raises(ExternalLogError, match=r"2 TensorBoard runs under it \(a, b\); give one of them"):
        read_external(tmp_path / "runs", {})


def test_json_without_log_history(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    with pytest.raises(ExternalLogError, match="no log_history list"):
        read_external(path, {})


# --- a real Hugging Face Trainer run -------------------------------------------------------------


@pytest.mark.slow
@needs_tensorboard
def test_a_hugging_face_trainer_runs_tensorboard_log_and_trainer_state(tmp_path):
    """The docs' example (docs/INTEGRATIONS.md): a plain Trainer with report_to=["tensorboard"], then
    `seqwarm report output_dir/runs output_dir/trainer_state.json`."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    ids = torch.randint(0, 50, (48, 16), generator=torch.Generator().manual_seed(1))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        report_to=["tensorboard"],
        use_cpu=True,
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=3e-2,  # large enough for the loss to move
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen=True,
    )
    trainer = transformers.Trainer(
        model=transformers.GPT2LMHeadModel(config),
        args=args,
        train_dataset=[{"input_ids": r, "labels": r.clone()} for r in ids],
        eval_dataset=[{"input_ids": r, "labels": r.clone()} for r in ids[:8]],
    )
    trainer.train()
    trainer.save_state()
    history = trainer.state.log_history
    losses = [r["loss"] for r in history if "loss" in r]
    ratios = [x / min(losses[:i]) if i else 1.0 for i, x in enumerate(losses)]
    evals = [r["eval_loss"] for r in history if "eval_loss" in r]

    t1, summary, _, md = report(tmp_path, tmp_path / "hf" / "runs", tmp_path / "hf" / "trainer_state.json")
    for run in ("runs", "hf"):  # the TensorBoard directory and trainer_state.json's directory
        assert t1[run]["steps"] == "8" and summary[run]["steps"] == "8"
        assert float(t1[run]["max_loss_ratio"]) == pytest.approx(max(ratios), rel=1e-6)
        assert t1[run]["steps_loss_ratio_gt_1.2"] == str(sum(x > 1.2 for x in ratios))
        assert float(summary[run]["final_val_loss"]) == pytest.approx(evals[-1], rel=1e-6) and len(evals) == 2
        assert summary[run]["tokens"] == str(8 * 4 * 16)  # num_input_tokens_seen
    assert "loss <- train/loss" in md and "tokens <- num_input_tokens_seen" in md
