"""The training loop: length -> batch -> forward/backward -> clip -> step -> log -> eval -> save.

`build` makes a `Trainer` (the loop's state) and `fit` runs the loop; `seqwarm.lifecycle.train`
wraps them with the run directory's claim and the checkpoint to continue from. Every quantity that
decides what a step does is a function of the clock:
the SLW length of the step (pacing, Section 4), its learning rate (token-wise decay, Appendix A.2)
and whether training is over (token-wise termination, Section 5.1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from seqwarm import __version__, distributed, rundir
from seqwarm import checkpoint as ckpt
from seqwarm.checkpoint import STATE_FORMAT, Checkpoint, rng_state, save_checkpoint, set_rng_state
from seqwarm.config import Config
from seqwarm.curriculum import BatchSchedule, SeqlenSchedule
from seqwarm.data.format import SequenceIndex, TokenData
from seqwarm.data.loader import Batch, TrainLoader
from seqwarm.distributed import DistEnv
from seqwarm.errors import ConfigError, DivergedError, SeqwarmError
from seqwarm.interrupt import Interrupted, StopRequest
from seqwarm.loss import IGNORE_INDEX
from seqwarm.metrics import METRICS, MetricsLog, WandbSettings, read_metrics, run_summary
from seqwarm.model import GPT
from seqwarm.monitor import ADAM_KEYS, LossRatio, NonFiniteGuard, adam_statistics, all_finite
from seqwarm.runtime import keep_freed_memory, resolve_device, resolve_precision, set_cpu_threads, threads_text
from seqwarm.schedule import Clock, finished, learning_rate


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
    seqlen_schedule: SeqlenSchedule  # step -> training length (pure: nothing to save)
    batch_schedule: BatchSchedule  # trained tokens -> global batch size (pure: nothing to save)
    clock: Clock
    loss_ratio: LossRatio
    guard: NonFiniteGuard
    time_offset: float = 0.0  # wall seconds of earlier sessions of this run (resume)
    session_start: float = field(default_factory=time.perf_counter)
    stop: StopRequest | None = None  # set by a signal: save and stop after the current step
    last_checkpoint: Path | None = None  # written or verified-and-loaded in this process

    def wall_s(self) -> float:
        """Wall seconds this run has trained, over all its sessions."""
        return self.time_offset + time.perf_counter() - self.session_start

    def _stateful(self) -> dict:
        """The parts whose state.json entry is their own `state_dict()`; a new stateful part is added here only."""
        return {"clock": self.clock, "loader": self.loader, "loss_ratio": self.loss_ratio, "guard": self.guard}

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
            part.load_state_dict(state[name])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.time_offset = state["time_s"]
        self.session_start = time.perf_counter()


def check_parallel(cfg: Config, env: DistEnv) -> None:
    """The global batch must split into whole micro-batches on every process (before anything starts)."""
    t, c = cfg.train, cfg.curriculum
    unit = t.micro_batch_size * env.world_size
    if t.global_batch_size % unit:
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) must be a multiple of processes x train.micro_batch_size "
            f"({env.world_size} x {t.micro_batch_size} = {unit})"
        )
    if c.kind == "bsz_warmup" and c.batch_size_start % unit:
        raise ConfigError(
            f"curriculum.batch_size_start ({c.batch_size_start}) must be a multiple of processes x train.micro_batch_size "
            f"({env.world_size} x {t.micro_batch_size} = {unit}): the batch grows in whole micro-batches per process"
        )


def build(
    cfg: Config, run_dir: Path, data: TokenData, env: DistEnv | None = None, device: torch.device | None = None
) -> Trainer:
    env = env or DistEnv()
    device = device or resolve_device(cfg.train.device, env.local_rank)
    cfg = with_resolved_precision(cfg, device)
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs CUDA (use bf16 or fp32 on cpu)")
    if cfg.train.num_threads or device.type == "cpu":
        set_cpu_threads(cfg.train.num_threads)  # unset: the cores other processes leave free (runtime.py)
    if device.type == "cpu":
        keep_freed_memory()
    seqlen_end = cfg.curriculum.seqlen_end
    train_index = data.sequences("train", seqlen_end)
    val_index = data.sequences("val", seqlen_end)

    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    model = GPT(cfg.model.gpt(data.vocab_size)).to(device)  # `vocab_size: auto`: the data's tokenizer's
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
        seqlen_schedule=SeqlenSchedule(cfg.curriculum),
        batch_schedule=BatchSchedule(cfg.curriculum, t.global_batch_size, unit=t.micro_batch_size * env.world_size),
        clock=Clock(),
        loss_ratio=LossRatio(),
        guard=NonFiniteGuard(cfg.monitor.on_nonfinite, cfg.monitor.max_consecutive_skips),
    )


def with_resolved_precision(cfg: Config, device: torch.device) -> Config:
    """`cfg` with `train.precision: auto` replaced by what it means on `device` (`resolve_precision`)."""
    precision = resolve_precision(cfg.train.precision, device)
    if precision == cfg.train.precision:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))


class FitHook:
    """Seams into `fit` for benchmarks, tests and a caller's own instruments; the default does nothing.

    `phase(name)` is a context manager around each part of a step (`data`, `lr`, `train_step`, `tick`,
    `metrics`, `adam`, `log`), so a profiler or a timer sees the real loop; `on_step(clock)` runs
    after every step (raising from it stops training as a crash would).
    """

    def __init__(self, on_step: Callable[[Clock], None] | None = None):
        self._on_step = on_step

    def phase(self, name: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def on_step(self, clock: Clock) -> None:
        if self._on_step is not None:
            self._on_step(clock)


def fit(tr: Trainer, *, progress: bool = True, hook: FitHook | None = None) -> dict:
    """Train until the stopping rule says so; write summary.json. Returns the summary (on every rank)."""
    for _ in training_steps(tr, progress=progress, hook=hook):
        pass
    summary = write_summary(tr) if tr.env.main else None
    return distributed.broadcast(summary, tr.env)


def training_steps(tr: Trainer, *, progress: bool = True, hook: FitHook | None = None) -> Iterator[dict]:
    """The loop of `fit`, one optimizer step per iteration: yields each step's metrics row.

    A generator, so that a benchmark can interleave the steps of several trainers, and time them
    through `hook.phase`, while running exactly this code.
    """
    cfg, t, clock = tr.cfg, tr.cfg.train, tr.clock
    hook = hook or FitHook()
    phase = hook.phase
    tr.session_start = time.perf_counter()
    autocast = _autocast(tr.device, t.precision)
    bar = _progress_bar(cfg, clock, enabled=progress and cfg.log.progress and tr.env.main)
    tr.model.train()
    wandb = WandbSettings(cfg.log.wandb_project, cfg.log.wandb_name, cfg.log.wandb_mode, cfg.to_dict())
    log = MetricsLog(
        tr.run_dir,
        cfg.log.tensorboard,
        enabled=tr.env.main,
        start_step=clock.step,
        wandb=wandb if cfg.log.wandb else None,
    )
    try:
        if clock.step == 0 and cfg.eval.every_tokens is not None:
            evaluate_and_log(tr, log, autocast)  # the curves start at the initial model
        while not finished(clock, t):
            with phase("data"):
                seqlen = tr.seqlen_schedule(clock.step)  # SLW/Shortformer: a function of the step (Section 4)
                batch = tr.loader.next_batch(tr.batch_schedule(clock.tokens), seqlen)  # bsz warmup: of the tokens
                # The next batch is read in the background during this step (the same batch either way).
                tr.loader.prefetch(tr.batch_schedule(clock.tokens + batch.tokens), tr.seqlen_schedule(clock.step + 1))
            with phase("lr"):
                lr = learning_rate(clock.after(batch.tokens, t), t)
            with phase("train_step"):
                result = train_step(tr, batch, lr, autocast)
            with phase("tick"):
                prev_tokens = clock.tokens
                # A skipped update trained on nothing: the step counts (pacing moves on, the batch is
                # dropped) but its tokens do not.
                clock.tick(batch.tokens if result.applied else 0, t)
            with phase("metrics"):
                row = step_row(tr, batch, seqlen, lr, result)
            with phase("adam"):
                row |= adam_row(tr, result)
            with phase("log"):
                row["time_s"] = tr.wall_s()
                log.write(row)
            # A loss-scale overflow is fp16's normal way to find its scale, not a failure.
            reason = None if result.overflow else tr.guard.observe(result.applied)
            if reason:
                last = tr.last_checkpoint
                where = f"the last checkpoint, {last.name}, holds finite weights" if last else "no checkpoint written"
                raise DivergedError(
                    f"step {clock.step}: loss {result.loss}, gradient norm {result.grad_norm}; the update was not "
                    f"applied; stopping: {reason} ({where})"
                )

            if _crossed(prev_tokens, clock.tokens, cfg.eval.every_tokens) or finished(clock, t):
                log.flush()
                evaluate_and_log(tr, log, autocast)
            if (cfg.checkpoint.every_steps and clock.step % cfg.checkpoint.every_steps == 0) or finished(clock, t):
                log.flush()
                save(tr)
            bar.update(clock.tokens - prev_tokens if t.max_tokens else 1)
            if clock.step % cfg.log.every_steps == 0:
                bar.set_postfix(
                    step=clock.step, seqlen=seqlen, loss=f"{result.loss:.3f}", lr=f"{lr:.2e}", refresh=False
                )
            hook.on_step(clock)
            yield row
            if not finished(clock, t) and _stop_requested(tr, result):
                log.flush()
                if tr.last_checkpoint is None or tr.last_checkpoint.name != f"step-{clock.step:08d}":
                    save(tr)
                signum = tr.stop.requested or signal.SIGTERM  # another rank's signal: the job is being stopped
                raise Interrupted(
                    f"{signal.Signals(signum).name}: stopped after step {clock.step} with a checkpoint; "
                    f"continue with: seqwarm train --resume {tr.run_dir}",
                    signum,
                )
    finally:
        log.close()
        bar.close()


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over the global batch's target tokens
    grad_norm: float  # global l2 norm before clipping
    applied: bool  # the update reached the weights
    overflow: bool  # fp16 loss-scale overflow: skipped by the scaler, which lowers its scale
    signalled: bool = False  # under torchrun: some rank had a stop signal by this step's all-reduce


def train_step(tr: Trainer, batch: Batch, lr: float, autocast) -> StepResult:
    """One optimizer step over the global batch, accumulated over micro-batches (and processes).

    The loss is the mean over the global batch's target tokens (not the mean of micro-batch
    means), so padding and uneven micro-batches weigh every token equally. Each process holds a
    share of the batch; DDP/FSDP average the gradients over the processes, so each share's loss
    is scaled by their number to make the sum over shares the single-process loss. The output
    layer and the loss are computed chunk by chunk (`linear_cross_entropy`), so the full logits of
    a micro-batch never exist in memory.
    """
    t = tr.cfg.train
    for group in tr.optimizer.param_groups:
        group["lr"] = lr
    inputs, targets = batch.inputs.to(tr.device, non_blocking=True), batch.targets.to(tr.device, non_blocking=True)
    micro = list(zip(inputs.split(t.micro_batch_size), targets.split(t.micro_batch_size)))
    total = torch.zeros((), device=tr.device)
    for i, (x, y) in enumerate(micro):
        # DDP's no_sync must cover the backward; autocast only the forward (as torch.amp advises).
        with _gradient_sync(tr, last=i == len(micro) - 1):
            with autocast:
                loss = _loss_sum(tr, x, y) / batch.tokens
            tr.scaler.scale(loss * tr.env.world_size if tr.env.enabled else loss).backward()
        total += loss.detach()
    # The global batch's mean loss, on every rank; a stop signal on any rank rides on the same
    # all-reduce, so that all ranks stop after the same step without a collective of its own.
    signal_flag = float(tr.env.enabled and tr.stop is not None and tr.stop.requested is not None)
    reduced = distributed.all_reduce(torch.stack([total, torch.tensor(signal_flag, device=tr.device)]))
    tr.scaler.unscale_(tr.optimizer)
    max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
    grad_norm = distributed.full(torch.nn.utils.clip_grad_norm_(tr.model.parameters(), max_norm))
    loss, signalled, norm = torch.cat([reduced, grad_norm.float()[None]]).tolist()  # one host sync for all
    # A non-finite loss or gradient never reaches the weights. Under fp16 an infinite gradient with
    # a finite loss is a loss-scale overflow: the scaler skips that step itself and lowers its scale.
    # Both numbers are global, so every rank takes the same decision.
    applied = math.isfinite(loss) and math.isfinite(norm)
    overflow = tr.scaler.is_enabled() and math.isfinite(loss) and not applied
    if applied or overflow:
        tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    tr.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, norm, applied, overflow, signalled > 0)


def _gradient_sync(tr: Trainer, last: bool):
    """Communicate gradients on the last micro-batch only (they accumulate locally until then)."""
    if not tr.env.enabled or last:
        if hasattr(tr.engine, "set_requires_gradient_sync"):
            tr.engine.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if hasattr(tr.engine, "no_sync"):  # DDP
        return tr.engine.no_sync()
    tr.engine.set_requires_gradient_sync(False)  # FSDP2
    return contextlib.nullcontext()


def _loss_sum(tr: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the model on inputs x against targets y (IGNORE_INDEX skipped)."""
    if tr.cfg.train.compile and tr.cfg.curriculum.kind in ("slw", "shortformer"):
        # Only the length varies under SLW. Marking just that dimension dynamic (rather than
        # `dynamic=True`) keeps the batch size static, so dynamo cannot tie the two together when
        # they happen to be equal (batch 8 at seqlen 8) and recompile when they part.
        x = x.clone()  # not a view: dynamo would guard on the shape of its base
        torch._dynamo.mark_dynamic(x, 1)
    return tr.engine(x, y, ignore_index=IGNORE_INDEX)


def step_row(tr: Trainer, batch: Batch, seqlen: int, lr: float, result: StepResult) -> dict:
    """The metrics row of the step that just ticked the clock (Section 3's instruments included)."""
    t = tr.cfg.train
    row = {
        "step": tr.clock.step,
        "tokens": tr.clock.tokens,
        "seqlen": seqlen,
        "batch_size": len(batch.starts),
        "lr": lr,
        "loss": result.loss,
        "loss_ratio": tr.loss_ratio(result.loss),
        "grad_norm": result.grad_norm,
        "clipped": result.applied and 0 < t.grad_clip < result.grad_norm,
    }
    if not result.applied:
        row["skipped"] = "fp16 overflow" if result.overflow else "non-finite"
    return row


def adam_row(tr: Trainer, result: StepResult) -> dict:
    """Adam's variance/momentum statistics, on the steps `monitor.adam_every_steps` selects."""
    if not result.applied or tr.clock.step % tr.cfg.monitor.adam_every_steps:
        return {}
    stats = adam_statistics(tr.optimizer)
    if stats is None:
        return {}
    if distributed.is_sharded(tr.model):  # each rank holds a shard of the state: combine them
        stats = torch.cat([distributed.all_reduce(stats[[0, 2]]), distributed.all_reduce(stats[1:2], op="max")])[
            [0, 2, 1]
        ]
    return dict(zip(ADAM_KEYS, stats.tolist()))  # one read-back for all three


@torch.no_grad()
def evaluate(tr: Trainer, autocast) -> float:
    """Mean loss per token on the fixed full-length validation sequences.

    The processes split each round of `world_size x eval.batch_size` sequences and add up their
    sums. Every rank runs the same number of forward passes (a rank past the end scores a dummy
    row whose targets are all ignored), as FSDP gathers the weights collectively.
    """
    n = min(tr.cfg.eval.max_sequences, len(tr.val))
    bs, rank, world = tr.cfg.eval.batch_size, tr.env.rank, tr.env.world_size
    sums = torch.zeros(2, dtype=torch.float64, device=tr.device)  # loss sum, target count
    tr.model.eval()
    for i in range(0, n, bs * world):
        ids = range(i + rank * bs, min(i + (rank + 1) * bs, n))
        rows = tr.val.rows(ids if len(ids) else [0]).to(tr.device)
        targets = rows[:, 1:] if len(ids) else torch.full_like(rows[:, 1:], IGNORE_INDEX)
        with autocast:
            sums[0] += _loss_sum(tr, rows[:, :-1], targets).double()
        sums[1] += (targets != IGNORE_INDEX).sum()
    tr.model.train()
    total, count = distributed.all_reduce(sums).tolist()
    return total / count


def evaluate_and_log(tr: Trainer, log: MetricsLog, autocast) -> None:
    """Validate and append an eval row to the metrics."""
    val_loss = evaluate(tr, autocast)
    row = {
        "step": tr.clock.step,
        "tokens": tr.clock.tokens,
        "time_s": tr.wall_s(),
        "val/loss": val_loss,
        "val/ppl": math.exp(min(val_loss, 50.0)),
    }
    log.write(row)


def save(tr: Trainer) -> Path | None:
    """A checkpoint of the whole run; a collective under torchrun (rank 0 writes full, unsharded tensors)."""
    bad = torch.tensor(
        [0.0 if all_finite(distributed.local(p) for p in tr.model.parameters()) else 1.0], device=tr.device
    )
    if distributed.all_reduce(bad, op="max").item():  # every rank decides alike
        raise SeqwarmError(f"step {tr.clock.step}: the weights are not finite; not saving a checkpoint of them")
    ck = tr.state_dict()
    path = (
        save_checkpoint(tr.run_dir, tr.clock.step, ck, keep_last=tr.cfg.checkpoint.keep_last) if tr.env.main else None
    )
    distributed.barrier(tr.env)
    tr.last_checkpoint = ckpt.checkpoint_dir(tr.run_dir) / f"step-{tr.clock.step:08d}"
    return path


def _stop_requested(tr: Trainer, result: StepResult) -> bool:
    """Whether a signal asked this run to stop after this step; under torchrun, whether any rank had
    one by the step's all-reduce (`train_step`), so all stop at the same step."""
    if tr.stop is None:
        return False
    return result.signalled if tr.env.enabled else tr.stop.requested is not None


def write_summary(tr: Trainer) -> dict:
    """summary.json: the run's totals, its validation results and its stability record (Section 3)."""
    summary = {
        "run_dir": str(tr.run_dir),
        "steps": tr.clock.step,
        "tokens": tr.clock.tokens,
        "wall_s": tr.wall_s(),
        "params": sum(p.numel() for p in tr.model.parameters()),
        **run_summary(read_metrics(tr.run_dir / METRICS)),
    }
    rundir.write_summary(tr.run_dir, summary)
    return summary


def _crossed(before: int, after: int, every: int | None) -> bool:
    return every is not None and after // every > before // every


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _progress_bar(cfg: Config, clock: Clock, enabled: bool) -> tqdm:
    by_tokens = cfg.train.max_tokens is not None
    return tqdm(
        total=cfg.train.max_tokens if by_tokens else cfg.train.max_steps,
        initial=clock.tokens if by_tokens else clock.step,
        unit="tok" if by_tokens else "step",
        unit_scale=True,
        # on the CPU, the threads in the line: the first thing to check when a busy machine is slow (runtime.py)
        desc=Path(cfg.run.dir).name + ("" if torch.cuda.is_initialized() else f" ({threads_text()})"),
        disable=not enabled,
        dynamic_ncols=True,
    )
