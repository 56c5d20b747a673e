import pytest

from seqwarm import demo
from seqwarm.cli import main
from seqwarm.data import corpus


@pytest.mark.slow
def test_demo_trains_both_runs_and_compares_them(corpus_dir, tmp_path, monkeypatch, capsys):
    # The real demo uses the builtin corpus (downloaded; covered by test_builtin) and ~10 minutes;
    # here the same code path runs a few steps on the test corpus.
    monkeypatch.setattr(demo, "ensure_builtin", lambda progress=True: corpus_dir)
    monkeypatch.setattr(corpus, "ensure_builtin", lambda progress=True: corpus_dir)  # open_data, in train
    small = [
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
    assert (out / "baseline" / "summary.json").exists() and (out / "slw" / "summary.json").exists()
    assert (out / "report" / "report.md").exists() and f"report: {out / 'report' / 'report.md'}" in printed
    # the two runs differ only in the curriculum
    base = (out / "baseline" / "config.yaml").read_text().split("curriculum:")[0]
    slw = (out / "slw" / "config.yaml").read_text().split("curriculum:")[0]
    assert base.replace("baseline", "X") == slw.replace("slw", "X")

    assert main(["demo", "--out", str(out), *small]) == 2  # never overwrites without --force
    assert "use --force" in capsys.readouterr().err
