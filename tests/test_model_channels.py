"""The model side of the stability toolkit (issue 25), for both families: QK-norm, the z-loss through the model's
chunked output layer, and the attention and output instruments returned as `diag/` terms."""

import math

import pytest
import torch
import torch.nn.functional as F

from seqwarm.model import GPTConfig, build_model

V = 61
SHAPE = dict(n_layer=2, n_head=2, d_model=32, max_seqlen=24, vocab_size=V)
FAMILIES = [
    {"family": "gpt2"},
    {"family": "gpt2", "n_kv_head": 1, "tie_embeddings": False},
    {"family": "llama"},
    {"family": "llama", "n_kv_head": 1},
]


def model_of(seed=0, **options):
    torch.manual_seed(seed)
    return build_model(GPTConfig(**SHAPE | options))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_qk_norm_changes_the_logits_and_trains(family):
    torch.manual_seed(1)
    x, y = torch.randint(0, V, (4, 24)), torch.randint(0, V, (4, 24))
    plain, normed = model_of(family=family), model_of(family=family, qk_norm=True)
    assert set(normed.state_dict()) - set(plain.state_dict()) == {
        f"blocks.{i}.attn.{q}_norm.{p}"
        for i in range(2)
        for q in "qk"
        for p in (["weight", "bias"] if family == "gpt2" else ["weight"])  # LayerNorm in gpt2, RMSNorm in llama
    }
    normed.load_state_dict(plain.state_dict(), strict=False)  # the same weights but the norms' gains
    with torch.no_grad():
        assert not torch.allclose(plain(x), normed(x), atol=1e-3)
    opt = torch.optim.AdamW(normed.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        ce, _ = normed(x, y)
        loss = ce / y.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    assert normed.blocks[0].attn.q_norm.weight.grad.abs().sum() > 0  # the gains train too


@pytest.mark.parametrize("options", FAMILIES)
def test_z_loss_value_and_gradient_equal_autograd_through_the_model(options):
    """ce + aux/z_loss backpropagated equals autograd of the plain formula over the full logits, in float64:
    sum CE + coef * sum (logsumexp of the logits)^2 over the targets that are not ignored."""
    coef = 3e-2
    model = model_of(**options).double()
    x, y = torch.randint(0, V, (2, 12)), torch.randint(0, V, (2, 12))
    y[0, :4] = -100
    ce, extras = model(x, y, z_loss=coef)
    assert set(extras) == {"aux/z_loss"} and not extras["aux/z_loss"].requires_grad  # detached: the value
    got = torch.autograd.grad(ce + extras["aux/z_loss"], list(model.parameters()))
    logits = model(x)
    valid = y != -100
    ref_ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
    ref_z = coef * (torch.logsumexp(logits, -1).square() * valid).sum()
    want = torch.autograd.grad(ref_ce + ref_z, list(model.parameters()))
    assert ce.item() == pytest.approx(ref_ce.item(), rel=1e-12)
    assert extras["aux/z_loss"].item() == pytest.approx(ref_z.item(), rel=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(got, want))
    # without the z-loss: the cross-entropy's gradient alone, and no aux term
    ce0, extras0 = model(x, y)
    assert extras0 == {} and ce0.item() == pytest.approx(ce.item(), rel=1e-12)
    plain = torch.autograd.grad(ce0, list(model.parameters()))
    assert not all(torch.allclose(a, b, atol=1e-10) for a, b in zip(plain, got))


@pytest.mark.parametrize("options", FAMILIES + [{"family": "llama", "qk_norm": True}])
def test_diagnostics_are_the_instruments_of_the_q_and_k_each_layer_attends_with(options, monkeypatch):
    """With diagnostics, every layer's logit max and entropy (attention_stats of the q and k that SDPA receives,
    after QK-norm and rotation, with the step's window) and the output layer's log Z; without, none of them."""
    from seqwarm import layers

    model = model_of(**options).eval()
    x, y = torch.randint(0, V, (3, 20)), torch.randint(0, V, (3, 20))
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q, k))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        ce_plain, plain = model(x, y, window=torch.tensor(5))
        assert plain == {}
        seen.clear()
        ce, extras = model(x, y, window=torch.tensor(5), diagnostics=True)
    assert ce.item() == ce_plain.item()  # the instruments change nothing of the step
    keys = {f"diag/attn/{i}/{w}" for i in range(2) for w in ("logit_max", "entropy")}
    assert set(extras) == keys | {f"diag/output/{w}" for w in ("logz_mean", "logz_max", "logit_absmax")}
    for i, (q, k) in enumerate(seen):
        top, entropy = layers.attention_stats(q, k, window=5)
        assert extras[f"diag/attn/{i}/logit_max"].item() == top.item()
        assert extras[f"diag/attn/{i}/entropy"].item() == entropy.item()
    with torch.no_grad():
        logits = model(x, window=torch.tensor(5))
    logz = torch.logsumexp(logits.double(), -1)
    assert extras["diag/output/logz_max"].item() == pytest.approx(logz.max().item(), rel=1e-5)
    assert extras["diag/output/logz_mean"].item() == pytest.approx(logz.mean().item(), rel=1e-5)
    assert extras["diag/output/logit_absmax"].item() == pytest.approx(logits.abs().max().item(), rel=1e-5)


def test_the_instruments_read_a_hand_built_attention_pattern():
    """One GPT-2 head whose keys are +-L/a by token (A or B) and whose queries are the constant a: the logit of a
    query for key j is +L at an A and -L at a B, so the max logit is L and each query's attention entropy follows
    from how many A's and B's its window holds, counted here by hand."""
    d, a, lam = 8, 2.0, 0.5
    model = model_of(n_layer=1, n_head=1, d_model=d, max_seqlen=16).eval()
    u = torch.zeros(d)
    u[0], u[1] = 1.0, -1.0  # LayerNorm(+-s u) = +-sqrt(d/2) u for any s > 0
    attn = model.blocks[0].attn
    with torch.no_grad():
        model.wpe.weight.zero_()
        model.wte.weight.zero_()
        model.wte.weight[0], model.wte.weight[1] = 3 * u, -3 * u  # token 0 = A, token 1 = B
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.bias[0] = a  # q = a e_0 for every query
        attn.qkv.weight[d, 0] = lam  # k_0 = lam x LayerNorm(x)_0 = +-lam sqrt(d/2)
    L = a * lam * math.sqrt(d / 2) / math.sqrt(d)
    tokens = [0, 1, 1, 0, 1, 1, 1, 0, 0, 1]
    window = 4
    with torch.no_grad():
        _, extras = model(torch.tensor([tokens]), torch.zeros(1, 10, dtype=torch.long), window=torch.tensor(window),
                          diagnostics=True)  # fmt: skip
    entropies = []
    for i in range(1, len(tokens)):  # the first query has one key: no entropy
        keys = tokens[max(0, i - window + 1) : i + 1]
        w = [math.exp(L if t == 0 else -L) for t in keys]
        p = [v / sum(w) for v in w]
        entropies.append(-sum(v * math.log(v) for v in p) / math.log(len(keys)))
    assert extras["diag/attn/0/logit_max"].item() == pytest.approx(L, rel=1e-5)
    assert extras["diag/attn/0/entropy"].item() == pytest.approx(sum(entropies) / len(entropies), rel=1e-5)


def test_the_trunk_runs_without_the_instruments_when_diagnostics_is_off(monkeypatch):
    from seqwarm import layers

    calls = []
    monkeypatch.setattr(layers, "attention_stats", lambda *a, **k: calls.append(1) or (torch.zeros(()),) * 2)
    model = model_of(family="llama")
    x = torch.randint(0, V, (2, 8))
    model(x, x)
    assert calls == []
    model(x, x, diagnostics=True)
    assert len(calls) == 2


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_trainer_logs_the_real_models_terms(tiny_cfg, family):
    """The trainer's side of issue 25 (train.z_loss, monitor.instruments) with the real model of each family:
    aux/z_loss on every step, the attention and output instruments on the instrumented steps only."""
    from pathlib import Path

    from seqwarm.lifecycle import train
    from seqwarm.metrics import read_metrics

    cfg = tiny_cfg(
        f"model.family={family}",
        "model.qk_norm=true",
        "train.z_loss=1e-4",
        "monitor.instruments=true",
        "monitor.every=2",
        "train.max_steps=6",
        "eval.every_tokens=null",
    )
    train(cfg, progress=False)
    rows = [r for r in read_metrics(Path(cfg.run.dir) / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(r["aux/z_loss"] > 0 for r in rows)
    for r in rows:
        on = r["step"] % 2 == 0
        assert all((f"diag/attn/{i}/{w}" in r) == on for i in range(2) for w in ("logit_max", "entropy"))
        assert ("diag/output/logz_max" in r) == on
        if on:
            assert 0 < r["diag/attn/1/entropy"] <= 1 and r["diag/output/logz_max"] >= r["diag/output/logz_mean"]
            # the mean per token of 1e-4 x (log Z)^2, at log Z's mean up to its spread over the tokens
            assert r["aux/z_loss"] == pytest.approx(1e-4 * r["diag/output/logz_mean"] ** 2, rel=0.05)
