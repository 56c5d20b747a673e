import pytest

from seqwarm.cli import main


@pytest.mark.slow
def test_demo_trains_both_runs_and_compares_them(corpus_dir, tmp_path, capsys):
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
    assert main(["demo", "--out", str(out), *small]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("final val loss") - 60 :]
    assert "baseline" in table and "slw" in table and "max loss ratio" in table
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
