"""The stability toolkit in a plain PyTorch loop (seqwarm.integrations.stability): z-loss, skip-step and ZClip with
the trainer's semantics, their state in SequenceLengthWarmup's."""

import copy

import pytest
import torch

from seqwarm.errors import ConfigError
from seqwarm.guards import ZClip
from seqwarm.integrations import SequenceLengthWarmup
from seqwarm.integrations.stability import StepGuard, check_z_loss, gradient_only, z_loss


def test_z_loss_is_palms_log_z_squared_over_the_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 3] = labels[1, 1] = -100
    z = z_loss(logits, labels, 1e-2)  # HF's convention: position i predicts labels[i + 1]
    hand = [torch.logsumexp(logits[b, i - 1], -1) ** 2 for b in range(2) for i in range(1, 5) if labels[b, i] != -100]
    assert z.item() == pytest.approx(1e-2 * torch.stack(hand).mean().item(), rel=1e-6)
    assert z_loss(logits, labels, 1e-2, num_items=10).item() == pytest.approx(
        1e-2 * torch.stack(hand).sum().item() / 10
    )
    unshifted = z_loss(logits, labels, 1e-2, shift=False)
    assert unshifted.item() == pytest.approx(1e-2 * logits.logsumexp(-1)[labels != -100].pow(2).mean().item())
    # gradient_only: the value added is exactly 0, the gradient is z's.
    ce = logits.sum() * 0 + 3.25
    total = ce + gradient_only(z)
    assert total.item() == ce.item()
    (grad,) = torch.autograd.grad(total, logits, retain_graph=True)
    (expected,) = torch.autograd.grad(z, logits)
    assert torch.equal(grad, expected) and grad.abs().sum() > 0


def test_bad_settings_are_config_errors_naming_the_field():
    with pytest.raises(ConfigError, match="monitor.skip_sigma"):
        StepGuard(skip_spikes="loss", skip_sigma=0)
    with pytest.raises(ConfigError, match="train.zclip_alpha"):
        StepGuard(grad_clip_mode="zscore", zclip_alpha=1.5)
    with pytest.raises(ConfigError, match="train.z_loss"):
        check_z_loss(-1e-4)


def make_loop(guard: StepGuard | None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    slw = SequenceLengthWarmup(seqlen_start=8, seqlen_end=16, duration=10, lr=1e-2, min_lr=1e-3, max_tokens=100_000)
    scheduler = slw.scheduler(opt)
    if guard is not None:
        guard.wrap(opt, slw=slw)
    return model, opt, slw, scheduler


def run_step(model, opt, slw, scheduler, guard, scale: float, tokens: int = 10):
    x = torch.linspace(-1, 1, 8).reshape(2, 4)
    loss = scale * model(x).pow(2).mean() + scale
    loss.backward()
    slw.count(tokens)
    if guard is not None:
        guard.add_loss(loss)
    opt.step()
    scheduler.step()
    opt.zero_grad()


def test_skip_step_drops_a_scripted_spike_as_the_trainer_does():
    guard = StepGuard(skip_spikes="loss", skip_window=8, skip_warmup=4)
    model, opt, slw, scheduler = make_loop(guard)
    for i in range(6):
        run_step(model, opt, slw, scheduler, guard, 1.0 + 0.01 * i)
    weights, adam = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    clock = slw.clock.state_dict()
    run_step(model, opt, slw, scheduler, guard, 100.0)  # the spike
    assert guard.last["skipped"].startswith("loss") and guard.skip_guard.skipped == 1
    # Weights, Adam's moments and Adam's step count untouched; the gradients zeroed.
    assert all(torch.equal(a, b) for a, b in zip(weights.values(), model.state_dict().values()))
    assert all(
        torch.equal(adam["state"][k][s], opt.state_dict()["state"][k][s])
        for k in adam["state"]
        for s in adam["state"][k]
    )
    assert all(p.grad is None for p in model.parameters())
    # The clock: the step counts, its tokens do not (seqwarm's trainer's rule).
    assert (slw.clock.step, slw.clock.tokens) == (clock["step"] + 1, clock["tokens"])
    run_step(model, opt, slw, scheduler, guard, 1.06)  # back to normal: applied
    assert guard.last["skipped"] is None and slw.clock.tokens == clock["tokens"] + 10
    assert not all(torch.equal(a, b) for a, b in zip(weights.values(), model.state_dict().values()))


def test_zclip_clips_to_the_hand_computed_values():
    norms = [1.0, 1.2, 0.8, 1.1, 0.9, 6.0, 1.0, 9.0, 1.05, 0.5]
    guard = StepGuard(grad_clip_mode="zscore", zclip_warmup=3)
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([param], lr=0.0)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(param.grad.norm().item()))
    guard.wrap(opt)
    hand = ZClip(alpha=0.97, z_thresh=2.5, warmup=3)
    direction = torch.tensor([1.0, 2.0, 2.0]) / 3.0
    clipped = []
    for g in norms:
        param.grad = direction * g
        opt.step()
        limit = hand.step(g)
        clipped.append(limit)
        assert guard.last["clip_norm"] == (pytest.approx(limit) if limit is not None else None)
    assert seen == pytest.approx([g if c is None else c for g, c in zip(norms, clipped)], rel=1e-6)
    assert sum(c is not None for c in clipped) == 2 == guard.zclip.clipped  # the 6.0 and the 9.0
    state = guard.state_dict()["zclip"]  # the guard's norms are float32's
    assert (state["mean"], state["var"]) == (pytest.approx(hand.mean, rel=1e-6), pytest.approx(hand.var, rel=1e-5))


def test_the_guards_state_round_trips_in_slws():
    guard = StepGuard(skip_spikes="both", skip_window=8, skip_warmup=4, grad_clip_mode="zscore", zclip_warmup=3)
    loop = make_loop(guard)
    for i in range(6):
        run_step(*loop, guard, 1.0 + 0.01 * i)
    state = copy.deepcopy(loop[2].state_dict())
    assert state["attached"]["step_guard"] == guard.state_dict()

    twin = StepGuard(skip_spikes="both", skip_window=8, skip_warmup=4, grad_clip_mode="zscore", zclip_warmup=3)
    twin_loop = make_loop(twin)
    twin_loop[0].load_state_dict(loop[0].state_dict())
    twin_loop[1].load_state_dict(copy.deepcopy(loop[1].state_dict()))  # torch would share the moment tensors
    twin_loop[2].load_state_dict(state)
    assert twin.state_dict() == guard.state_dict()
    for scale in (1.03, 50.0, 1.02):  # both decide alike, the spike included
        run_step(*loop, guard, scale)
        run_step(*twin_loop, twin, scale)
        assert twin.last == guard.last
    # A resume with the guard switched off, or with another setting, is refused.
    with pytest.raises(ConfigError, match="step_guard"):
        make_loop(None)[2].load_state_dict(state)
    other = StepGuard(skip_spikes="both", skip_window=8, skip_warmup=4, skip_sigma=3.0, grad_clip_mode="zscore")
    with pytest.raises(ConfigError, match="monitor.skip_sigma"):
        make_loop(other)[2].load_state_dict(state)


def test_a_non_finite_step_is_never_applied():
    guard = StepGuard(grad_clip_mode="zscore")
    model, opt, slw, scheduler = make_loop(guard)
    weights = copy.deepcopy(model.state_dict())
    run_step(model, opt, slw, scheduler, guard, float("nan"))
    assert guard.last["skipped"] == "non-finite" and guard.nonfinite == 1
    assert all(torch.equal(a, b) for a, b in zip(weights.values(), model.state_dict().values()))
