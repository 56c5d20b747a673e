"""The skip-step guard (OLMo-core's SkipStepAdamW rule) and ZClip (the reference implementation's rule) on
scripted series, against hand computations, and their state round-trips (issue 25)."""

import json
import math
import statistics

import pytest

from seqwarm.guards import SkipStepGuard, ZClip

# --- skip-step -------------------------------------------------------------------------------------


def _wobble(n, base=3.0, amp=0.01):
    """A calm series: base +- amp, alternating (mean base, sample std about amp)."""
    return [base + (amp if i % 2 else -amp) for i in range(n)]


def test_skip_step_skips_a_scripted_spike_and_keeps_it_out_of_the_history():
    guard = SkipStepGuard(sigma=6, window=8, warmup=4)
    calm = _wobble(6)
    assert [guard.check(x, 1.0 + x / 100) for x in calm] == [None] * 6
    hist = list(guard.history["loss"])
    limit = statistics.mean(hist) + 6 * statistics.stdev(hist)  # Bessel-corrected, as torch.std_mean
    assert guard.threshold("loss") == pytest.approx(limit)
    reason = guard.check(limit + 1e-6, 1.03)
    assert reason is not None and reason.startswith("loss ") and "last 6 steps" in reason
    assert list(guard.history["loss"]) == hist  # the skipped value is not in the history
    assert (guard.skipped, guard.in_a_row) == (1, 1)
    assert guard.check(limit - 1e-6, 1.03) is None and guard.in_a_row == 0  # just under: applied
    # the gradient norm alone can skip a step whose loss is ordinary
    assert guard.check(3.0, 50.0).startswith("grad_norm ") and guard.skipped == 2
    # the window keeps the last 8 applied steps
    for x in _wobble(10):
        guard.check(x, 1.03)
    assert len(guard.history["loss"]) == 8


def test_skip_step_is_inactive_during_warmup_and_counts_only_applied_steps():
    guard = SkipStepGuard(sigma=6, window=128, warmup=64, signals=("loss",))
    for x in _wobble(63):
        assert guard.check(x) is None
    assert guard.check(1e6) is None  # the 64th step: 63 values held, still warming up (and now it is recorded)
    guard = SkipStepGuard(sigma=6, window=128, warmup=64, signals=("loss",))
    for x in _wobble(64):
        guard.check(x)
    assert guard.check(1e6) is not None  # 64 values held: active
    with pytest.raises(ValueError, match="watches"):
        SkipStepGuard().check(3.0)  # both signals by default: the gradient norm is needed
    assert SkipStepGuard(signals=("loss",)).check(float("nan")) == "non-finite"


def test_skip_step_state_round_trips_through_json():
    guard = SkipStepGuard(window=16, warmup=4)
    for x in _wobble(9) + [99.0]:
        guard.check(x, x)
    state = json.loads(json.dumps(guard.state_dict()))
    again = SkipStepGuard(window=16, warmup=4)
    again.load_state_dict(state)
    assert again.state_dict() == guard.state_dict() and again.skipped == 1
    for x in (3.02, 7.0, 2.99):
        assert again.check(x, x) == guard.check(x, x)


@pytest.mark.parametrize("kw", [{"sigma": 0}, {"window": 8, "warmup": 9}, {"warmup": 1}, {"signals": ("lr",)}])
def test_skip_step_refuses_bad_settings(kw):
    with pytest.raises(ValueError):
        SkipStepGuard(**kw)


# --- ZClip -----------------------------------------------------------------------------------------


def test_zclip_against_a_hand_computation():
    z = ZClip(alpha=0.5, z_thresh=2.0, warmup=3)
    # warm-up: norms collected, nothing clipped; mean 2, population variance 2/3
    assert [z.step(g) for g in (1.0, 2.0, 3.0)] == [None, None, None]
    mean, var = 2.0, 2 / 3
    assert (z.mean, z.var) == (pytest.approx(mean), pytest.approx(var))
    # an ordinary norm: z = 0.5 / 0.816 < 2, no clip; EMA with the raw value, var with the updated mean
    assert z.step(2.5) is None
    mean = 0.5 * mean + 0.5 * 2.5
    var = 0.5 * var + 0.5 * (2.5 - mean) ** 2
    assert (z.mean, z.var) == (pytest.approx(mean), pytest.approx(var))
    # a spike: z > 2, clipped to mean + z_thresh * std / (z / z_thresh); the EMA takes the clipped value
    g = 10.0
    std = math.sqrt(var)
    zs = (g - mean) / (std + 1e-6)
    want = mean + 2.0 * std / (zs / 2.0)
    assert zs > 2 and z.clip_value(g) == pytest.approx(want) and z.z_score(g) == pytest.approx(zs)
    assert z.step(g) == pytest.approx(want) and z.clipped == 1
    mean2 = 0.5 * mean + 0.5 * want
    var2 = 0.5 * var + 0.5 * (want - mean2) ** 2
    assert (z.mean, z.var) == (pytest.approx(mean2), pytest.approx(var2))
    # clip_value alone changes nothing
    before = z.state_dict()
    z.clip_value(100.0)
    assert z.state_dict() == before


def test_zclip_options_cap_and_skip_update():
    def warmed(**kw):
        z = ZClip(warmup=4, **kw)
        for g in (1.0, 1.2, 0.8, 1.0):  # mean 1, population std sqrt(0.02)
            z.update(g)
        return z

    std = math.sqrt(0.02)
    assert warmed(clip_option="mean").clip_value(5.0) == pytest.approx(1.0)
    assert warmed(clip_option="threshold").clip_value(5.0) == pytest.approx(1.0 + 2.5 * std)
    assert warmed().clip_value(1.3) is None  # z = 2.1 < 2.5
    # the fixed cap: during warm-up it alone clips; afterwards the smaller of the two
    cold = ZClip(warmup=4, max_norm=0.5)
    assert cold.clip_value(0.7) == 0.5 and cold.clip_value(0.4) is None
    assert warmed(max_norm=0.9).clip_value(1.1) == 0.9  # no spike, over the cap
    assert warmed(max_norm=3.0).clip_value(5.0) == pytest.approx(warmed().clip_value(5.0))  # spike under the cap
    # the EMA follows the clipped value by default, and stays put with skip_update_on_spike
    moving, still = warmed(), warmed(skip_update_on_spike=True)
    moving.update(5.0), still.update(5.0)
    assert still.mean == pytest.approx(1.0) and moving.mean > 1.0 and moving.clipped == still.clipped == 1
    nan = warmed()
    assert nan.clip_value(float("inf")) is None
    nan.update(float("nan"))
    assert nan.state_dict() == warmed().state_dict()  # non-finite norms are not recorded


def test_zclip_state_round_trips_mid_warmup_and_after():
    series = [1.0, 1.1, 0.9, 1.05, 0.95, 4.0, 1.0, 1.02]
    for cut in (2, 6):
        a = ZClip(warmup=4)
        for g in series[:cut]:
            a.step(g)
        b = ZClip(warmup=4)
        b.load_state_dict(json.loads(json.dumps(a.state_dict())))
        assert [a.step(g) for g in series[cut:]] == [b.step(g) for g in series[cut:]]
        assert a.state_dict() == b.state_dict()
    assert set(a.state_dict()) == {"buffer", "mean", "var", "clipped"}


@pytest.mark.parametrize("kw", [{"alpha": 1.0}, {"z_thresh": 0}, {"warmup": 0}, {"clip_option": "percentile"}])
def test_zclip_refuses_bad_settings(kw):
    with pytest.raises(ValueError):
        ZClip(**kw)
