"""What `--resume` may change, the run-directory record of it, and the checkpoint format."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from seqwarm import checkpoint as ckpt
from seqwarm import rundir
from seqwarm.cli import main
from seqwarm.errors import ConfigError, SeqwarmError
from seqwarm.lifecycle import train
from seqwarm.metrics import read_metrics


@pytest.fixture
def interrupted(tiny_cfg):
    """A tiny-slw run stopped after its step-10 checkpoint (of 20 steps), and its config."""
    cfg = tiny_cfg("train.max_steps=10", "train.lr_decay_tokens=8000")
    train(cfg, progress=False)
    return cfg


def test_a_change_to_what_is_computed_exits_2_naming_the_field(interrupted, capsys):
    run = Path(interrupted.run.dir)
    before = (run / "config.yaml").read_text()
    for override, field in [
        ("curriculum.duration=999", "curriculum.duration"),
        ("train.lr=1e-2", "train.lr"),
        ("model.n_layer=3", "model.n_layer"),
        ("run.seed=7", "run.seed"),
        ("train.global_batch_size=16", "train.global_batch_size"),
    ]:
        assert main(["train", "--resume", str(run), override]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"seqwarm: error: {field}: cannot change on --resume")
    assert (run / "config.yaml").read_text() == before  # nothing was rewritten
    assert not (run / rundir.RESUMES).exists()
    assert ckpt.latest_checkpoint(run).name == "step-00000010"


def test_allowed_changes_are_applied_and_recorded(interrupted):
    run = Path(interrupted.run.dir)
    assert (
        main(["train", "--resume", str(run), "train.max_steps=14", "eval.every_tokens=1000", "train.num_threads=1"])
        == 0
    )
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 15))
    (resume,) = rundir.read_resumes(run)
    assert resume["step"] == 10
    assert resume["changes"]["train.max_steps"] == {"old": 10, "new": 14}
    assert resume["changes"]["eval.every_tokens"] == {"old": 2000, "new": 1000}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 14 and saved["eval"]["every_tokens"] == 1000
    # a second resume with nothing new records nothing
    assert main(["train", "--resume", str(run)]) == 0
    assert len(rundir.read_resumes(run)) == 1


def test_a_new_length_is_refused_where_the_lr_decay_ends_at_it(tiny_cfg):
    cfg = tiny_cfg("train.max_steps=6")  # tiny-slw decays to min_lr at max_tokens (lr_decay_tokens unset)
    train(cfg, progress=False)
    longer = tiny_cfg("train.max_steps=6", "train.max_tokens=9000")
    with pytest.raises(ConfigError, match=r"train.max_tokens: cannot change on --resume while the LR decay ends at it"):
        train(longer, resume=True, progress=False)


def test_resume_changes_is_a_pure_comparison(tiny_cfg):
    a = tiny_cfg()
    assert rundir.resume_changes(a, tiny_cfg()) == {}
    assert rundir.resume_changes(a, tiny_cfg("log.progress=true", "run.dir=elsewhere")) == {
        "log.progress": (False, True)
    }
    # eval.batch_size defaults to the micro-batch, and follows it
    assert rundir.resume_changes(a, tiny_cfg("train.micro_batch_size=2")) == {
        "train.micro_batch_size": (4, 2),
        "eval.batch_size": (4, 2),
    }
    with pytest.raises(ConfigError, match="train.precision"):
        rundir.resume_changes(a, tiny_cfg("train.precision=bf16"))


def test_a_checkpoint_of_an_unknown_format_is_refused(interrupted):
    run = Path(interrupted.run.dir)
    state_file = ckpt.latest_checkpoint(run) / "state.json"
    state = json.loads(state_file.read_text())
    assert state["format"] == "seqwarm-checkpoint-v1"
    state["format"] = "seqwarm-checkpoint-v9"
    state_file.write_text(json.dumps(state))
    ckpt.write_manifest(state_file.parent)  # as a future seqwarm would write it
    with pytest.raises(SeqwarmError, match=r"state.json: checkpoint format 'seqwarm-checkpoint-v9'"):
        train(interrupted, resume=True, progress=False)


def test_trainer_state_dict_round_trips(tiny_cfg, corpus_dir, tmp_path):
    from seqwarm.data.format import TokenData
    from seqwarm.trainer import build, training_steps

    cfg = tiny_cfg("curriculum.drop_tail=false", "model.dropout=0.1", "eval.every_tokens=null")
    data = TokenData(corpus_dir)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = build(cfg, tmp_path / "a", data)
    steps = training_steps(a, progress=False)
    for _ in range(5):
        next(steps)
    ck = copy.deepcopy(a.state_dict())  # like model.state_dict(), it holds the live tensors
    row_a = next(steps)  # the 6th step, from the state just saved (dropout's RNG included)
    steps.close()
    b = build(cfg, tmp_path / "b", data)
    b.load_state_dict(ck)
    again = b.state_dict()
    assert {k: v for k, v in again.state.items() if k != "time_s"} == {
        k: v for k, v in ck.state.items() if k != "time_s"
    }
    assert again.model.keys() == ck.model.keys() and all(again.model[k].equal(ck.model[k]) for k in ck.model)
    row_b = next(training_steps(b, progress=False))
    keys = ("step", "loss", "grad_norm", "seqlen", "tokens", "lr")
    assert {k: row_a[k] for k in keys} == {k: row_b[k] for k in keys}  # bit-for-bit on CPU
