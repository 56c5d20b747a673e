"""The stability toolkit with `SLWCallback` (issue 25): skip-step and ZClip around the optimizer's step (Lightning's
closure run inside), their state in Lightning checkpoints; z-loss added by the module through `gradient_only`."""

import copy

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning")

from test_integrations_lightning import LitGPT, fit  # noqa: E402

from seqwarm.errors import ConfigError  # noqa: E402
from seqwarm.guards import ZClip  # noqa: E402
from seqwarm.integrations.stability import StepGuard, gradient_only, z_loss  # noqa: E402
from seqwarm.loss import IGNORE_INDEX  # noqa: E402

SPIKE_AT = 6
GUARD = dict(skip_spikes="loss", skip_window=4, skip_warmup=3, grad_clip_mode="zscore", zclip_warmup=3)


class Spiking(LitGPT):
    """The loss of step SPIKE_AT (both micro-batches) multiplied by 1,000: a scripted spike."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 1_000 if self.trainer.global_step == SPIKE_AT - 1 else loss


class WithLogits(LitGPT):
    """The loss from the logits, as a user's model gives them, with the z-loss added through gradient_only."""

    def __init__(self, z: float):
        super().__init__()
        self.z = z

    def forward(self, inputs, targets):
        logits = self.model(inputs.clamp(min=0)).float()  # no targets: the logits
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return ce + gradient_only(z_loss(logits, targets, self.z, shift=False)) if self.z else ce


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    out = tmp_path_factory.mktemp("lightning-guard")
    guard = StepGuard(**GUARD)
    trainer, slw, steps = fit(out, model=Spiking(), step_guard=guard)
    return guard, slw, steps, out


def test_a_scripted_spike_is_skipped_with_its_tokens_off_the_clock(guarded):
    guard, _, steps, _ = guarded
    assert (
        guard.skip_guard.skipped == 1 and steps[SPIKE_AT]["spike_skips"] == 1 == steps[SPIKE_AT - 1]["spike_skips"] + 1
    )
    assert steps[SPIKE_AT]["tokens"] == steps[SPIKE_AT - 1]["tokens"] < steps[SPIKE_AT + 1]["tokens"]


def test_zclip_clips_as_a_hand_zclip(guarded):
    guard, _, steps, _ = guarded
    hand = ZClip(alpha=0.97, z_thresh=2.5, warmup=3)
    for step in sorted(steps):
        if step != SPIKE_AT:  # skip-step decides first: a skipped norm never reaches ZClip
            hand.step(float(steps[step]["grad_norm"]))
    state = guard.zclip.state_dict()
    assert state["clipped"] == hand.clipped
    assert (state["mean"], state["var"]) == (pytest.approx(hand.mean, rel=1e-6), pytest.approx(hand.var, rel=1e-5))


def test_the_guards_state_is_in_lightning_checkpoints_and_resumes(guarded, tmp_path):
    guard, slw, _, out = guarded
    (ckpt,) = (out / "ckpt").glob("*step=8.ckpt")
    saved = torch.load(ckpt, weights_only=True)["callbacks"]["SLWCallback"]["slw"]["attached"]["step_guard"]
    assert saved["skip_guard"]["skipped"] == 1  # the spike at step 6 is in the step-8 checkpoint
    resumed = StepGuard(**GUARD)
    fit(tmp_path, model=LitGPT(), step_guard=resumed, ckpt_path=str(ckpt))
    a, b = resumed.state_dict(), guard.state_dict()
    assert a["skip_guard"]["skipped"] == 1 and a["zclip"]["clipped"] == b["zclip"]["clipped"]
    assert a["zclip"]["mean"] == pytest.approx(b["zclip"]["mean"], rel=1e-5)
    with pytest.raises(ConfigError, match="gradient_clip_val"):
        fit(tmp_path / "clip", model=LitGPT(), step_guard=StepGuard(**GUARD), gradient_clip_val=1.0)


def test_z_loss_through_gradient_only_stays_out_of_the_loss_ratio(tmp_path):
    runs = {}
    for z in (0.0, 1e-2):
        model = WithLogits(z)
        _, slw, _ = fit(tmp_path / str(z), model=model, max_steps=1)
        runs[z] = (copy.deepcopy(slw.loss_ratio.state_dict()), [p.detach().clone() for p in model.parameters()])
    assert runs[0.0][0] == runs[1e-2][0]  # the loss the ratio saw: the cross-entropy, to the bit
    assert not all(torch.equal(a, b) for a, b in zip(runs[0.0][1], runs[1e-2][1]))  # the z-loss moved the weights
