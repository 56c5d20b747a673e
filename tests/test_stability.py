"""The stability toolkit in the trainer (issue 25): z-loss, skip-step, ZClip, the instruments' events, preflight.

The model side (`z_loss`, the attention and output diagnostics) is another branch's; until it lands, `contract`
patches `GPT.forward` with its contract: `z_loss` and `diagnostics` keywords, `aux/z_loss` from the real chunked
loss (`seqwarm.loss.output_layer_terms`), `diag/output/*` from it, and scripted `diag/attn/<layer>/*` values.
Rewind-and-skip is tests/test_rewind.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import seqwarm.trainer as loop
from seqwarm import cli, instruments
from seqwarm.data.format import TokenData
from seqwarm.data.order import SequenceOrder
from seqwarm.guards import ZClip
from seqwarm.lifecycle import train
from seqwarm.loss import IGNORE_INDEX, output_layer_terms
from seqwarm.metrics import read_metrics, train_rows
from seqwarm.model import GPT
from seqwarm.saved import open_saved
from seqwarm.stability import Events

ATTN = {0: (20.0, 0.05), 1: (3.0, 0.6)}  # layer -> scripted (max logit, entropy): layer 0 collapsed, 1 healthy


def contract(monkeypatch, scale=None, calls: list | None = None, start: int = 0):
    """GPT.forward as the model branch's contract, with `scale(n)` multiplying the n-th training forward's loss
    (counted from `start`: a resumed run's forwards continue the count)."""
    count = [start]

    def forward(self, idx, targets=None, *, ignore_index=IGNORE_INDEX, window=None, diagnostics=False, z_loss=0.0):
        hidden = self.trunk(idx)
        if targets is None:
            return torch.nn.functional.linear(hidden, self.output_weight())[..., : self.cfg.vocab_size]
        terms = output_layer_terms(
            hidden, self.output_weight(), targets, vocab_size=self.cfg.vocab_size, z_loss=z_loss, stats=diagnostics
        )
        ce, extras = terms["ce"], {}
        if self.training:
            count[0] += 1
            if calls is not None:
                calls.append({"z_loss": z_loss, "diagnostics": diagnostics})
            if scale is not None:
                ce = ce * scale(count[0])
        if z_loss > 0:
            extras["aux/z_loss"] = terms["z_loss"]
        if diagnostics:
            extras |= {f"diag/output/{k}": terms[k] for k in ("logz_mean", "logz_max", "logit_absmax")}
            for layer, (logit, entropy) in ATTN.items():
                extras[f"diag/attn/{layer}/logit_max"] = torch.tensor(logit)
                extras[f"diag/attn/{layer}/entropy"] = torch.tensor(entropy)
        return ce, extras

    monkeypatch.setattr(GPT, "forward", forward)


def rows_of(run: Path) -> list[dict]:
    return read_metrics(run / "metrics.jsonl")


def weights(run: Path) -> list[torch.Tensor]:
    return list(open_saved(run).model().parameters())


def test_z_loss_joins_the_gradient_and_its_own_column_never_the_loss(tiny_cfg, tmp_path, monkeypatch):
    calls: list = []
    contract(monkeypatch, calls=calls)
    common = ["train.max_tokens=600", "eval.every_tokens=300", "train.preflight=false"]
    train(tiny_cfg(*common, f"run.dir={tmp_path / 'base'}"), progress=False)
    train(tiny_cfg(*common, "train.z_loss=1e-2", f"run.dir={tmp_path / 'z'}"), progress=False)
    base, z = rows_of(tmp_path / "base"), rows_of(tmp_path / "z")
    assert {c["z_loss"] for c in calls} == {0.0, 1e-2}  # the coefficient reached the model as inputs["z_loss"]
    tb, tz = train_rows(base), train_rows(z)
    # Step 1 from the same weights: the same loss and loss ratio, bit for bit; the gradient carries the z-loss.
    assert (tz[0]["loss"], tz[0]["loss_ratio"]) == (tb[0]["loss"], tb[0]["loss_ratio"])
    assert tz[0]["grad_norm"] != tb[0]["grad_norm"]
    assert all(r["aux/z_loss"] > 0 for r in tz) and not any("aux/z_loss" in r for r in tb)
    assert [r for r in z if "val/loss" in r][0]["val/loss"] == [r for r in base if "val/loss" in r][0]["val/loss"]
    summary = json.loads((tmp_path / "z" / "summary.json").read_text())
    assert summary["max_loss_ratio"] == max(r["loss_ratio"] for r in tz)  # Table 1 from `loss`, the ce alone


def test_skip_step_drops_a_scripted_spike_without_touching_weights_adam_or_tokens(tiny_cfg, tmp_path, monkeypatch):
    spike = 9  # the 9th step (2 micro-batches a step: forwards 17 and 18) has 50x the loss
    contract(monkeypatch, scale=lambda n: 50.0 if n in (2 * spike - 1, 2 * spike) else 1.0)
    states, live = {}, []

    def on_step(clock):
        if clock.step in (spike - 1, spike):
            tr = live[0]
            states[clock.step] = (
                [p.detach().clone() for p in tr.model.parameters()],
                {k: v.clone() for s in tr.optimizer.state.values() for k, v in s.items() if torch.is_tensor(v)},
                [v["step"].clone() for v in tr.optimizer.state.values()],
            )

    original = loop.training_steps

    def spy(tr, **kw):  # the trainer, for on_step to read its weights and Adam state
        live.append(tr)
        yield from original(tr, **kw)

    monkeypatch.setattr(loop, "training_steps", spy)
    over = ["monitor.skip_spikes=loss", "monitor.skip_warmup=4", "monitor.skip_window=8", "train.preflight=false"]
    train(tiny_cfg(*over, "train.max_tokens=3000"), progress=False, on_step=on_step)
    run = Path(tiny_cfg().run.dir)
    rows = train_rows(rows_of(run))
    row = rows[spike - 1]
    assert row["skipped"] == "spike" and "loss" in row["skip_reason"] and row["loss"] > 20 * rows[spike - 2]["loss"]
    assert row["tokens"] == rows[spike - 2]["tokens"]  # the step counts, its tokens do not (docs/STABILITY.md)
    assert rows[spike]["step"] == spike + 1 and rows[spike]["tokens"] > row["tokens"]
    before, after = states[spike - 1], states[spike]
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))  # weights
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])  # Adam's moments
    assert all(torch.equal(a, b) for a, b in zip(before[2], after[2]))  # Adam's step count
    assert sum("skipped" in r for r in rows) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["spike_skips"] == 1 and summary["skipped_steps"] == 1


def test_zclip_in_the_trainer_matches_a_hand_computation_and_resumes_exactly(tiny_cfg, tmp_path, monkeypatch):
    factors = {9: 40.0, 12: 25.0}  # steps whose gradients are scaled up: the spikes ZClip must clip
    contract(monkeypatch, scale=lambda n: factors.get((n + 1) // 2, 1.0))
    over = ["train.grad_clip_mode=zscore", "train.zclip_warmup=5", "train.grad_clip=0", "train.preflight=false"]
    cfg = tiny_cfg(*over, "train.max_tokens=3000", f"run.dir={tmp_path / 'whole'}")
    train(cfg, progress=False)
    rows = train_rows(rows_of(tmp_path / "whole"))
    hand = ZClip(alpha=0.97, z_thresh=2.5, warmup=5)
    for r in rows:
        expected = hand.step(r["grad_norm"])
        assert r.get("clip_norm") == (None if expected is None else pytest.approx(expected, rel=1e-12))
        assert r["clipped"] == (expected is not None)
    assert 9 in {r["step"] for r in rows if r["clipped"]}  # the first spike; the next meets a variance it widened
    state = json.loads((tmp_path / "whole" / "checkpoints" / f"step-{rows[-1]['step']:08d}" / "state.json").read_text())
    assert state["zclip"] == hand.state_dict()  # the same float arithmetic on the same norms: equal
    # Stopped after 10 steps and resumed: the same weights as the run that never stopped (ZClip's EMA restored).
    half = tiny_cfg(*over, "train.max_tokens=3000", "train.max_steps=10", f"run.dir={tmp_path / 'half'}")
    contract(monkeypatch, scale=lambda n: factors.get((n + 1) // 2, 1.0))
    train(half, progress=False)
    contract(monkeypatch, scale=lambda n: factors.get((n + 1) // 2, 1.0), start=2 * 10)
    train(tiny_cfg(*over, "train.max_tokens=3000", f"run.dir={tmp_path / 'half'}"), resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights(tmp_path / "whole"), weights(tmp_path / "half")))


def test_instruments_log_on_their_steps_with_events_in_metrics_and_summary(tiny_cfg, monkeypatch):
    calls: list = []
    contract(monkeypatch, calls=calls)
    train(tiny_cfg("monitor.instruments=true", "monitor.every=3", "train.preflight=false"), progress=False)
    run = Path(tiny_cfg().run.dir)
    rows = train_rows(rows_of(run))
    for r in rows:
        on = r["step"] % 3 == 0
        assert ("diag/attn/0/logit_max" in r) == on and ("diag/output/logz_mean" in r) == on
        assert ("adam/attention/var_max" in r) == on and ("adam/embeddings/var_l1" in r) == on
    first = rows[2]
    assert first["event/collapse"] == [0] and all("event/collapse" not in r for r in rows[3:])
    groups = sum(v for k, v in first.items() if k.startswith("adam/") and k.endswith("/var_l1") and k.count("/") == 2)
    assert groups == pytest.approx(first["adam/var_l1"], rel=1e-5)  # the groups add up to the global norm
    summary = json.loads((run / "summary.json").read_text())
    assert summary["collapse_events"] == [
        {"layer": 0, "start": 3, "end": None, "min_entropy": pytest.approx(0.05), "max_logit": 20.0}
    ]
    unigram = TokenData(tiny_cfg().data.path).meta["splits"]["train"]["unigram_loss"]
    assert summary["unigram_loss"] == unigram
    assert summary["plateau"] == instruments.plateau(rows, unigram)


def test_events_on_scripted_series():
    events = Events(unigram_loss=5.0)
    series = [  # (step, layer 0's (logit, entropy) or None when not instrumented, loss)
        (1, (2.0, 0.8), 6.0),
        (2, None, 5.5),
        (3, (15.0, 0.05), 5.0),
        (4, (30.0, 0.01), 4.95),
        (5, (8.0, 0.3), 4.85),
        (6, None, 4.0),
    ]
    seen = []
    for step, attn, loss in series:
        row = {"step": step, "loss": loss}
        if attn:
            row |= {"diag/attn/0/logit_max": attn[0], "diag/attn/0/entropy": attn[1]}
        seen.append(events.observe(row))
        if step == 4:
            assert events.postfix() == {"collapse": "L0", "plateau": "on"}
    # Step 5: layer 0 recovers, and the loss is first at or below 5.0 - 0.1 (the plateau's margin).
    assert seen == [{}, {}, {"event/collapse": [0]}, {}, {"event/recovered": [0], "event/plateau_escape": 5}, {}]
    assert events.postfix() == {}
    restored = Events(5.0)
    restored.load_state_dict(json.loads(json.dumps(events.state_dict())))
    assert restored.state_dict() == events.state_dict()


def test_prepare_records_the_unigram_loss_of_each_split(corpus_dir):
    data = TokenData(corpus_dir)
    for split in ("train", "val"):
        tokens = np.asarray(data.splits[split])
        assert data.meta["splits"][split]["unigram_loss"] == pytest.approx(instruments.unigram_entropy(tokens))


def test_order_skips_exactly_the_recorded_batches():
    plain, skipping = SequenceOrder(1000, 16, seed=3), SequenceOrder(1000, 16, seed=3)
    batches = [plain.next_segments(4, 8)[0].tolist() for _ in range(6)]
    for _ in range(2):
        skipping.next_segments(4, 8)
    at = skipping.position()
    probe = SequenceOrder(1000, 16, seed=3)
    probe.load_state_dict(skipping.state_dict())
    probe.next_segments(4, 8), probe.next_segments(4, 8)  # batches 3 and 4: the ones to skip
    skipping.skip(at, probe.state_dict())
    resumed = SequenceOrder(1000, 16, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(skipping.state_dict())))  # the record is in the data position
    for order in (skipping, resumed):
        assert [order.next_segments(4, 8)[0].tolist() for _ in range(2)] == batches[4:6]


def test_preflight_out_of_memory_is_one_line_exit_2_and_writes_nothing(tiny_cfg, tmp_path, monkeypatch, capsys):
    def oom(self, idx, targets=None, **kw):
        if idx.shape[1] == 64:  # the largest length of tiny-slw: only the preflight's forward
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, idx, targets, **kw)

    original = GPT.forward
    monkeypatch.setattr(GPT, "forward", oom)
    cfg = tiny_cfg()
    run = tmp_path / "oom"
    code = cli.main(["train", "tiny-slw", f"data.path={cfg.data.path}", f"run.dir={run}", "train.num_threads=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "preflight: out of memory" in err and "train.micro_batch_size=4" in err and "length 64" in err
    assert not run.exists()


def test_a_run_with_preflight_is_bit_identical_to_one_without(tiny_cfg, tmp_path):
    for name, flag in (("on", "true"), ("off", "false")):
        train(
            tiny_cfg("train.max_tokens=1500", f"train.preflight={flag}", f"run.dir={tmp_path / name}"), progress=False
        )
    assert all(torch.equal(a, b) for a, b in zip(weights(tmp_path / "on"), weights(tmp_path / "off")))
    a, b = train_rows(rows_of(tmp_path / "on")), train_rows(rows_of(tmp_path / "off"))
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and not math.isnan(a[-1]["loss"])
