"""z-loss and the output layer's instruments (`seqwarm.loss.output_layer_terms`) against plain autograd, and
bit-identical to `linear_cross_entropy` where they must be (issue 25: "z-loss value and gradient against
autograd on the plain path")."""

import math

import pytest
import torch

from seqwarm.loss import IGNORE_INDEX, linear_cross_entropy, output_layer_terms

V, V_PADDED, C = 50, 64, 16  # a vocabulary padded to a multiple of 64, as the model's


def _inputs(seed=0, n=37, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (scale * torch.randn(n, C, generator=g, dtype=dtype)).requires_grad_()
    weight = (0.5 * torch.randn(V_PADDED, C, generator=g, dtype=dtype)).requires_grad_()
    targets = torch.randint(0, V, (n,), generator=g)
    targets[::5] = IGNORE_INDEX  # padding targets: no loss, no gradient, no statistics
    return hidden, weight, targets


def _reference(hidden, weight, targets, coef):
    """The plain path: logits over the real vocabulary, log_softmax and logsumexp, autograd does the rest."""
    logits = hidden @ weight[:V].T
    valid = targets != IGNORE_INDEX
    logz = torch.logsumexp(logits, dim=-1)[valid]
    ce = -torch.log_softmax(logits, dim=-1)[valid].gather(1, targets[valid][:, None]).sum()
    return ce, coef * logz.square().sum(), logz, logits[valid]


@pytest.mark.parametrize("chunk_size", [5, 64])
@pytest.mark.parametrize("coef", [1e-4, 0.3])
def test_z_loss_value_and_gradient_match_plain_autograd(chunk_size, coef):
    hidden, weight, targets = _inputs(scale=3.0)  # logits of several units: log Z well away from 0
    ce_ref, z_ref, logz, _ = _reference(hidden, weight, targets, coef)
    want = torch.autograd.grad(ce_ref + z_ref, (hidden, weight), retain_graph=True)
    plain = torch.autograd.grad(ce_ref, (hidden, weight))
    terms = output_layer_terms(hidden, weight, targets, vocab_size=V, z_loss=coef, chunk_size=chunk_size)
    assert terms["ce"].item() == pytest.approx(ce_ref.item(), rel=1e-5)
    assert terms["z_loss"].item() == pytest.approx(z_ref.item(), rel=1e-5) and not terms["z_loss"].requires_grad
    got = torch.autograd.grad(0.25 * terms["ce"], (hidden, weight))  # the upstream scale applies to both terms
    torch.testing.assert_close(got[0], 0.25 * want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], 0.25 * want[1], atol=1e-5, rtol=1e-5)
    assert got[1][V:].abs().max() == 0  # the padding rows of the vocabulary get no gradient
    # ce + z_loss, as a trainer that sums its auxiliary terms would backpropagate it: the same gradient
    again = output_layer_terms(hidden, weight, targets, vocab_size=V, z_loss=coef, chunk_size=chunk_size)
    summed = torch.autograd.grad(0.25 * (again["ce"] + again["z_loss"]), (hidden, weight))
    assert all(torch.equal(a, b) for a, b in zip(summed, got))
    # a z-loss that matters moves the gradient: the comparison above would fail if the term were ignored
    assert coef < 0.01 or not torch.allclose(plain[1], want[1], atol=1e-3)


@pytest.mark.parametrize("chunk_size", [5, 64])
def test_ce_is_bit_identical_to_linear_cross_entropy_and_z0_keeps_todays_gradients(chunk_size):
    hidden, weight, targets = _inputs(seed=1)
    today = linear_cross_entropy(hidden, weight, targets, vocab_size=V, chunk_size=chunk_size)
    want = torch.autograd.grad(today, (hidden, weight))
    for kw in ({}, {"stats": True}):
        terms = output_layer_terms(hidden, weight, targets, vocab_size=V, chunk_size=chunk_size, **kw)
        assert torch.equal(terms["ce"], today) and terms["z_loss"].item() == 0.0
        got = torch.autograd.grad(terms["ce"], (hidden, weight))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with torch.no_grad():  # evaluation: linear_cross_entropy's no-gradient path, the same bits
        for coef in (0.0, 1e-4):
            terms = output_layer_terms(hidden, weight, targets, vocab_size=V, z_loss=coef, chunk_size=chunk_size)
            assert torch.equal(
                terms["ce"], linear_cross_entropy(hidden, weight, targets, vocab_size=V, chunk_size=chunk_size)
            )
    # with z-loss on, ce's value is still the plain cross-entropy (the z-loss is a separate term)
    terms = output_layer_terms(hidden, weight, targets, vocab_size=V, z_loss=0.1, chunk_size=chunk_size)
    assert torch.equal(terms["ce"].detach(), today.detach()) and terms["z_loss"].item() > 0


def test_stats_are_log_z_and_the_largest_logit_over_valid_targets():
    hidden, weight, targets = _inputs(seed=2, scale=2.0)
    _, _, logz, logits = _reference(hidden, weight, targets, 0.0)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            terms = output_layer_terms(hidden, weight, targets, vocab_size=V, stats=True, chunk_size=8)
        assert terms["logz_mean"].item() == pytest.approx(logz.mean().item(), rel=1e-5)
        assert terms["logz_max"].item() == pytest.approx(logz.max().item(), rel=1e-5)
        assert terms["logit_absmax"].item() == pytest.approx(logits.abs().max().item(), rel=1e-6)
    # an ignored row with a huge logit counts nowhere
    hidden2 = hidden.detach().clone()
    hidden2[0] = 100.0  # targets[0] is ignored
    terms = output_layer_terms(hidden2, weight, targets, vocab_size=V, stats=True)
    assert terms["logit_absmax"].item() == pytest.approx(logits.abs().max().item(), rel=1e-6)
    # a uniform output: log Z = ln V exactly where every logit is 0
    zero = output_layer_terms(torch.zeros(4, C), weight, torch.arange(4), vocab_size=V, stats=True)
    assert zero["logz_mean"].item() == pytest.approx(math.log(V)) and zero["logit_absmax"].item() == 0.0
    none = output_layer_terms(hidden, weight, torch.full_like(targets, IGNORE_INDEX), vocab_size=V, stats=True)
    assert math.isnan(none["logz_mean"].item()) and none["ce"].item() == 0.0


def test_a_negative_z_loss_is_refused():
    hidden, weight, targets = _inputs()
    with pytest.raises(ValueError, match="z_loss"):
        output_layer_terms(hidden, weight, targets, vocab_size=V, z_loss=-1e-4)
