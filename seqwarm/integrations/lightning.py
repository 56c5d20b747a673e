"""Sequence Length Warmup in PyTorch Lightning's `Trainer` (docs/INTEGRATIONS.md).

An existing script adds a callback and a mixin:

    from seqwarm.integrations import SequenceLengthWarmup
    from seqwarm.integrations.lightning import SLWCallback, SLWModuleMixin

    class LitGPT(SLWModuleMixin, L.LightningModule):   # training_step gets batches cut to the step's length
        ...

    slw = SequenceLengthWarmup(seqlen_start=8, seqlen_end=1024, duration=3_000,
                               lr=6e-4, min_lr=6e-5, warmup_steps=3_000, max_tokens=157_000_000_000)
    trainer = L.Trainer(callbacks=[SLWCallback(slw)], max_steps=400_000, accumulate_grad_batches=4)
    trainer.fit(LitGPT(), train_loader, val_loader)    # trainer.fit(..., ckpt_path=...) continues the schedule

Why a mixin besides the callback: a Lightning callback sees a batch but cannot replace it, and the data
loader fetches ahead of the step that trains a batch (Lightning's fetcher prefetches one), so neither a
collator nor the loader knows the batch's step. The module's `on_before_batch_transfer` runs once per
training batch, in the step that trains it, with the clock of that step: the cut happens there (before
the copy to the device, so only the kept positions are copied).
"""

from __future__ import annotations

import inspect

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from seqwarm.errors import ConfigError
from seqwarm.integrations.loop import SequenceLengthWarmup
from seqwarm.integrations.stability import StepGuard


class SLWModuleMixin:
    """Mix into a `LightningModule` (before it: `class M(SLWModuleMixin, L.LightningModule)`): every training batch
    is cut to the step's length and its target tokens counted, as `SequenceLengthWarmup.truncate` does (a tensor of
    full-length rows becomes `(inputs, targets)`, a dict stays a dict). Validation, test and predict batches stay
    full length. An `on_before_batch_transfer` of your own must call `super()` to keep this."""

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        if self.trainer.training:
            slw = getattr(self, "_seqwarm_slw", None)
            if slw is None:
                raise ConfigError(
                    "Trainer.callbacks: a SLWModuleMixin module needs seqwarm's SLWCallback(slw) among the callbacks"
                )
            batch = slw.truncate(batch)
        return batch


class SLWCallback(pl.Callback):
    """SLW in a Lightning `Trainer`, with `SLWModuleMixin` on the module: token clock, LR, stopping, logs, resume.

    - the target tokens of each optimizer step (all micro-batches of `accumulate_grad_batches`, summed over the
      processes) tick the clock;
    - the LR of every param group is `slw`'s token-wise schedule (`slw.scheduler(optimizer)`, set in a pre-hook of
      the optimizer's step); `configure_optimizers` returns the optimizer alone (an LR scheduler there is refused);
    - training stops at `slw`'s `max_tokens` (or `max_steps`) through `trainer.should_stop`;
    - `seqlen`, `tokens` and `lr` are logged every step, `loss_ratio` (the largest since the last written row) and
      Adam's `adam/var_l1`, `adam/var_max`, `adam/mom_l1` at the steps the logger writes (`log_every_n_steps`);
    - `slw`'s state is the callback's state in Lightning checkpoints, so `fit(..., ckpt_path=...)` continues the
      schedule exactly.

    `step_guard=StepGuard(...)` (docs/STABILITY.md) wraps the optimizer's step with skip-step and/or ZClip; it runs
    Lightning's closure (the last micro-batch) itself, so it sees the step's whole loss; its state is in the
    callback's. For z-loss, add `gradient_only(z_loss(logits, targets, coef, shift=False))` to the loss your
    `training_step` returns (seqwarm.integrations.stability): the loss ratio then stays the cross-entropy.
    """

    def __init__(self, slw: SequenceLengthWarmup, step_guard: StepGuard | None = None):
        if not isinstance(slw, SequenceLengthWarmup):
            raise ConfigError(f"slw: expected a seqwarm SequenceLengthWarmup, got {type(slw).__name__}")
        slw.fixed_batch("Lightning's DataLoader")
        self.slw, self.step_guard = slw, step_guard
        if step_guard is not None:
            slw.attach("step_guard", step_guard)
        self.scheduler = None  # the TokenLRScheduler, built once the Trainer has set up its optimizer
        self._seen_step = 0  # trainer.global_step when the clock last ticked
        self._loss: torch.Tensor | None = None  # the open step's loss, summed over its micro-batches, on the device
        self._ratio: float | None = None  # the largest loss ratio since the last written row

    # --- set-up: refuse what would fight SLW, before any step -------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, SLWModuleMixin):
            raise ConfigError(
                f"model: {type(pl_module).__name__} does not mix in SLWModuleMixin, so its training batches would not "
                "be cut or counted; declare it as class M(SLWModuleMixin, LightningModule)"
            )
        if not pl_module.automatic_optimization:
            raise ConfigError(
                "automatic_optimization: False is not supported by SLWCallback; with manual optimization use "
                "SequenceLengthWarmup directly (slw.truncate, slw.scheduler) in training_step"
            )
        if "dataloader_iter" in inspect.signature(pl_module.training_step).parameters:
            raise ConfigError(
                "training_step(dataloader_iter): its batches skip on_before_batch_transfer, where SLW cuts them; "
                "take a batch argument, or call slw.truncate yourself without SLWCallback"
            )
        pl_module._seqwarm_slw = self.slw

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ConfigError(
                f"configure_optimizers: SLWCallback drives one optimizer's LR, got {len(trainer.optimizers)}"
            )
        if trainer.lr_scheduler_configs:
            raise ConfigError(
                "configure_optimizers: an LR scheduler was returned, but SLW drives the LR over tokens; "
                "return the optimizer alone"
            )
        if trainer.global_step != self.slw.clock.step:
            raise ConfigError(
                f"ckpt_path: the Trainer is at step {trainer.global_step} but SLW's clock at step "
                f"{self.slw.clock.step}; resume from a checkpoint saved with SLWCallback (it holds the SLW state), "
                "with a fresh SequenceLengthWarmup"
            )
        self.scheduler = self.slw.scheduler(trainer.optimizers[0])
        if self.step_guard is not None:
            if trainer.gradient_clip_val:
                raise ConfigError(
                    f"Trainer.gradient_clip_val ({trainer.gradient_clip_val}): the step guard reads the raw gradient "
                    "norm and clips itself; leave it unset and give the cap as StepGuard(grad_clip=...)"
                )
            # The step's loss: the earlier micro-batches' (summed in on_train_batch_end) plus the closure's.
            reduce = (lambda x: trainer.strategy.reduce(x, reduce_op="mean")) if trainer.world_size > 1 else None
            self.step_guard.wrap(trainer.optimizers[0], step_loss=lambda: self._loss, reduce=reduce)
        self._seen_step = trainer.global_step
        self._loss = None

    # --- the step ---------------------------------------------------------------------------------------

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # Lightning divides each micro-batch's loss by accumulate_grad_batches: their sum is the step's loss.
            loss = loss.detach()
            self._loss = loss if self._loss is None else self._loss + loss
        if trainer.global_step == self._seen_step:
            return  # a micro-batch of gradient accumulation: the step is still open
        # Lightning stepped the optimizer for this batch; the pre-hook set its LR (or a GradScaler skipped it, and
        # the step ticks with 0 tokens).
        self.scheduler.step()
        self._seen_step = trainer.global_step
        slw = self.slw
        step_loss = self._take_step_loss(trainer)
        if step_loss is not None:
            ratio = slw.observe_loss(step_loss, trainer.global_step)  # DivergedError when the guard stops
            self._ratio = ratio if self._ratio is None else max(self._ratio, ratio)
        if slw.finished:
            trainer.should_stop = True
        self._log(trainer, pl_module)

    def _take_step_loss(self, trainer: pl.Trainer) -> float | None:
        """The step's loss, averaged over processes (one sync per step); None if training_step gave none."""
        loss, self._loss = self._loss, None
        if loss is None:
            return None
        return float(trainer.strategy.reduce(loss, reduce_op="mean").item())

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        slw = self.slw
        row = {"seqlen": slw.metrics()["seqlen"], "tokens": slw.clock.tokens, "lr": self.scheduler.get_last_lr()[0]}
        # Lightning writes a row when (its step) % log_every_n_steps == 0 or when stopping; the Adam statistics (a
        # pass over the optimizer's state) are computed for those rows only, and the loss ratio keeps its maximum.
        every = trainer.log_every_n_steps
        if every and (trainer.global_step % every == 0 or trainer.should_stop):
            if self._ratio is not None:
                row["loss_ratio"], self._ratio = self._ratio, None
            row.update(slw.adam_statistics(trainer.optimizers[0]) or {})
            row.update(self.step_guard.metrics() if self.step_guard is not None else {})
        # float64 on the CPU: Lightning would store a Python number as float32, which rounds a token count above 2**24
        # and the LR; the values are the same on every process, so no sync.
        values = {k: torch.tensor(float(v), dtype=torch.float64) for k, v in row.items()}
        pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.slw.finished:
            rank_zero_warn(
                f"seqwarm: training ended at step {trainer.global_step} with {self.slw.clock.tokens:,} tokens, before "
                "SLW's max_tokens/max_steps: raise Trainer(max_steps=...) (or max_epochs)"
            )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and getattr(pl_module, "_seqwarm_slw", None) is self.slw:
            del pl_module._seqwarm_slw

    # --- state in Lightning checkpoints -----------------------------------------------------------------

    def state_dict(self) -> dict:
        # ModelCheckpoint may save amid a step's gradient accumulation (on a resume, on a timer): the checkpoint then
        # holds the clock at the step's start, as it holds none of that step's gradients.
        return {"slw": self.slw.state_dict(drop_open_step=True)}

    def load_state_dict(self, state_dict: dict) -> None:
        if "slw" not in state_dict:
            raise ConfigError("ckpt_path: the checkpoint's SLWCallback state has no 'slw' entry")
        self.slw.load_state_dict(state_dict["slw"])


__all__ = ["SLWCallback", "SLWModuleMixin"]
