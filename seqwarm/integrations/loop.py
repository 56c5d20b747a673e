"""Sequence Length Warmup for a training loop that is not seqwarm's (docs/API.md, docs/INTEGRATIONS.md).

`SequenceLengthWarmup` puts the method's three parts behind one object: the step's length (a pure
function of the step, `seqwarm.curriculum.SeqlenSchedule`), the truncation of a batch to it, and one
token clock (`seqwarm.schedule.Clock`) that counts the target tokens actually trained and so drives
the LR decay (Appendix A.2) and the stopping rule (Section 5.1). A step of the user's loop is:

    batch = slw.truncate(batch)   # this step's length; its target tokens are counted
    ... forward, backward (each micro-batch of the step goes through truncate) ...
    optimizer.step()              # the scheduler's pre-hook sets the LR from the step's own tokens
    scheduler.step()              # the clock ticks (or slw.step() without a scheduler)

Two batch forms, with their conventions:

- a tensor of full-length rows `(B, seqlen_end + 1)`: `truncate` returns `(inputs, targets)` of
  `(B, seqlen)`, as `seqwarm.curriculum.truncate`; a target equal to `IGNORE_INDEX` is not counted.
- a dict in Hugging Face's form (`input_ids`, `attention_mask`, `labels`, `position_ids`, ...): `labels`
  are aligned with `input_ids` and the model shifts them (position i predicts `labels[i + 1]`), so a row
  of `seqlen` inputs trains at most `seqlen - 1` targets: the tokens counted are `labels[:, 1:] != -100`
  (`shift_labels`, where a collator gives them, are already shifted and count as they are); without
  labels, the positions 1.. whose `attention_mask` is set. Every tensor of shape `(B, L, ...)` (or
  `(1, L, ...)`) is cut to its first `seqlen` positions, so masks, labels and positions stay aligned.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LRScheduler

from seqwarm.config import Config, config_from_dict
from seqwarm.curriculum import Curriculum, StepSpec, melt, truncate
from seqwarm.curriculum.config import length_warmup_section
from seqwarm.errors import ConfigError, DataError, DivergedError
from seqwarm.integrations.batches import dict_target_tokens, melt_dict, truncate_dict
from seqwarm.loss import IGNORE_INDEX
from seqwarm.monitor import ADAM_KEYS, LossRatio, NonFiniteGuard, adam_statistics
from seqwarm.rundir import resume_changes
from seqwarm.schedule import Clock, StepPlan

STATE_FORMAT = "seqwarm-slw-v1"
"""The layout of `SequenceLengthWarmup.state_dict()`; another one is refused, not misread."""

# The constructor's arguments, by the config section that checks them (so errors name `section.field`).
CURRICULUM_ARGS = ("pacing", "seqlen_start", "seqlen_end", "duration", "multiple_of", "root_degree", "stages")
TRAIN_ARGS = (
    "lr",
    "min_lr",
    "warmup_steps",
    "warmup_tokens",
    "lr_decay_style",
    "lr_decay_unit",
    "lr_decay_tokens",
    "lr_decay_steps",
    "max_tokens",
    "max_steps",
)
MONITOR_ARGS = ("on_nonfinite", "max_consecutive_skips")
BATCH_ARGS = ("global_batch_size", "micro_batch_size")
"""The batch a config gives (`from_config`): the step plan's `batch_size`; the constructor leaves it at the defaults."""


class SequenceLengthWarmup:
    """SLW and its token clock for any PyTorch loop: length, truncation, token count, LR, stopping, state.

    Built from plain arguments, checked by seqwarm's config sections (a bad one raises a ConfigError
    naming it as `curriculum.duration`, `train.max_tokens`, ...):

        slw = SequenceLengthWarmup(seqlen_start=8, seqlen_end=1024, duration=3_000,
                                   lr=6e-4, min_lr=6e-5, warmup_steps=3_000, max_tokens=157_000_000_000)

    or from a seqwarm config (`SequenceLengthWarmup.from_config(load_config("gpt2-117m-bsz512-slw"))`).
    `process_group`: the data-parallel processes whose batches make one step (default: all of them when
    torch.distributed is initialized); their token counts are summed once per step.
    """

    def __init__(
        self,
        *,
        seqlen_start: int,
        seqlen_end: int,
        duration: int | None = None,
        multiple_of: int = 8,
        pacing: str = "linear",
        root_degree: float = 2.0,
        stages: list[list[int]] | None = None,
        lr: float = 6e-4,
        min_lr: float = 6e-5,
        warmup_steps: int = 0,
        warmup_tokens: int = 0,
        lr_decay_style: str = "cosine",
        lr_decay_unit: str = "tokens",
        lr_decay_tokens: int | None = None,
        lr_decay_steps: int | None = None,
        max_tokens: int | None = None,
        max_steps: int | None = None,
        on_nonfinite: str = "stop",
        max_consecutive_skips: int = 5,
        process_group: Any = None,
    ):
        given = locals()
        raw = {
            "curriculum": length_warmup_section(**{k: given[k] for k in CURRICULUM_ARGS}),
            "train": {k: given[k] for k in TRAIN_ARGS},
            "monitor": {k: given[k] for k in MONITOR_ARGS},
        }
        self._setup(_config(raw), process_group)

    @classmethod
    def from_config(cls, cfg: Config, process_group: Any = None) -> SequenceLengthWarmup:
        """The curriculum, LR schedule, stopping rule and monitor of a seqwarm config (its other sections are unused).

        With a batch axis that changes the batch (`curriculum.batch: warmup`), `batch_size` is the global batch of
        the step about to run, in sequences; the loop's data loader draws that many (`fixed_batch` refuses it for
        the integrations whose trainer owns the batch size)."""
        slw = cls.__new__(cls)
        slw._setup(_config(_sections(cfg)), process_group)
        return slw

    def _setup(self, cfg: Config, process_group: Any) -> None:
        self.config = cfg
        t = cfg.train
        self.plan = StepPlan(Curriculum(cfg.curriculum, t.global_batch_size, unit=t.micro_batch_size), t.lr_schedule())
        """The step plan seqwarm's trainer and `seqwarm plan` follow: length, batch, LR, clock."""
        self.schedule = self.plan.curriculum.length
        """step -> training length (`SeqlenSchedule`)."""
        self.loss_ratio = LossRatio()
        """Call it with each step's loss: the loss over the minimum of all earlier ones (Section 3, Table 1)."""
        self.guard = NonFiniteGuard(cfg.monitor.on_nonfinite, cfg.monitor.max_consecutive_skips)
        """`guard.observe(finite)` after each step: a reason to stop, or None."""
        self.process_group = process_group
        self._pending: int | torch.Tensor | None = None  # target tokens counted for the open step
        self._resolved: int | None = None  # the same, summed over processes, once read
        self._scheduler_hook = None  # the optimizer pre-hook of the scheduler built last
        self._last_seqlen: int | None = None  # the length the last closed step trained at
        self.attached: dict[str, Any] = {}  # stateful companions whose state travels in ours (`attach`)

    def attach(self, name: str, part: Any) -> None:
        """Carry `part`'s state (`state_dict`/`load_state_dict`) in this object's, so that the checkpoint that holds
        SLW's (a Trainer's scheduler.pt, Lightning's callback state) holds it too: the step guard's."""
        self.attached[name] = part

    # --- the step's length and its batch ------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """The token clock (held by the step plan): `step`, `tokens`."""
        return self.plan.clock

    @property
    def spec(self) -> StepSpec:
        """Everything the step about to run trains: `seqlen`, `batch_size` (sequences drawn), `split` (rows per
        sequence when melted), `window` (the attention window to give the model; None: full causal attention)."""
        return self.plan.spec()

    @property
    def seqlen(self) -> int:
        """The length of the step about to run: `schedule(clock.step)`, a pure function of the step."""
        return self.plan.spec().seqlen

    @property
    def window(self) -> int | None:
        """The attention window of the step about to run (`curriculum.window: warmup`); None: full causal attention."""
        return self.plan.spec().window

    @property
    def batch_size(self) -> int:
        """The global batch of the step about to run, in sequences (`train.global_batch_size` unless the
        curriculum's batch axis changes it with the trained tokens)."""
        return self.plan.spec().batch_size

    def fixed_batch(self, owner: str) -> None:
        """ConfigError when the batch changes during the run: `owner` (a trainer that fixes the batch size) cannot follow it."""
        if self.plan.curriculum.batch.varies:
            raise ConfigError(
                f"curriculum.batch: the batch grows during the run (curriculum.kind: {self.config.curriculum.kind}), "
                f"but {owner} fixes the batch size; use a constant batch with it"
            )

    def truncate(self, batch: torch.Tensor | Mapping) -> tuple[torch.Tensor, torch.Tensor] | Mapping:
        """Cut a batch (or one micro-batch of the step) to this step's length and count its target tokens.

        A tensor of full-length rows `(B, seqlen_end + 1)` gives `(inputs, targets)`; a dict gives a dict
        (the module docstring has both conventions).
        """
        spec = self.plan.spec()
        seqlen = spec.seqlen
        if isinstance(batch, torch.Tensor):
            need = self.config.curriculum.seqlen_end + 1
            if batch.dim() != 2 or batch.shape[1] < need:
                raise DataError(
                    f"batch: expected rows of seqlen_end + 1 = {need} tokens (B, {need}), got shape {tuple(batch.shape)}"
                )
            # Melted (packing: melt): split x more rows, every target of the full row kept.
            inputs, targets = melt(batch[:, :need], seqlen) if spec.split > 1 else truncate(batch, seqlen)
            self.count((targets != IGNORE_INDEX).sum())
            return inputs, targets
        if isinstance(batch, Mapping):
            out = melt_dict(batch, seqlen, spec.split) if spec.split > 1 else truncate_dict(batch, seqlen)
            self.count(dict_target_tokens(out))
            return out
        raise DataError(f"batch: expected a tensor of token rows or a dict with input_ids, got {type(batch).__name__}")

    def count(self, tokens: int | torch.Tensor) -> None:
        """Add target tokens to the open step, for a loop that truncates or counts on its own (this process's share)."""
        if self._resolved is not None:
            raise RuntimeError(
                "SequenceLengthWarmup.count: the step's tokens were already read (by the LR); count before optimizer.step()"
            )
        self._pending = tokens if self._pending is None else self._pending + tokens

    @property
    def open_step(self) -> bool:
        """True once a batch of the step was counted, until `step()` closes it."""
        return self._pending is not None

    @property
    def step_tokens(self) -> int:
        """The target tokens of the open step over all processes (one all-reduce, then kept)."""
        if self._pending is None:
            raise RuntimeError(
                "SequenceLengthWarmup: no batch of this step went through truncate() or count(); the LR and the "
                "clock of a step depend on its tokens"
            )
        if self._resolved is None:
            total = torch.as_tensor(self._pending, dtype=torch.int64)
            if self._distributed():
                if dist.get_backend(self.process_group) == "nccl" and total.device.type != "cuda":
                    total = total.to(torch.device("cuda", torch.cuda.current_device()))
                dist.all_reduce(total, group=self.process_group)
            self._resolved = int(total.item())
        return self._resolved

    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size(self.process_group) > 1

    # --- the clock, the LR and stopping ---------------------------------------------------------------

    def lr(self) -> float:
        """The LR of the open step's update: `learning_rate(clock.after(step_tokens))`, so warmup and decay see
        the step's own tokens (docs/ARCHITECTURE.md, Walk 2)."""
        return self.plan.lr(self.step_tokens)

    def step(self, applied: bool = True) -> None:
        """Close the step: the clock ticks by its tokens, or by 0 if its update was not applied (a skipped
        non-finite or fp16-overflow step counts as a step, its tokens do not)."""
        self._last_seqlen = self.plan.spec().seqlen
        self.plan.tick(self.step_tokens if applied else 0)
        self._pending = self._resolved = None

    def observe_loss(self, loss: float, step: int) -> float:
        """A step's training loss after its update: its loss ratio (Section 3's spike measure), with the
        finiteness guard told; DivergedError naming `step` when the guard stops the run. The update is
        applied by then, so the caller saves nothing after the error: its last checkpoint is the last
        finite state."""
        ratio = self.loss_ratio(loss)
        self.plan.observe({"loss_ratio": ratio})  # closed-loop pacing (`pacing: adaptive`) grows on stable steps
        reason = self.guard.observe(math.isfinite(loss))
        if reason is not None:
            raise DivergedError(f"step {step}: {reason}; stopped before any save of this step's weights")
        return ratio

    @property
    def finished(self) -> bool:
        """True once `max_tokens` target tokens (or `max_steps` steps) are trained: stop the loop."""
        return self.plan.finished

    def scheduler(self, optimizer: torch.optim.Optimizer) -> TokenLRScheduler:
        """The LR over tokens as a `torch.optim.lr_scheduler.LRScheduler`; call its `step()` after `optimizer.step()`."""
        return TokenLRScheduler(optimizer, self)

    # --- instruments and logs -------------------------------------------------------------------------

    def adam_statistics(self, optimizer: torch.optim.Optimizer) -> dict[str, float] | None:
        """`seqwarm.monitor.adam_statistics` read back once, by name (`adam/var_l1`, `adam/var_max`, `adam/mom_l1`)."""
        stats = adam_statistics(_innermost(optimizer))
        return None if stats is None else dict(zip(ADAM_KEYS, stats.tolist()))

    def metrics(self) -> dict[str, int]:
        """The clock after the last step and that step's length, for a log row."""
        last = self._last_seqlen
        if last is None and self.clock.step:  # restored from a state: the length is a function of the step
            last = self.plan.curriculum.at(self.clock.step - 1, self.clock.tokens).seqlen
        return {"step": self.clock.step, "tokens": self.clock.tokens, "seqlen": last}

    # --- state -------------------------------------------------------------------------------------------

    def state_dict(self, *, drop_open_step: bool = False) -> dict:
        """Everything a resume needs (plain Python values): the clock, the instruments and the settings.

        A step that is open (counted, not stepped) is refused, unless `drop_open_step`: then the state is the one at
        the step's start, as a checkpoint taken amid gradient accumulation holds no gradients of that step either.
        """
        if self._pending is not None and not drop_open_step:
            raise RuntimeError(
                "SequenceLengthWarmup.state_dict: a step is open (counted, not stepped); save between steps"
            )
        return {
            "format": STATE_FORMAT,
            "settings": _sections(self.config),
            "clock": self.clock.state_dict(),
            "loss_ratio": self.loss_ratio.state_dict(),
            "guard": self.guard.state_dict(),
            "curriculum": self.plan.curriculum.state_dict(),  # closed-loop pacing's controller; {} otherwise
        } | ({"attached": {k: v.state_dict() for k, v in self.attached.items()}} if self.attached else {})

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was saved. A change a resume may not make (pacing, LR schedule, ...) raises a
        ConfigError naming the field, as `seqwarm train --resume` does; a longer run is allowed."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise ConfigError(f"state_dict: format {found!r} is not {STATE_FORMAT!r}; not a SequenceLengthWarmup state")
        settings = copy.deepcopy(state["settings"])
        for k in BATCH_ARGS:  # a state of seqwarm 0.2 has no batch: it was the loop's own, as it still is here
            settings["train"].setdefault(k, getattr(self.config.train, k))
        resume_changes(_config(settings), self.config)
        saved = state.get("attached", {})
        if set(saved) != set(self.attached):  # a guard switched on or off at a resume changes what is computed
            raise ConfigError(
                f"state_dict: saved with {sorted(saved) or 'nothing'} attached, resumed with {sorted(self.attached) or 'nothing'}"
            )
        self.clock.load_state_dict(state["clock"])
        self.loss_ratio.load_state_dict(state["loss_ratio"])
        self.guard.load_state_dict(state["guard"])
        self.plan.curriculum.load_state_dict(state.get("curriculum", {}))  # absent from states before 0.3
        for name, part in self.attached.items():
            part.load_state_dict(saved[name])
        self._pending = self._resolved = None


class TokenLRScheduler(LRScheduler):
    """The token-wise LR of a `SequenceLengthWarmup` as a torch LR scheduler (`step()`, `get_last_lr()`, state).

    A step's LR depends on the tokens the step trains (`Clock.after`), known only once its batch is
    counted; so the LR is set by a pre-hook of `optimizer.step()`, and `step()` ticks the clock. Every
    param group gets the schedule's LR. `get_last_lr()` is the LR of the last update (the next one's
    is not known before its batch). `state_dict()` holds the SLW object's whole state, so a loop that
    already checkpoints its scheduler checkpoints SLW with it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, slw: SequenceLengthWarmup):
        # Not LRScheduler.__init__: it would compute an LR at once (before any tokens) and wrap
        # optimizer.step; the attributes its public methods read are set here.
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
        self.optimizer, self.slw = optimizer, slw
        self.base_lrs = [slw.config.train.lr] * len(optimizer.param_groups)
        self.last_epoch = slw.clock.step
        self._step_count = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]
        self._applied = False
        # On the innermost torch optimizer (an accelerate or Lightning wrapper forwards step() to it),
        # so the hook does not run when a GradScaler skips the update.
        self._hook = _innermost(optimizer).register_step_pre_hook(self._before_update)
        if slw._scheduler_hook is not None:  # a new scheduler for the same object (a second Trainer.train())
            slw._scheduler_hook.remove()
        slw._scheduler_hook = self._hook

    def _before_update(self, optimizer, args, kwargs) -> None:
        lr = self.slw.lr()
        for group in optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(optimizer.param_groups)
        self._applied = True

    def step(self, epoch: int | None = None) -> None:
        """After `optimizer.step()`: the clock ticks by the step's tokens (by 0 when the update was skipped)."""
        if epoch is not None:
            raise TypeError("TokenLRScheduler.step: the LR follows the token clock, not an epoch argument")
        self.slw.step(applied=self._applied)
        self._applied = False
        self._step_count += 1
        self.last_epoch = self.slw.clock.step

    def get_lr(self) -> list[float]:
        return list(self._last_lr)

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {"slw": self.slw.state_dict(), "last_lr": list(self._last_lr)}

    def load_state_dict(self, state: dict) -> None:
        self.slw.load_state_dict(state["slw"])
        self._last_lr = list(state["last_lr"])
        self.last_epoch = self.slw.clock.step


def _innermost(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers that keep it as `.optimizer` (accelerate, Lightning)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _sections(cfg: Config) -> dict:
    """The settings SLW uses: the curriculum, and of train and monitor only the fields it reads (a config's
    batch, optimizer or device are the loop's own)."""
    train, monitor = dataclasses.asdict(cfg.train), dataclasses.asdict(cfg.monitor)
    return {
        "curriculum": dataclasses.asdict(cfg.curriculum),
        "train": {k: train[k] for k in (*TRAIN_ARGS, *BATCH_ARGS)},
        "monitor": {k: monitor[k] for k in MONITOR_ARGS},
    }


def _config(raw: dict) -> Config:
    """A seqwarm Config around the curriculum, train and monitor sections, checked as any config is (types
    and values, errors naming `section.field`); the model is sized only to fit seqlen_end."""
    seqlen_end = raw.get("curriculum", {}).get("seqlen_end")
    if seqlen_end is None:
        raise ConfigError("curriculum.seqlen_end: required (the full length your rows are cut from)")
    if not isinstance(seqlen_end, int) or isinstance(seqlen_end, bool) or seqlen_end <= 0:
        raise ConfigError(f"curriculum.seqlen_end: expected a positive integer, got {seqlen_end!r}")
    return config_from_dict({**raw, "model": {"max_seqlen": seqlen_end}})


__all__ = ["SequenceLengthWarmup", "TokenLRScheduler", "dict_target_tokens", "truncate_dict"]
