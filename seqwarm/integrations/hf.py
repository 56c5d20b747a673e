"""Sequence Length Warmup in Hugging Face's `transformers.Trainer` (docs/INTEGRATIONS.md).

An existing script changes two lines, the import and the Trainer's class:

    from seqwarm.integrations import SequenceLengthWarmup
    from seqwarm.integrations.hf import SLWTrainer

    slw = SequenceLengthWarmup(seqlen_start=8, seqlen_end=1024, duration=3_000,
                               lr=6e-4, min_lr=6e-5, warmup_steps=3_000, max_tokens=157_000_000_000)
    trainer = SLWTrainer(slw=slw, model=model, args=args, train_dataset=train, eval_dataset=val)
    trainer.train()                       # trainer.train(resume_from_checkpoint=True) continues the schedule

`SLWTrainerMixin` is the same behaviour for a Trainer subclass of your own (`class T(SLWTrainerMixin, SFTTrainer)`).

Why a Trainer subclass and not a collator: the Trainer's data loader collates ahead of the step that
trains a batch (accelerate fetches one batch ahead, workers prefetch more), so a collator cannot know
the step a batch belongs to. `get_batch_samples`, where the Trainer draws the micro-batches of one
optimizer step, can: the length is a function of the step (Section 4), read from the clock there.
"""

from __future__ import annotations

import torch
from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from seqwarm.errors import ConfigError
from seqwarm.integrations.loop import SequenceLengthWarmup, dict_target_tokens
from seqwarm.integrations.stability import StepGuard, check_z_loss, gradient_only, z_loss

logger = logging.get_logger(__name__)


class SLWTrainerMixin:
    """Adds SLW to a `transformers.Trainer` (sub)class: truncation, token clock, LR, stopping, logs, resume.

    - every training batch is cut to the step's length; evaluation batches stay full length;
    - the target tokens of the step (all micro-batches of its gradient accumulation, summed over the
      processes) tick the clock;
    - the LR is the token-wise schedule of `slw` (the Trainer's `learning_rate`, `lr_scheduler_type`
      and warmup are not used; a `warmup_steps` there is refused);
    - training stops at `slw`'s `max_tokens` (or `max_steps`), with the final log, save and evaluation
      the Trainer makes at its own `max_steps`;
    - each training log row gets `seqlen`, `tokens`, `loss_ratio` (the largest since the last row) and
      Adam's `adam/var_l1`, `adam/var_max`, `adam/mom_l1`;
    - `slw`'s state goes into the checkpoint's scheduler.pt, so `resume_from_checkpoint` continues the
      schedule exactly.

    The stability toolkit (docs/STABILITY.md), off by default: `z_loss=1e-4` adds PaLM's z-loss on the model's
    logits to the gradient, never to the logged loss or the loss ratio (`aux/z_loss` in the log rows);
    `step_guard=StepGuard(...)` wraps the optimizer's step with skip-step and/or ZClip, its state in scheduler.pt.
    """

    def __init__(
        self, *args, slw: SequenceLengthWarmup, step_guard: StepGuard | None = None, z_loss: float = 0.0, **kwargs
    ):
        if not isinstance(slw, SequenceLengthWarmup):
            raise ConfigError(f"slw: expected a seqwarm SequenceLengthWarmup, got {type(slw).__name__}")
        slw.fixed_batch("the Hugging Face Trainer (per_device_train_batch_size)")
        optimizers = kwargs.get("optimizers") or (None, None)
        if optimizers[1] is not None:
            raise ConfigError(
                "optimizers: a scheduler was given, but SLW drives the LR over tokens; pass (optimizer, None)"
            )
        super().__init__(*args, **kwargs)
        if getattr(self.args, "warmup_steps", 0):
            raise ConfigError(
                f"TrainingArguments.warmup_steps ({self.args.warmup_steps}): SLW owns the LR schedule; "
                "give warmup_steps or warmup_tokens to SequenceLengthWarmup instead"
            )
        if self.args.n_gpu > 1:
            raise ConfigError(
                f"TrainingArguments: {self.args.n_gpu} GPUs in one process (DataParallel) are not supported with "
                "SLWTrainer; start one process per GPU (torchrun, accelerate launch)"
            )
        if getattr(self, "is_deepspeed_enabled", False):
            raise ConfigError(
                "TrainingArguments.deepspeed: not supported with SLWTrainer (DeepSpeed owns the LR scheduler)"
            )
        if step_guard is not None and self.args.max_grad_norm:
            raise ConfigError(
                f"TrainingArguments.max_grad_norm ({self.args.max_grad_norm}): the step guard reads the raw gradient "
                "norm and clips itself; set max_grad_norm=0 and give the cap as StepGuard(grad_clip=...)"
            )
        self.slw, self.step_guard, self.z_loss = slw, step_guard, check_z_loss(z_loss)
        if step_guard is not None:
            slw.attach("step_guard", step_guard)
        self._slw_z = None  # the z-loss since the last log row, summed over micro-batches, on the device
        self._slw_loss = None  # the open step's loss, summed over its micro-batches, on the device
        self._slw_callback = SLWCallback(self)
        self.add_callback(self._slw_callback)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # The micro-batches of one optimizer step, truncated (and counted) as they are drawn, before the
        # Trainer counts its `num_items_in_batch`, so the loss is normalised over the tokens trained.
        truncated = (self.slw.truncate(batch) for batch in epoch_iterator)
        batch_samples, num_items = super().get_batch_samples(truncated, num_batches, device)
        if num_items is not None and batch_samples:
            # The Trainer divides the summed loss by num_items_in_batch. transformers counts position 0 of each
            # row for a model whose loss_type it does not map (GPT-2's), though the causal loss never predicts it:
            # B x seqlen over a sum of B x (seqlen - 1) targets, a bias that changes with the length. The
            # clock's count is the loss's own.
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                count = self.slw.step_tokens  # summed over the processes, as the Trainer's
            else:
                count = sum(dict_target_tokens(batch) for batch in batch_samples)
            num_items = torch.as_tensor(count, device=device)
        return batch_samples, num_items

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            self.lr_scheduler = self.slw.scheduler(optimizer)
            if self.step_guard is not None:  # the step's loss so far is the micro-batches' sum, as the Trainer logs it
                reduce = (lambda x: self.accelerator.reduce(x, reduction="mean")) if self.args.world_size > 1 else None
                self.step_guard.wrap(optimizer, step_loss=lambda: self._slw_loss, reduce=reduce)
            self._created_lr_scheduler = True  # rebuilt on a second train(), as the Trainer's own
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (self.z_loss and model.training):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        # Normalised as the Trainer normalises the model's loss: by the step's target count when the model takes
        # num_items_in_batch, else a mean over the micro-batch (which training_step then divides by the accumulation).
        per_step = num_items_in_batch is not None and self.model_accepts_loss_kwargs
        labels, shift = (
            (inputs["shift_labels"], False) if inputs.get("shift_labels") is not None else (inputs["labels"], True)
        )
        z = z_loss(
            outputs["logits"], labels, self.z_loss, shift=shift, num_items=num_items_in_batch if per_step else None
        )
        if per_step and self.args.average_tokens_across_devices and self.args.world_size > 1:
            z = z * self.accelerator.num_processes  # as the Trainer scales the loss over a global count
        logged = z.detach() if per_step else z.detach() / self.current_gradient_accumulation_steps
        self._slw_z = logged if self._slw_z is None else self._slw_z + logged
        # The gradient of ce + z, the value of ce: the loss ratio and the logged loss stay the cross-entropy.
        loss = loss + gradient_only(z)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._slw_loss = loss if self._slw_loss is None else self._slw_loss + loss
        return loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # a training row; not an evaluation's or the final summary
            logs.update(self._slw_callback.log_row(self.optimizer))
            if self.step_guard is not None:
                logs.update(self.step_guard.metrics())
            if self._slw_z is not None:  # the mean per step since the last row, as `loss` is
                logs["aux/z_loss"] = float(self._slw_z.item()) / max(self._slw_callback.steps_since_log, 1)
                self._slw_z = None
            self._slw_callback.steps_since_log = 0
        super().log(logs, *args, **kwargs)

    def _slw_take_step_loss(self) -> float | None:
        """The last step's loss, averaged over processes as the Trainer logs it (None if no step ran)."""
        loss, self._slw_loss = self._slw_loss, None
        if loss is None:
            return None
        if self.accelerator.num_processes > 1:
            loss = self.accelerator.reduce(loss, reduction="mean")
        return float(loss.item())


class SLWTrainer(SLWTrainerMixin, Trainer):
    """`transformers.Trainer` with Sequence Length Warmup: `SLWTrainer(slw=..., model=..., args=..., ...)`."""


class SLWCallback(TrainerCallback):
    """The per-step part of `SLWTrainerMixin`: it closes skipped steps, keeps the loss ratio and the guard,
    stops at max_tokens and checks that a resume found the SLW state. Added by the mixin; not for use alone."""

    def __init__(self, trainer: SLWTrainerMixin):
        self.trainer, self.slw = trainer, trainer.slw
        self._ratio: float | None = None  # the largest loss ratio since the last log row
        self.steps_since_log = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step != self.slw.clock.step:
            raise ConfigError(
                f"resume_from_checkpoint: the Trainer is at step {state.global_step} but SLW's clock at step "
                f"{self.slw.clock.step}; resume from a checkpoint an SLWTrainer saved (its scheduler.pt holds the SLW "
                "state), with a fresh SequenceLengthWarmup"
            )

    def on_step_end(self, args, state, control, **kwargs):
        slw = self.slw
        if slw.open_step:  # the Trainer skipped the update (fp16 overflow), so it did not step the scheduler
            slw.step(applied=False)
        self.steps_since_log += 1
        loss = self.trainer._slw_take_step_loss()
        if loss is not None:
            # The Trainer has applied this update already; stopping here keeps the last checkpoint the
            # last finite state (no final save of non-finite weights).
            ratio = slw.observe_loss(loss, state.global_step)
            self._ratio = ratio if self._ratio is None else max(self._ratio, ratio)
        if slw.finished:
            # What the Trainer does at its own max_steps (DefaultFlowCallback): last log, save, evaluation.
            control.should_training_stop = True
            control.should_log = True
            if args.save_strategy == "steps":
                control.should_save = True
            if args.eval_strategy == "steps":
                control.should_evaluate = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if not self.slw.finished:
            logger.warning(
                f"seqwarm: training ended at step {state.global_step} with {self.slw.clock.tokens:,} tokens, before "
                "SLW's max_tokens/max_steps: raise TrainingArguments.max_steps (or num_train_epochs)"
            )

    def log_row(self, optimizer) -> dict[str, float]:
        row = {"seqlen": self.slw.metrics()["seqlen"], "tokens": self.slw.clock.tokens}
        if self._ratio is not None:
            row["loss_ratio"] = self._ratio
            self._ratio = None
        row.update(self.slw.adam_statistics(optimizer) or {})
        return row


__all__ = ["SLWCallback", "SLWTrainer", "SLWTrainerMixin"]
