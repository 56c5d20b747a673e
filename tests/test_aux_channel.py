"""The model's channel out (issue 23): an auxiliary loss joins the gradient, is logged as `aux/<name>`, and
never enters `loss`, `loss_ratio` or `val/loss`; diagnostics are logged as `diag/<name>`. The toy terms here
are the test's own (the model's own, z-loss and the instruments, are tests/test_model_channels.py's)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seqwarm.data.corpus import open_data
from seqwarm.lifecycle import train
from seqwarm.metrics import read_metrics
from seqwarm.model import GPT
from seqwarm.saved import open_saved

TOY = 0.05  # weight of the toy auxiliary loss: the squared norm of the final hidden states


def toy_terms(seen: list):
    """A `GPT.loss_terms` that adds a toy aux loss and two diagnostics, and records, per training micro-batch,
    the cross-entropy computed independently (full logits, F.cross_entropy) and the toy term."""
    original = GPT.loss_terms

    def loss_terms(self, hidden, targets, *, ignore_index, diagnostics, **inputs):
        ce, extras = original(self, hidden, targets, ignore_index=ignore_index, diagnostics=diagnostics, **inputs)
        valid = targets != ignore_index
        toy = TOY * (hidden.float().pow(2).sum(-1) * valid).sum()  # summed over the targets, as ce is
        if self.training:
            with torch.no_grad():
                logits = F.linear(hidden, self.output_weight())[..., : self.cfg.vocab_size].float()
                independent = F.cross_entropy(
                    logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="sum"
                )
            seen.append((independent.item(), toy.item(), hidden.detach().abs().max().item()))
        return ce, extras | {"aux/toy": toy, "diag/hidden_absmax": hidden.detach().abs().max()}

    return loss_terms


def train_rows(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def eval_rows(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if "val/loss" in r]


def test_a_toy_aux_loss_reaches_the_gradient_and_the_log_but_not_the_loss(tiny_cfg, tmp_path, monkeypatch):
    # No preflight: its forward at full length would be one more training forward than the steps take.
    overrides = ["train.max_tokens=1200", "eval.every_tokens=600", "train.preflight=false"]
    base_cfg = tiny_cfg(*overrides, f"run.dir={tmp_path / 'base'}")
    train(base_cfg, progress=False)
    seen: list = []
    monkeypatch.setattr(GPT, "loss_terms", toy_terms(seen))
    aux_cfg = tiny_cfg(*overrides, f"run.dir={tmp_path / 'aux'}")
    train(aux_cfg, progress=False)
    base, aux = train_rows(tmp_path / "base"), train_rows(tmp_path / "aux")

    # Step 1 starts from the same weights: the same loss and loss ratio, bit for bit; its gradient differs.
    assert (aux[0]["loss"], aux[0]["loss_ratio"]) == (base[0]["loss"], base[0]["loss_ratio"])
    assert aux[0]["grad_norm"] != base[0]["grad_norm"]
    assert eval_rows(tmp_path / "aux")[0]["val/loss"] == eval_rows(tmp_path / "base")[0]["val/loss"]
    # ...and the update: the weights part.
    a, b = open_saved(tmp_path / "base").model(), open_saved(tmp_path / "aux").model()
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))

    # At every step `loss` is the cross-entropy alone, computed here without seqwarm's loss; the aux term and
    # the diagnostic are in their own columns (2 micro-batches a step: global batch 8, micro-batch 4).
    assert len(seen) == 2 * len(aux) and all("aux/toy" not in r for r in base)
    tokens = [r["tokens"] - p for r, p in zip(aux, [0] + [r["tokens"] for r in aux])]
    for row, n, (m1, m2) in zip(aux, tokens, zip(seen[::2], seen[1::2])):
        assert row["loss"] == pytest.approx((m1[0] + m2[0]) / n, rel=1e-5)
        assert row["aux/toy"] == pytest.approx((m1[1] + m2[1]) / n, rel=1e-5)
        assert row["diag/hidden_absmax"] == pytest.approx(max(m1[2], m2[2]), rel=1e-6)

    # val/loss is the cross-entropy alone: the last checkpoint's, recomputed here on the same sequences.
    last = eval_rows(tmp_path / "aux")[-1]
    assert last["step"] == aux[-1]["step"]
    val = open_data(aux_cfg, progress=False).sequences("val", aux_cfg.curriculum.seqlen_end)
    rows = val.rows(list(range(min(aux_cfg.eval.max_sequences, len(val)))))
    with torch.no_grad():
        logits = b.eval()(rows[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()).item()
    assert last["val/loss"] == pytest.approx(expected, rel=1e-5)


def test_diagnostics_are_max_or_mean_reduced_by_name():
    from seqwarm.trainer import _combine

    into: dict = {}
    for value in (1.0, 3.0):
        _combine(
            into,
            {"aux/z": torch.tensor(value), "diag/logit_max": torch.tensor(value), "diag/entropy": torch.tensor(value)},
            tokens=4,
            n_micro=2,
        )
    assert {k: v.item() for k, v in into.items()} == {"aux/z": 1.0, "diag/logit_max": 3.0, "diag/entropy": 2.0}
    with pytest.raises(ValueError, match="aux/<name> or diag/<name>"):
        _combine(into, {"zloss": torch.tensor(1.0)}, tokens=4, n_micro=2)
