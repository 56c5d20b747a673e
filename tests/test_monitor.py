import json
import math
from pathlib import Path

import pytest
import torch

from seqwarm import checkpoint as ckpt
from seqwarm.errors import SeqwarmError
from seqwarm.lifecycle import train
from seqwarm.metrics import read_metrics
from seqwarm.monitor import LossRatio, NonFiniteGuard, adam_statistics


def test_adam_statistics_by_hand():
    """Two scalar parameters, two Adam steps with known gradients: v_t and m_t by hand (footnote 5)."""
    a, b = torch.nn.Parameter(torch.tensor(1.0)), torch.nn.Parameter(torch.tensor(2.0))
    opt = torch.optim.AdamW([a, b], lr=0.1, betas=(0.9, 0.999), weight_decay=0.0)
    assert adam_statistics(opt) is None  # no state before the first step
    grads = [(3.0, -4.0), (1.0, 2.0)]
    v, m = [0.0, 0.0], [0.0, 0.0]
    for ga, gb in grads:
        a.grad, b.grad = torch.tensor(ga), torch.tensor(gb)
        opt.step()
        for i, g in enumerate((ga, gb)):
            v[i] = 0.999 * v[i] + 0.001 * g * g
            m[i] = 0.9 * m[i] + 0.1 * g
    var_l1, var_max, mom_l1 = adam_statistics(opt).tolist()
    assert var_l1 == pytest.approx(math.sqrt(v[0]) + math.sqrt(v[1]), rel=1e-5)
    assert var_max == pytest.approx(max(math.sqrt(v[0]), math.sqrt(v[1])), rel=1e-5)
    assert mom_l1 == pytest.approx(abs(m[0]) + abs(m[1]), rel=1e-5)


def test_loss_ratio_on_a_given_sequence():
    ratio = LossRatio()
    losses = [10.0, 8.0, 9.0, 4.0, 6.0, float("nan"), 5.0]
    got = [ratio(x) for x in losses]
    assert got[:5] == pytest.approx([1.0, 0.8, 9 / 8, 0.5, 6 / 4])
    assert math.isnan(got[5]) and got[6] == pytest.approx(5 / 4)  # NaN does not move the minimum


def test_guard_policies():
    stop = NonFiniteGuard("stop", 3)
    assert stop.observe(True) is None and stop.observe(False) is not None
    skip = NonFiniteGuard("skip", 3)
    assert [skip.observe(f) for f in (False, False, True, False, False)] == [None] * 5
    assert skip.observe(False) is not None and skip.skipped == 5


def poison(monkeypatch, bad_steps, where="loss"):
    """Make the loss (or one gradient) NaN at the given 1-based steps."""
    from seqwarm import trainer as train_mod

    real_step = train_mod.train_step
    calls = {"n": 0}

    def step(tr, batch, lr, autocast, inputs=None):
        calls["n"] += 1
        if calls["n"] in bad_steps:
            if where == "loss":
                real_hidden = tr.model.trunk
                tr.model.trunk = lambda x: real_hidden(x) * float("nan")
                try:
                    return real_step(tr, batch, lr, autocast)
                finally:
                    tr.model.trunk = real_hidden
            hook = tr.model.wpe.weight.register_hook(lambda g: g * float("nan"))
            try:
                return real_step(tr, batch, lr, autocast)
            finally:
                hook.remove()
        return real_step(tr, batch, lr, autocast)

    monkeypatch.setattr(train_mod, "train_step", step)


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nonfinite_step_is_never_applied_and_stop_policy_stops(tiny_cfg, monkeypatch, where):
    cfg = tiny_cfg("train.max_steps=8", "checkpoint.every_steps=2")
    poison(monkeypatch, {5}, where)
    with pytest.raises(SeqwarmError, match="step 5: .*not applied; stopping"):
        train(cfg, progress=False)
    rows = [r for r in read_metrics(Path(cfg.run.dir) / "metrics.jsonl") if "loss" in r]
    assert rows[-1]["step"] == 5 and rows[-1]["skipped"] == "non-finite"
    assert ckpt.latest_checkpoint(Path(cfg.run.dir)).name == "step-00000004"


def test_skip_policy_skips_counts_and_keeps_weights(tiny_cfg, monkeypatch, tmp_path):
    from seqwarm import trainer as train_mod

    cfg = tiny_cfg(
        "train.max_steps=8", "monitor.on_nonfinite=skip", "checkpoint.every_steps=1", "checkpoint.keep_last=10"
    )
    poison(monkeypatch, {3, 4}, "gradient")
    summary = train(cfg, progress=False)
    run = Path(cfg.run.dir)
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r.get("skipped") for r in rows][2:4] == ["non-finite", "non-finite"]
    assert rows[2]["tokens"] == rows[1]["tokens"] == rows[3]["tokens"]  # skipped steps train no tokens
    assert summary["skipped_steps"] == 2 and summary["steps"] == 8
    # the weights after the skipped steps equal those before them
    w2, w4 = (
        ckpt.load_weights(run / "checkpoints" / "step-00000002"),
        ckpt.load_weights(run / "checkpoints" / "step-00000004"),
    )
    assert all(torch.equal(w2[k], w4[k]) for k in w2)
    assert all(torch.isfinite(v).all() for v in w4.values())

    # too many in a row stops
    cfg2 = tiny_cfg(
        "train.max_steps=8", "monitor.on_nonfinite=skip", "monitor.max_consecutive_skips=2", f"run.dir={tmp_path / 'b'}"
    )
    monkeypatch.setattr(train_mod, "train_step", train_mod.train_step)
    poison(monkeypatch, {3, 4, 5}, "gradient")
    with pytest.raises(SeqwarmError, match="2 non-finite steps in a row"):
        train(cfg2, progress=False)


@pytest.mark.slow
def test_rows_carry_the_instruments_and_summary_counts_them(tiny_cfg):
    cfg = tiny_cfg("train.grad_clip=0.5")
    summary = train(cfg, progress=False)
    rows = [r for r in read_metrics(Path(cfg.run.dir) / "metrics.jsonl") if "loss" in r]
    for r in rows:
        assert r["adam/var_l1"] > 0 and 0 < r["adam/var_max"] and r["adam/mom_l1"] > 0
        assert r["clipped"] == (r["grad_norm"] > 0.5)
    assert summary["clip_count"] == sum(r["clipped"] for r in rows) > 0
    assert summary["max_loss_ratio"] == max(r["loss_ratio"] for r in rows)
    assert summary["max_adam_var_max"] == max(r["adam/var_max"] for r in rows)
    assert summary["steps_loss_ratio_gt_1.2"] == sum(r["loss_ratio"] > 1.2 for r in rows)
    on_disk = json.loads((Path(cfg.run.dir) / "summary.json").read_text())
    assert on_disk == summary


def test_adam_statistics_every_k_steps(tiny_cfg):
    cfg = tiny_cfg("monitor.adam_every_steps=3", "train.max_steps=7")
    train(cfg, progress=False)
    rows = [r for r in read_metrics(Path(cfg.run.dir) / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows if "adam/var_l1" in r] == [3, 6]


def test_tensorboard_mirror(tiny_cfg):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg("train.max_steps=4", "log.tensorboard=true")
    train(cfg, progress=False)
    events = EventAccumulator(str(Path(cfg.run.dir) / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss", "loss_ratio", "adam/var_max", "tokens", "val/ppl"} <= set(tags)
    rows = [r for r in read_metrics(Path(cfg.run.dir) / "metrics.jsonl") if "loss" in r]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([r["loss"] for r in rows])


def test_tensorboard_after_a_resume_has_each_step_once(tiny_cfg):
    """Steps logged after the last checkpoint are trained again on resume; TensorBoard must not show them twice."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Crash(Exception):
        pass

    def crash_at_step_6(clock):
        if clock.step == 6:
            raise Crash

    cfg = tiny_cfg("train.max_steps=8", "checkpoint.every_steps=4", "log.tensorboard=true")
    with pytest.raises(Crash):
        train(cfg, progress=False, on_step=crash_at_step_6)  # steps 5 and 6 are logged, then lost
    train(cfg, resume=True, progress=False)
    events = EventAccumulator(str(Path(cfg.run.dir) / "tensorboard"))
    events.Reload()
    rows = [r for r in read_metrics(Path(cfg.run.dir) / "metrics.jsonl") if "loss" in r]
    assert [e.step for e in events.Scalars("loss")] == [r["step"] for r in rows] == list(range(1, 9))
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([r["loss"] for r in rows])


def test_tensorboard_missing_is_a_clear_error(monkeypatch):
    import builtins

    from seqwarm.config import LogConfig
    from seqwarm.errors import ConfigError

    real_import = builtins.__import__
    monkeypatch.setattr(
        builtins,
        "__import__",
        lambda name, *a, **k: (
            (_ for _ in ()).throw(ImportError(name)) if name == "tensorboard" else real_import(name, *a, **k)
        ),
    )
    with pytest.raises(ConfigError, match=r"seqwarm\[tensorboard\]"):
        LogConfig(tensorboard=True)
