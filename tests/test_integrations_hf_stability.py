"""The stability toolkit in `SLWTrainer` (issue 25): z-loss on the model's logits, kept out of the logged loss and
the loss ratio; skip-step and ZClip around the optimizer's step with the trainer's semantics; their state in the
checkpoint's scheduler.pt, so that a resume continues them exactly."""

import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from test_integrations_hf import SAVE_AT, make_trainer, step_rows  # noqa: E402

from seqwarm.errors import ConfigError  # noqa: E402
from seqwarm.guards import ZClip  # noqa: E402
from seqwarm.integrations.stability import StepGuard  # noqa: E402

SPIKE_AT = 6  # the step whose loss the test multiplies
GUARD = dict(skip_spikes="loss", skip_window=4, skip_warmup=3, grad_clip_mode="zscore", zclip_warmup=3)
SHORT = dict(max_steps=3, save_strategy="no", eval_strategy="no")


def spike(trainer, at: int, factor: float = 1_000.0):
    """Multiply the training loss of step `at` (its micro-batches) by `factor`: a scripted spike."""
    original = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        loss = original(model, inputs, *args, **kwargs)
        return loss * factor if model.training and trainer.state.global_step == at - 1 else loss

    trainer.compute_loss = compute_loss
    return trainer


def test_z_loss_joins_the_gradient_not_the_logged_loss(tmp_path):
    plain = make_trainer(tmp_path / "plain", **SHORT)
    plain.train()
    with_z = make_trainer(tmp_path / "z", stability={"z_loss": 1e-2}, **SHORT)
    with_z.train()
    a, b = step_rows(plain), step_rows(with_z)
    # Step 1 starts from the same weights: the same loss and loss ratio to the bit; from step 2 the weights differ.
    assert (b[1]["loss"], b[1]["loss_ratio"]) == (a[1]["loss"], a[1]["loss_ratio"])
    assert b[2]["loss"] != a[2]["loss"] and "aux/z_loss" not in a[1]
    # At initialisation the logits are near 0: log Z is about ln V, so the z-loss about coef x (ln 100)^2.
    assert b[1]["aux/z_loss"] == pytest.approx(1e-2 * math.log(100) ** 2, rel=0.05)


def test_bad_settings_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="TrainingArguments.max_grad_norm"):
        make_trainer(tmp_path / "a", stability={"step_guard": StepGuard(**GUARD)}, **SHORT)  # the default 1.0
    with pytest.raises(ConfigError, match="train.z_loss"):
        make_trainer(tmp_path / "b", stability={"z_loss": -1.0}, **SHORT)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf-guard")
    trainer = spike(make_trainer(out / "run", stability={"step_guard": StepGuard(**GUARD)}, max_grad_norm=0), SPIKE_AT)
    trainer.train()
    return trainer, out


def test_a_scripted_spike_is_skipped_as_the_trainer_skips(guarded):
    trainer, _ = guarded
    steps, guard = step_rows(trainer), trainer.step_guard
    assert (
        guard.skip_guard.skipped == 1 and steps[SPIKE_AT]["spike_skips"] == 1 == steps[SPIKE_AT - 1]["spike_skips"] + 1
    )
    # The step counts, its tokens do not; the next step trains at the next step's length, with the tokens it adds.
    assert steps[SPIKE_AT]["tokens"] == steps[SPIKE_AT - 1]["tokens"]
    assert steps[SPIKE_AT + 1]["tokens"] > steps[SPIKE_AT]["tokens"]


def test_zclip_clips_as_a_hand_zclip_and_the_state_resumes_exactly(guarded, tmp_path):
    trainer, out = guarded
    steps = step_rows(trainer)
    hand = ZClip(alpha=0.97, z_thresh=2.5, warmup=3)
    for step in sorted(steps):
        if step != SPIKE_AT:  # the skipped step's norm never reaches ZClip (skip-step decides first)
            hand.step(steps[step]["grad_norm"])
    state = trainer.step_guard.zclip.state_dict()
    assert state["clipped"] == hand.clipped
    assert (state["mean"], state["var"]) == (pytest.approx(hand.mean, rel=1e-6), pytest.approx(hand.var, rel=1e-5))

    saved = torch.load(out / "run" / f"checkpoint-{SAVE_AT}" / "scheduler.pt", weights_only=True)
    assert saved["slw"]["attached"]["step_guard"]["settings"] == trainer.step_guard.settings
    resumed = spike(
        make_trainer(tmp_path / "resumed", stability={"step_guard": StepGuard(**GUARD)}, max_grad_norm=0), 0
    )
    resumed.train(resume_from_checkpoint=str(out / "run" / f"checkpoint-{SAVE_AT}"))
    # The run resumed after the spike carries its record and both histories, as the uninterrupted run has them.
    a, b = resumed.step_guard.state_dict(), trainer.step_guard.state_dict()
    assert (
        a["skip_guard"]["skipped"] == b["skip_guard"]["skipped"] == 1 and a["zclip"]["clipped"] == b["zclip"]["clipped"]
    )
    assert a["skip_guard"]["history"]["loss"] == pytest.approx(b["skip_guard"]["history"]["loss"], rel=1e-5)
    assert (a["zclip"]["mean"], a["zclip"]["var"]) == (
        pytest.approx(b["zclip"]["mean"], rel=1e-5),
        pytest.approx(b["zclip"]["var"], rel=1e-4),
    )
