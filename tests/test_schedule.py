import math

import pytest

from seqwarm.config import TrainConfig
from seqwarm.schedule import Clock, finished, learning_rate


def run_clock(cfg, tokens_per_step):
    """LR of each update and the clock after it, as the training loop computes them."""
    clock, lrs = Clock(), []
    for n in tokens_per_step:
        lrs.append(learning_rate(clock.after(n, cfg), cfg))
        clock.tick(n, cfg)
    return lrs, clock


def test_token_wise_cosine_values():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_tokens=100, max_tokens=1100, lr_decay_tokens=1100)
    for tokens, expected in [(50, 0.5), (100, 1.0), (600, 0.1 + 0.9 * 0.5), (1100, 0.1), (5000, 0.1)]:
        assert learning_rate(Clock(step=7, tokens=tokens), cfg) == pytest.approx(expected)
    # a quarter of the way through the decay: cos(pi/4)
    assert learning_rate(Clock(step=7, tokens=350), cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))


def test_step_warmup_then_token_decay_starts_where_warmup_ended():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=4, max_tokens=10_000)
    # SLW-like growth: fewer tokens per step early
    lrs, clock = run_clock(cfg, [10, 20, 30, 40, 50, 60])
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert clock.decay_start_tokens == 100
    assert lrs[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 50 / 9900)))


def test_token_decay_is_the_same_per_token_whatever_the_tokens_per_step():
    """Appendix A.2: with token-wise decay, SLW and the baseline see the same LR at the same token count."""
    cfg = TrainConfig(lr=1.0, min_lr=0.0, max_tokens=4096)
    base, _ = run_clock(cfg, [256] * 16)
    slw_tokens = [32, 64, 96, 128, 160, 192, 224] + [256] * 20
    slw, _ = run_clock(cfg, slw_tokens)
    cum = 0
    base_at = {256 * (i + 1): lr for i, lr in enumerate(base)}
    for n, lr in zip(slw_tokens, slw):
        cum += n
        if cum in base_at:
            assert lr == pytest.approx(base_at[cum])


def test_step_wise_decay():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=2, lr_decay_unit="steps", max_steps=12, lr_decay_style="linear")
    lrs, _ = run_clock(cfg, [1] * 12)
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    assert lrs[6] == pytest.approx(1 - 5 / 10)
    assert lrs[-1] == pytest.approx(0.0)


def test_clock_counts_tokens_and_stops_on_tokens_or_steps():
    cfg = TrainConfig(max_tokens=100, max_steps=50)
    _, clock = run_clock(cfg, [30, 30, 30])
    assert clock.tokens == 90 and clock.step == 3 and not finished(clock, cfg)
    clock.tick(30, cfg)
    assert finished(clock, cfg)
    assert finished(Clock(step=50, tokens=0), cfg)


def test_clock_state_dict_round_trip():
    cfg = TrainConfig(warmup_steps=2, max_tokens=1000)
    _, clock = run_clock(cfg, [5, 6, 7])
    again = Clock()
    again.load_state_dict(clock.state_dict())
    assert again == clock
