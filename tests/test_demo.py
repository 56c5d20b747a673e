import pytest

from seqwarm.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])  # one after another; side by side in processes, one waiting its turn
def test_demo_trains_the_three_runs_and_compares_them(corpus_dir, tmp_path, capsys, jobs):
    # The real demo trains the proxy on the builtin corpus with its BPE (downloaded and prepared on
    # first use; covered by test_builtin) for about 6 minutes; here the same code path runs a few
    # steps on the test corpus.
    small = [
        f"data.path={corpus_dir}",
        "model.preset=tiny",
        "curriculum.seqlen_end=64",
        "train.max_tokens=3000",
        "train.global_batch_size=8",
        "train.micro_batch_size=8",
        "eval.every_tokens=1000",
        "eval.max_sequences=4",
        "log.progress=false",
    ]
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--jobs", jobs, *small]) == 0
    printed = capsys.readouterr().out
    header = printed[: printed.index("final val loss")].splitlines()[-1].split()
    assert header == ["baseline", "slw", "stable-lr"]  # the stable LR has its column (issue 27)
    assert "steps with loss ratio > 1.5" in printed and "max loss ratio" in printed
    if jobs != "1":
        assert "side by side, 2 at a time, one thread each" in printed
        for name in ("baseline", "slw", "stable-lr"):
            assert f"[{name}] done after" in printed and "num_threads: 1" in (out / name / "config.yaml").read_text()
    for name in ("baseline", "slw", "stable-lr"):
        assert (out / name / "summary.json").exists(), name
    assert "stable LR 0.003, baseline: final val ppl" in printed
    assert (out / "report" / "report.md").exists() and f"report: {out / 'report' / 'report.md'}" in printed
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figure: {out / 'demo.png'}" in printed
    stable = (out / "stable-lr" / "config.yaml").read_text()
    assert "lr: 0.003" in stable and "length: none" in stable
    # the two runs differ only in the curriculum
    base = (out / "baseline" / "config.yaml").read_text().split("curriculum:")[0]
    slw = (out / "slw" / "config.yaml").read_text().split("curriculum:")[0]
    assert base.replace("baseline", "X") == slw.replace("slw", "X")

    assert main(["demo", "--out", str(out), *small]) == 2  # never overwrites without --force
    assert "use --force" in capsys.readouterr().err


def test_demo_runs_side_by_side_only_on_free_cores_and_when_threads_are_not_chosen(monkeypatch):
    from seqwarm import demo
    from seqwarm.config import load_config

    configs = {name: load_config("demo-baseline") for name in ("baseline", "slw", "stable-lr")}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for free, jobs in ((1, 1), (2, 3), (3, 3), (16, 3)):
        monkeypatch.setattr(demo, "default_num_threads", lambda free=free: free)
        assert demo.demo_jobs(configs, []) == jobs
    assert demo.demo_jobs(configs, ["train.num_threads=2"]) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert demo.demo_jobs(configs, []) == 1


def test_demo_table_has_every_run_and_both_thresholds():
    from seqwarm.demo import format_comparison

    keys = ["final_val_loss", "final_val_ppl", "best_val_ppl", "tokens", "steps", "wall_s", "max_loss_ratio"]
    run = dict.fromkeys(keys, 1.0) | {"steps_loss_ratio_gt_1.2": 3, "steps_loss_ratio_gt_1.5": 1}
    lines = format_comparison({"baseline": run, "slw": run | {"steps_loss_ratio_gt_1.5": 0}, "stable-lr": run})
    lines = lines.splitlines()
    assert lines[0].split() == ["baseline", "slw", "stable-lr"]
    assert [line for line in lines if "> 1.5" in line][0].split()[-3:] == ["1", "0", "1"]
