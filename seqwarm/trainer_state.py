"""The trainer's state and its construction: `Trainer` (everything the loop works on, and its
`state_dict`, what a checkpoint holds) and `build` (a config and its data -> a `Trainer`, weights
initialised, wrapped for DDP/FSDP, optimizer made). The loop is `seqwarm.trainer`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seqwarm import __version__, distributed
from seqwarm.checkpoint import STATE_FORMAT, Checkpoint, rng_state, set_rng_state
from seqwarm.config import Config
from seqwarm.curriculum import Curriculum
from seqwarm.data.format import SequenceIndex, TokenData
from seqwarm.data.loader import TrainLoader
from seqwarm.distributed import DistEnv
from seqwarm.errors import ConfigError
from seqwarm.guards import SkipStepGuard, ZClip
from seqwarm.interrupt import StopRequest
from seqwarm.model import GPT, build_model
from seqwarm.monitor import LossRatio, NonFiniteGuard
from seqwarm.rewind import Rewinder
from seqwarm.runtime import check_precision, keep_freed_memory, resolve_device, resolve_precision, set_cpu_threads
from seqwarm.schedule import Clock, StepPlan
from seqwarm.stability import Events, unigram_loss

OPTIONAL = ("skip_guard", "zclip", "rewinder", "events")  # the parts a checkpoint may lack: their switch was off


@dataclass
class Trainer:
    """Everything `fit` works on. `state_dict()` is the whole run's state, what a checkpoint holds."""

    cfg: Config
    run_dir: Path
    device: torch.device
    env: DistEnv  # this process's rank among world_size (rank 0 of 1 without torchrun)
    model: GPT  # the parameters (sharded in place under FSDP)
    engine: torch.nn.Module  # what runs forward/backward: the model, or DDP around it
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: TrainLoader
    val: SequenceIndex
    plan: StepPlan  # the curriculum's step (length, batch, ...) -> tokens -> LR -> tick; pure but for its clock
    loss_ratio: LossRatio
    guard: NonFiniteGuard
    time_offset: float = 0.0  # wall seconds of earlier sessions of this run (resume)
    session_start: float = field(default_factory=time.perf_counter)
    stop: StopRequest | None = None  # set by a signal: save and stop after the current step
    last_checkpoint: Path | None = None  # written or verified-and-loaded in this process
    # The stability toolkit (seqwarm.stability, docs/STABILITY.md), each None when its switch is off:
    skip_guard: SkipStepGuard | None = None  # monitor.skip_spikes
    zclip: ZClip | None = None  # train.grad_clip_mode: zscore
    rewinder: Rewinder | None = None  # monitor.rewind
    events: Events | None = None  # monitor.instruments: the collapse and plateau events

    @property
    def clock(self) -> Clock:
        """The run's one token clock (held by the step plan)."""
        return self.plan.clock

    def wall_s(self) -> float:
        """Wall seconds this run has trained, over all its sessions."""
        return self.time_offset + time.perf_counter() - self.session_start

    def _stateful(self) -> dict:
        """The parts whose state.json entry is their own `state_dict()`; a new stateful part is added here only."""
        parts = {"clock": self.clock, "loader": self.loader, "loss_ratio": self.loss_ratio, "guard": self.guard}
        if self.plan.curriculum.stateful:  # closed-loop pacing: only then, so older checkpoints load as they did
            parts["curriculum"] = self.plan.curriculum
        toolkit = {"skip_guard": self.skip_guard, "zclip": self.zclip, "rewinder": self.rewinder, "events": self.events}
        return parts | {name: part for name, part in toolkit.items() if part is not None}

    def state_dict(self) -> Checkpoint:
        """The run's whole state in the single-process layout (a collective under torchrun: call it on every rank).

        Tensors are complete on rank 0 only; the JSON part describes the clock, the data position, the
        monitors, the loss scaler, the elapsed time and the model's shape.
        """
        state = {"format": STATE_FORMAT, "seqwarm": __version__}
        state |= {name: part.state_dict() for name, part in self._stateful().items()}
        state["scaler"] = self.scaler.state_dict() if self.scaler.is_enabled() else None
        state["time_s"] = self.wall_s()
        state["model"] = self.model.cfg.__dict__  # the built shape: `vocab_size: auto` resolved from the data
        return Checkpoint(
            model=distributed.full_model_state(self.model),
            optimizer=distributed.full_optimizer_state(self.model, self.optimizer),
            rng=distributed.gather_dicts(rng_state(self.env.rank), self.env),  # each rank's dropout stream
            state=state,
        )

    def load_state_dict(self, ck: Checkpoint) -> None:
        """Continue from a checkpoint written by any number of processes (its tensors are unsharded)."""
        state = ck.state
        distributed.load_full_state(self.model, self.optimizer, ck.model, ck.optimizer)
        if not set_rng_state(ck.rng, self.env.rank):
            # More processes than wrote the checkpoint: a fresh dropout stream, still a function of the run.
            torch.manual_seed(self.cfg.run.seed + self.env.rank + 7919 * state["clock"]["step"])
        for name, part in self._stateful().items():
            # A toolkit part switched on at a resume (monitor.* may change then) starts afresh.
            if name in state or name not in OPTIONAL:
                part.load_state_dict(state[name])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.time_offset = state["time_s"]
        self.session_start = time.perf_counter()


def check_parallel(cfg: Config, env: DistEnv) -> None:
    """The global batch must split into whole micro-batches on every process (before anything starts)."""
    t = cfg.train
    unit = t.micro_batch_size * env.world_size
    if t.global_batch_size % unit:
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) must be a multiple of processes x train.micro_batch_size "
            f"({env.world_size} x {t.micro_batch_size} = {unit})"
        )
    cfg.curriculum.check_batch(t.micro_batch_size, t.global_batch_size, env.world_size)


def build(
    cfg: Config, run_dir: Path, data: TokenData, env: DistEnv | None = None, device: torch.device | None = None
) -> Trainer:
    env = env or DistEnv()
    device = device or resolve_device(cfg.train.device, env.local_rank)
    cfg = with_resolved_precision(cfg, device)  # and checked against the device
    if cfg.train.num_threads or device.type == "cpu":
        set_cpu_threads(cfg.train.num_threads)  # unset: the cores other processes leave free (runtime.py)
    if device.type == "cpu":
        keep_freed_memory()
    seqlen_end = cfg.curriculum.seqlen_end
    train_index = data.sequences("train", seqlen_end)
    val_index = data.sequences("val", seqlen_end)

    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    model = build_model(cfg.model.gpt(data.vocab_size)).to(device)  # `vocab_size: auto`: the data's tokenizer's
    if cfg.train.compile:
        # The Transformer is compiled; the chunked output layer + loss stays eager (a Python loop over
        # chunks, matmul-bound). Static shapes; `_loss_sum` marks the length dynamic, so SLW compiles
        # one graph for all lengths.
        model.compile_trunk(dynamic=False)
    t = cfg.train
    engine = distributed.wrap(model, env, t.parallel, device)  # before the optimizer: FSDP replaces the parameters
    if env.enabled:
        torch.manual_seed(cfg.run.seed + env.rank)  # dropout: a different stream on each rank
    optimizer = torch.optim.AdamW(
        model.param_groups(t.weight_decay),
        lr=t.lr,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_eps,
        # The fused kernel updates each tensor in one pass, on the CPU too (torch >= 2.4): 3.8x faster than
        # the default foreach path for 10M parameters on 2 idle cores, more on a busy machine
        # (docs/PERFORMANCE.md). FSDP's sharded DTensors keep foreach on CPU.
        fused=device.type == "cuda" or not (env.enabled and t.parallel == "fsdp"),
    )
    return Trainer(
        cfg=cfg,
        run_dir=run_dir,
        device=device,
        env=env,
        model=model,
        engine=engine,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=t.precision == "fp16"),
        loader=TrainLoader(
            train_index,
            seed=cfg.run.seed,
            drop_tail=cfg.curriculum.drop_tail,
            rank=env.rank,
            world_size=env.world_size,
            pin_memory=device.type == "cuda",
        ),
        val=val_index,
        plan=StepPlan(
            Curriculum(cfg.curriculum, t.global_batch_size, unit=t.micro_batch_size * env.world_size),
            t.lr_schedule(),
        ),
        loss_ratio=LossRatio(),
        guard=NonFiniteGuard(cfg.monitor.on_nonfinite, cfg.monitor.max_consecutive_skips),
        skip_guard=cfg.monitor.skip_guard(),
        zclip=t.zclip(),
        rewinder=_rewinder(cfg),
        events=Events(unigram_loss(data)) if cfg.monitor.instruments else None,
    )


def _rewinder(cfg: Config) -> Rewinder | None:
    m = cfg.monitor
    if not m.rewind:
        return None
    return Rewinder(
        limit=m.rewind,
        after=m.rewind_after,
        ratio=m.rewind_ratio,
        lr_factor=m.rewind_lr_factor,
        lr_steps=m.rewind_lr_steps,
    )


def with_resolved_precision(cfg: Config, device: torch.device) -> Config:
    """`cfg` with `train.precision: auto` replaced by what it means on `device` (`resolve_precision`);
    ConfigError when the precision cannot run there (`check_precision`: the device `auto` became)."""
    precision = resolve_precision(cfg.train.precision, device)
    check_precision(precision, device.type)
    if precision == cfg.train.precision:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))
