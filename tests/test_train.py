import json
import math
from pathlib import Path

import pytest

from seqwarm import checkpoint as ckpt
from seqwarm.errors import SeqwarmError
from seqwarm.lifecycle import train
from seqwarm.metrics import read_metrics
from seqwarm.plan import plan_steps


def train_rows(run_dir):
    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r]


@pytest.mark.slow
def test_tiny_slw_run_end_to_end(tiny_cfg):
    cfg = tiny_cfg()
    summary = train(cfg, progress=False)
    run = Path(cfg.run.dir)
    rows = read_metrics(run / "metrics.jsonl")
    train_r = [r for r in rows if "loss" in r]
    eval_r = [r for r in rows if "val/loss" in r]
    assert {"step", "tokens", "seqlen", "batch_size", "lr", "loss", "grad_norm", "time_s"} <= set(train_r[0])
    assert [r["step"] for r in train_r] == list(range(1, len(train_r) + 1))
    assert train_r[0]["seqlen"] == 8 and train_r[-1]["seqlen"] == 64
    # one token clock: the logged tokens are the running sum of what each step trained on
    assert all(r["tokens"] == p["tokens"] + r["batch_size"] * r["seqlen"] for p, r in zip(train_r, train_r[1:]))
    assert summary["tokens"] == train_r[-1]["tokens"] >= cfg.train.max_tokens > train_r[-2]["tokens"]
    assert eval_r[0]["step"] == 0 and eval_r[-1]["step"] == summary["steps"]
    assert eval_r[-1]["val/loss"] < eval_r[0]["val/loss"] - 1.0  # it learns
    assert math.isclose(eval_r[-1]["val/ppl"], math.exp(eval_r[-1]["val/loss"]))
    assert (run / "config.yaml").exists() and (run / "summary.json").exists()
    assert ckpt.latest_checkpoint(run).name == f"step-{summary['steps']:08d}"
    # plan predicts exactly what training did
    planned = list(plan_steps(cfg))
    assert [(p["step"], p["seqlen"], p["tokens"]) for p in planned] == [
        (r["step"], r["seqlen"], r["tokens"]) for r in train_r
    ]
    assert [p["lr"] for p in planned] == pytest.approx([r["lr"] for r in train_r])


@pytest.mark.slow
def test_bsz_warmup_run_grows_the_batch_on_the_token_clock(tiny_cfg):
    cfg = tiny_cfg("curriculum.kind=bsz_warmup", "curriculum.batch_size_start=4", "curriculum.batch_warmup_tokens=3000")
    summary = train(cfg, progress=False)
    rows = [r for r in read_metrics(Path(cfg.run.dir) / "metrics.jsonl") if "loss" in r]
    assert all(r["seqlen"] == 64 for r in rows)
    sizes = [r["batch_size"] for r in rows]
    assert sizes[0] == 4 and sizes[-1] == 8 and sizes == sorted(sizes)
    assert all(b % cfg.train.micro_batch_size == 0 for b in sizes)
    # one token clock: each step adds batch x length tokens; training stops on tokens
    assert all(r["tokens"] == p["tokens"] + r["batch_size"] * 64 for p, r in zip(rows, rows[1:]))
    assert summary["tokens"] >= cfg.train.max_tokens > rows[-2]["tokens"]
    planned = list(plan_steps(cfg))
    assert [(p["batch_size"], p["tokens"]) for p in planned] == [(r["batch_size"], r["tokens"]) for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("drop_tail", [True, False])
def test_resume_reproduces_an_uninterrupted_run_exactly(tiny_cfg, tmp_path, drop_tail):
    overrides = [f"curriculum.drop_tail={str(drop_tail).lower()}", "checkpoint.every_steps=7", "model.dropout=0.1"]
    full = tiny_cfg(*overrides, f"run.dir={tmp_path / 'full'}")
    train(full, progress=False)

    class Crash(Exception):
        pass

    def crash_at_step_10(clock):
        if clock.step == 10:
            raise Crash

    part = tiny_cfg(*overrides, f"run.dir={tmp_path / 'part'}")
    with pytest.raises(Crash):
        train(part, progress=False, on_step=crash_at_step_10)
    assert len(train_rows(part.run.dir)) == 10  # steps 8-10 were logged after the step-7 checkpoint
    train(part, resume=True, progress=False)

    a, b = train_rows(full.run.dir), train_rows(part.run.dir)
    assert [r["step"] for r in b] == [r["step"] for r in a]
    for key in ("loss", "grad_norm", "lr", "tokens", "seqlen"):
        assert [r[key] for r in b] == [r[key] for r in a], key  # bit-for-bit on CPU


def test_interrupted_save_leaves_previous_checkpoint_loadable(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("checkpoint.every_steps=5", "train.max_steps=12")
    real_save_file = ckpt.save_file
    calls = {"n": 0}

    def crash_during_second_save(tensors, path):
        if Path(path).name == "optimizer.safetensors":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt("killed mid-save")
        return real_save_file(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", crash_during_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    run = Path(cfg.run.dir)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000005"]
    assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir()), "temporary directory cleaned"
    monkeypatch.setattr(ckpt, "save_file", real_save_file)
    summary = train(cfg, resume=True, progress=False)  # resumes from step 5
    assert summary["steps"] == 12
    assert [r["step"] for r in train_rows(run)] == list(range(1, 13))


def test_existing_run_dir_is_never_overwritten(tiny_cfg):
    cfg = tiny_cfg("train.max_steps=2")
    train(cfg, progress=False)
    before = (Path(cfg.run.dir) / "metrics.jsonl").read_text()
    with pytest.raises(SeqwarmError, match="--resume.*--force"):
        train(cfg, progress=False)
    assert (Path(cfg.run.dir) / "metrics.jsonl").read_text() == before
    train(cfg, force=True, progress=False)
    assert len(train_rows(cfg.run.dir)) == 2


def test_micro_batches_give_the_same_step_as_one_batch(tiny_cfg, tmp_path):
    losses = []
    for mb in (8, 2):
        cfg = tiny_cfg(f"train.micro_batch_size={mb}", "train.max_steps=3", f"run.dir={tmp_path / str(mb)}")
        train(cfg, progress=False)
        losses.append([r["loss"] for r in train_rows(cfg.run.dir)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_nonfinite_loss_stops_without_touching_the_weights(tiny_cfg, monkeypatch):
    import torch

    from seqwarm import trainer as train_mod
    from seqwarm.model import GPT

    cfg = tiny_cfg("train.max_steps=6", "checkpoint.every_steps=2")
    real_hidden = GPT.hidden

    def poisoned(self, idx):
        out = real_hidden(self, idx)
        return out * float("nan") if self.training and poisoned.step >= 3 else out

    poisoned.step = 0
    monkeypatch.setattr(GPT, "hidden", poisoned)
    weights = {}

    def watch(clock):
        poisoned.step = clock.step

    def snapshot_before_step(orig):
        def wrapped(tr, batch, lr, autocast, inputs=None):
            weights["before"] = [p.detach().clone() for p in tr.model.parameters()]
            out = orig(tr, batch, lr, autocast, inputs)
            weights["after"] = [p.detach().clone() for p in tr.model.parameters()]
            return out

        return wrapped

    monkeypatch.setattr(train_mod, "train_step", snapshot_before_step(train_mod.train_step))
    with pytest.raises(SeqwarmError, match=r"step 4.*\(the last checkpoint, step-00000002, holds finite weights\)"):
        train(cfg, progress=False, on_step=watch)
    assert all(torch.equal(a, b) for a, b in zip(weights["before"], weights["after"]))
    assert ckpt.latest_checkpoint(Path(cfg.run.dir)).name == "step-00000002"
    state = json.loads((ckpt.latest_checkpoint(Path(cfg.run.dir)) / "state.json").read_text())
    assert state["clock"]["step"] == 2


@pytest.mark.slow
def test_compile_does_not_recompile_per_length(tiny_cfg, tmp_path):
    """torch.compile with a dynamic length: one training graph for all SLW lengths, same losses as eager."""
    from torch._dynamo.utils import counters

    eager = tiny_cfg("train.max_steps=5", "eval.every_tokens=null", f"run.dir={tmp_path / 'eager'}")
    train(eager, progress=False)
    counters.clear()
    compiled = tiny_cfg(
        "train.max_steps=5", "eval.every_tokens=null", "train.compile=true", f"run.dir={tmp_path / 'compiled'}"
    )
    train(compiled, progress=False)
    rows_e, rows_c = train_rows(eager.run.dir), train_rows(compiled.run.dir)
    assert len({r["seqlen"] for r in rows_c}) >= 4  # several lengths went through the compiled model
    # one graph for training at every length, plus one for evaluation mode at the end
    assert counters["stats"]["unique_graphs"] <= 2
    assert [r["loss"] for r in rows_c] == pytest.approx([r["loss"] for r in rows_e], rel=1e-4)


@pytest.mark.slow
def test_plan_equals_training_when_tails_are_kept(tiny_cfg):
    # drop_tail: false serves the truncated tails in later steps, so a step's tokens vary; plan simulates that too
    cfg = tiny_cfg("curriculum.drop_tail=false", "eval.every_tokens=null")
    train(cfg, progress=False)
    rows = train_rows(cfg.run.dir)
    planned = list(plan_steps(cfg))
    assert any(r["tokens"] - p["tokens"] != r["batch_size"] * r["seqlen"] for p, r in zip(rows, rows[1:])), (
        "tails served"
    )
    keys = ("step", "seqlen", "batch_size", "tokens")
    assert [{k: p[k] for k in keys} for p in planned] == [{k: r[k] for k in keys} for r in rows]
    assert [p["lr"] for p in planned] == pytest.approx([r["lr"] for r in rows], rel=1e-12)


def test_keep_last_keeps_the_newest_checkpoints(tiny_cfg):
    cfg = tiny_cfg("checkpoint.every_steps=3", "checkpoint.keep_last=2", "eval.every_tokens=null", "train.max_steps=8")
    summary = train(cfg, progress=False)
    assert summary["steps"] == 8
    names = [p.name for p in ckpt.list_checkpoints(Path(cfg.run.dir))]
    assert names == ["step-00000006", "step-00000008"]  # saved at 3, 6 and at the end


def test_bf16_autocast_on_cpu_trains_close_to_fp32(tiny_cfg, tmp_path):
    import torch

    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_cfg(f"train.precision={precision}", "train.max_steps=4", f"run.dir={tmp_path / precision}")
        train(cfg, progress=False)
        losses[precision] = [r["loss"] for r in train_rows(cfg.run.dir)]
        weights = ckpt.load_weights(ckpt.latest_checkpoint(Path(cfg.run.dir)))
        assert all(w.dtype == torch.float32 for w in weights.values())  # autocast: the master weights stay fp32
    assert losses["bf16"] != losses["fp32"]  # bf16 really ran (its matmuls round differently)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)


class FakeScaler:
    """A GradScaler stand-in whose scale overflows on the given steps, as fp16's does when it is too large."""

    def __init__(self, overflow_on: set[int]):
        self.overflow_on, self.calls, self.updates = overflow_on, 0, 0

    def is_enabled(self):
        return True

    def scale(self, loss):
        return loss * float("inf") if self.calls in self.overflow_on else loss

    def unscale_(self, optimizer):
        pass

    def step(self, optimizer):
        if self.calls not in self.overflow_on:  # a real scaler skips the step whose gradients are not finite
            optimizer.step()

    def update(self):
        self.calls += 1
        self.updates += 1

    def state_dict(self):
        return {"scale": 1.0}


def test_fp16_overflow_is_skipped_without_stopping_the_run(tiny_cfg, corpus_dir, tmp_path):
    import torch

    from seqwarm.data.format import TokenData
    from seqwarm.trainer import build, training_steps

    cfg = tiny_cfg("monitor.on_nonfinite=stop", "eval.every_tokens=null")  # a real non-finite step would stop it
    tr = build(cfg, tmp_path, TokenData(corpus_dir))
    tr.scaler = FakeScaler(overflow_on={1})
    steps = training_steps(tr, progress=False)
    first = next(steps)
    before = [p.detach().clone() for p in tr.model.parameters()]
    second = next(steps)
    after = [p.detach().clone() for p in tr.model.parameters()]
    third = next(steps)
    steps.close()
    assert "skipped" not in first and "skipped" not in third
    assert second["skipped"] == "fp16 overflow"
    assert second["tokens"] == first["tokens"]  # an overflowed step trains no tokens, but the step counts
    assert third["step"] == 3 and third["tokens"] > second["tokens"]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # the overflowed update never reached the weights
    assert tr.scaler.updates == 3 and tr.guard.skipped == 0  # the scaler adapts its scale; the guard saw no failure
