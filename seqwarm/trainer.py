"""The training loop: length -> batch -> forward/backward -> clip -> step -> log -> eval -> save.

`seqwarm.trainer_state.build` makes a `Trainer` (the loop's state) and `fit` runs the loop; `seqwarm.lifecycle.train`
wraps them with the run directory's claim and the checkpoint to continue from. Every quantity that
decides what a step does is a function of the clock:
the SLW length of the step (pacing, Section 4), its learning rate (token-wise decay, Appendix A.2)
and whether training is over (token-wise termination, Section 5.1).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from seqwarm import checkpoint as ckpt
from seqwarm import distributed, rewind, rundir, stability
from seqwarm.checkpoint import save_checkpoint
from seqwarm.config import Config
from seqwarm.curriculum import StepSpec
from seqwarm.data.loader import Batch
from seqwarm.errors import DivergedError, SeqwarmError
from seqwarm.interrupt import Interrupted
from seqwarm.loss import IGNORE_INDEX
from seqwarm.metrics import METRICS, MetricsLog, WandbSettings, read_metrics, run_summary
from seqwarm.monitor import ADAM_KEYS, adam_statistics, all_finite
from seqwarm.runtime import threads_text
from seqwarm.schedule import Clock
from seqwarm.trainer_state import Trainer, build, check_parallel, with_resolved_precision  # noqa: F401 (build, check_parallel, with_resolved_precision: re-exported, the loop's entry points)


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
    cfg, t, plan, clock = tr.cfg, tr.cfg.train, tr.plan, tr.clock
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
        rewind.reconcile(tr, log)  # a rewind's rows that a kill cut off (monitor.rewind)
        if clock.step == 0 and cfg.eval.every_tokens is not None:
            evaluate_and_log(tr, log, autocast)  # the curves start at the initial model
        while not plan.finished:
            with phase("data"):
                before = tr.loader.order.position() if tr.rewinder else None  # where a spike's batches would start
                spec = plan.spec()  # the curriculum's step: its length (Section 4), its batch, packing, window
                batch = tr.loader.next_batch(spec.batch_size, spec.seqlen, spec.split)
                # The next batch is read in the background during this step (the same batch either way; a guess
                # that closed-loop pacing makes wrong is read again).
                nxt = plan.spec_after(batch.tokens)
                tr.loader.prefetch(nxt.batch_size, nxt.seqlen, nxt.split)
            with phase("lr"):
                lr = plan.lr(batch.tokens)
                if tr.rewinder is not None:  # lowered for a while after a rewind (monitor.rewind_lr_factor)
                    lr *= tr.rewinder.lr_factor(clock.step + 1)
            with phase("train_step"):
                # The step's model inputs: the curriculum's window, the toolkit's z-loss and instruments.
                inputs = {**(step_inputs(tr, spec) or {}), **(stability.step_inputs(tr, clock.step + 1) or {})}
                result = train_step(tr, batch, lr, autocast, inputs or None)
            with phase("tick"):
                prev_tokens = clock.tokens
                # A skipped update trained on nothing: the step counts (pacing moves on, the batch is
                # dropped) but its tokens do not.
                plan.tick(batch.tokens if result.applied else 0)
            with phase("metrics"):
                row = step_row(tr, batch, spec.seqlen, lr, result)
                if spec.window is not None:
                    row["window"] = spec.window
                plan.observe(row)  # closed-loop pacing reads the step's loss ratio; open-loop axes ignore it
            with phase("adam"):
                row |= adam_row(tr, result)
            with phase("log"):
                if tr.events is not None:
                    row |= tr.events.observe(row)  # attention collapse, the plateau's end
                row["time_s"] = tr.wall_s()
                log.write(row)
            # A loss-scale overflow is fp16's normal way to find its scale, not a failure; nor is a skipped spike.
            reason = None if result.overflow else tr.guard.observe(result.applied or result.spike is not None)
            if reason:
                last = tr.last_checkpoint
                where = f"the last checkpoint, {last.name}, holds finite weights" if last else "no checkpoint written"
                raise DivergedError(
                    f"step {clock.step}: loss {result.loss}, gradient norm {result.grad_norm}; the update was not "
                    f"applied; stopping: {reason} ({where})"
                )
            if (
                tr.rewinder
                and tr.rewinder.observe(row, before, tr.loader.order.position())
                and rewind.rewind(tr, log, save)
            ):
                continue  # the clock is the checkpoint's: no eval, save or progress for the step rewound over

            if _crossed(prev_tokens, clock.tokens, cfg.eval.every_tokens) or plan.finished:
                log.flush()
                evaluate_and_log(tr, log, autocast)
            if (cfg.checkpoint.every_steps and clock.step % cfg.checkpoint.every_steps == 0) or plan.finished:
                log.flush()
                save(tr)
            bar.update(clock.tokens - prev_tokens if t.max_tokens else 1)
            if clock.step % cfg.log.every_steps == 0:
                events = tr.events.postfix() if tr.events else {}
                bar.set_postfix(
                    step=clock.step,
                    seqlen=spec.seqlen,
                    loss=f"{result.loss:.3f}",
                    lr=f"{lr:.2e}",
                    **events,
                    refresh=False,
                )
            hook.on_step(clock)
            yield row
            if not plan.finished and _stop_requested(tr, result):
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
    loss: float  # cross-entropy, mean over the global batch's target tokens (no auxiliary term in it)
    grad_norm: float  # global l2 norm before clipping
    applied: bool  # the update reached the weights
    overflow: bool  # fp16 loss-scale overflow: skipped by the scaler, which lowers its scale
    signalled: bool = False  # under torchrun: some rank had a stop signal by this step's all-reduce
    spike: str | None = None  # why skip-step dropped this finite update (monitor.skip_spikes), else None
    clip: float | None = None  # the norm ZClip clipped the gradients to (train.grad_clip_mode: zscore), else None
    aux: dict[str, float] = field(default_factory=dict)  # `aux/<name>`: each auxiliary loss, mean per target token
    diagnostics: dict[str, float] = field(default_factory=dict)  # `diag/<name>`: max- or mean-reduced (GPT.loss_terms)


def step_inputs(tr: Trainer, spec: StepSpec) -> dict | None:
    """The model inputs of the curriculum's step: its attention window as a 0-dim int64 tensor (one compiled graph
    for every window), or None for full causal attention (the model's plain path, exactly as without a window)."""
    if spec.window is None:
        return None
    return {"window": torch.tensor(spec.window, dtype=torch.int64, device=tr.device)}


def train_step(tr: Trainer, batch: Batch, lr: float, autocast, inputs: dict | None = None) -> StepResult:
    """One optimizer step over the global batch, accumulated over micro-batches (and processes).

    The loss is the mean over the global batch's target tokens (not the mean of micro-batch
    means), so padding and uneven micro-batches weigh every token equally. Each process holds a
    share of the batch; DDP/FSDP average the gradients over the processes, so each share's loss
    is scaled by their number to make the sum over shares the single-process loss. The output
    layer and the loss are computed chunk by chunk (`linear_cross_entropy`), so the full logits of
    a micro-batch never exist in memory.

    `inputs`: the step's model inputs (`GPT.forward`'s keywords, e.g. `{"window": tensor}`), given to
    every micro-batch's forward. The model's auxiliary terms (`aux/<name>`, sums over the targets) join
    the gradient, divided by the same token count; the returned `loss` is the cross-entropy alone.
    """
    t = tr.cfg.train
    for group in tr.optimizer.param_groups:
        group["lr"] = lr
    x_all, y_all = batch.inputs.to(tr.device, non_blocking=True), batch.targets.to(tr.device, non_blocking=True)
    # A melted step has `split` rows per sequence: a micro-batch keeps its tokens (OLMo-core raises its micro-batch
    # size likewise), and accumulates as many micro-batches as an unmelted step.
    rows = t.micro_batch_size * batch.split
    micro = list(zip(x_all.split(rows), y_all.split(rows)))
    total = torch.zeros((), device=tr.device)
    extras: dict[str, torch.Tensor] = {}  # the micro-batches' aux terms and diagnostics, combined
    for i, (x, y) in enumerate(micro):
        # DDP's no_sync must cover the backward; autocast only the forward (as torch.amp advises).
        with _gradient_sync(tr, last=i == len(micro) - 1):
            with autocast:
                ce, terms = _loss_sum(tr, x, y, inputs)
                loss = ce / batch.tokens
                aux = [v for k, v in terms.items() if k.startswith("aux/")]
                # Without auxiliary terms the objective is `loss` itself, the same arithmetic as before them.
                objective = loss + sum(aux) / batch.tokens if aux else loss
            tr.scaler.scale(objective * tr.env.world_size if tr.env.enabled else objective).backward()
        total += loss.detach()
        _combine(extras, terms, batch.tokens, len(micro))
    # The global batch's mean loss, on every rank; a stop signal on any rank rides on the same
    # all-reduce, so that all ranks stop after the same step without a collective of its own.
    # The aux terms (already means over the global batch's tokens) and mean diagnostics ride on it too.
    signal_flag = float(tr.env.enabled and tr.stop is not None and tr.stop.requested is not None)
    summed = sorted(k for k in extras if not _max_reduced(k))
    maxed = sorted(k for k in extras if _max_reduced(k))
    reduced = distributed.all_reduce(
        torch.stack([total, torch.tensor(signal_flag, device=tr.device), *(extras[k] for k in summed)])
    )
    if maxed:
        reduced = torch.cat([reduced, distributed.all_reduce(torch.stack([extras[k] for k in maxed]), op="max")])
    tr.scaler.unscale_(tr.optimizer)
    if tr.zclip is None:
        max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
        total_norm = torch.nn.utils.clip_grad_norm_(tr.model.parameters(), max_norm)
    else:  # ZClip's threshold depends on the norm: measured now, clipped after the sync below (no second sync)
        total_norm = torch.nn.utils.get_total_norm([p.grad for p in tr.model.parameters() if p.grad is not None])
    grad_norm = distributed.full(total_norm)
    loss, signalled, *values, norm = torch.cat([reduced, grad_norm.float()[None]]).tolist()  # one host sync for all
    world = tr.env.world_size if tr.env.enabled else 1
    read = dict(zip(summed + maxed, values))
    aux = {k: v for k, v in read.items() if k.startswith("aux/")}
    diagnostics = {k: v / world if k in summed else v for k, v in read.items() if k.startswith("diag/")}
    # A non-finite loss or gradient never reaches the weights. Under fp16 an infinite gradient with
    # a finite loss is a loss-scale overflow: the scaler skips that step itself and lowers its scale.
    # Both numbers are global, so every rank takes the same decision.
    applied = math.isfinite(loss) and math.isfinite(norm)
    overflow = tr.scaler.is_enabled() and math.isfinite(loss) and not applied
    # Skip-step and ZClip decide on the host values above, before the optimizer step (seqwarm.stability.decide).
    spike, clip = stability.decide(tr, loss, norm) if applied else (None, None)
    if spike is not None:
        applied = False  # no optimizer step: the weights, Adam's moments and its step count stay as they were
    elif clip is not None:
        stability.clip_to(tr, clip, total_norm)
    if applied or overflow:
        tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    tr.optimizer.zero_grad(set_to_none=True)
    return StepResult(
        loss, norm, applied, overflow, signalled > 0, aux=aux, diagnostics=diagnostics, spike=spike, clip=clip
    )


def _max_reduced(key: str) -> bool:
    """A diagnostic named `...max` is reduced by max over micro-batches and processes; any other by mean."""
    return key.startswith("diag/") and key.endswith("max")


def _combine(into: dict[str, torch.Tensor], terms: dict[str, torch.Tensor], tokens: int, n_micro: int) -> None:
    """Add one micro-batch's `aux/` terms (as a mean over the step's tokens) and `diag/` values to `into`."""
    for key, value in terms.items():
        value = value.detach().float()
        if key.startswith("aux/"):
            value = value / tokens
        elif not key.startswith("diag/"):
            raise ValueError(f"model output {key!r}: extras are named aux/<name> or diag/<name>")
        elif not _max_reduced(key):
            value = value / n_micro
        if key not in into:
            into[key] = value
        else:
            into[key] = torch.maximum(into[key], value) if _max_reduced(key) else into[key] + value


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


def _loss_sum(
    tr: Trainer, x: torch.Tensor, y: torch.Tensor, inputs: dict | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model on inputs x against targets y (IGNORE_INDEX skipped): `(ce_sum, extras)` (`GPT.loss_terms`)."""
    if tr.cfg.train.compile and tr.plan.curriculum.varies_length:
        # Only the length varies under SLW. Marking just that dimension dynamic (rather than
        # `dynamic=True`) keeps the batch size static, so dynamo cannot tie the two together when
        # they happen to be equal (batch 8 at seqlen 8) and recompile when they part.
        x = x.clone()  # not a view: dynamo would guard on the shape of its base
        torch._dynamo.mark_dynamic(x, 1)
        if tr.plan.curriculum.varies_rows:  # melted steps: more, shorter rows per micro-batch
            torch._dynamo.mark_dynamic(x, 0)
    return tr.engine(x, y, ignore_index=IGNORE_INDEX, **(inputs or {}))


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
        "clipped": result.applied and (result.clip is not None if tr.zclip else 0 < t.grad_clip < result.grad_norm),
    }
    row |= result.aux | result.diagnostics  # `aux/<name>`, `diag/<name>`: whatever the model returned
    if not result.applied:
        row["skipped"] = "fp16 overflow" if result.overflow else "spike" if result.spike else "non-finite"
    if result.spike:
        row["skip_reason"] = result.spike
    if result.clip is not None:
        row["clip_norm"] = result.clip
    return row


def adam_row(tr: Trainer, result: StepResult) -> dict:
    """Adam's variance/momentum statistics, on the steps `monitor.adam_every_steps` selects; per parameter group
    on the instrumented steps (`monitor.instruments`)."""
    if not result.applied:
        return {}
    groups = stability.instrument_row(tr) if stability.instrumented(tr, tr.clock.step) else {}
    if tr.clock.step % tr.cfg.monitor.adam_every_steps:
        return groups
    stats = adam_statistics(tr.optimizer)
    if stats is None:
        return groups
    if distributed.is_sharded(tr.model):  # each rank holds a shard of the state: combine them
        stats = torch.cat([distributed.all_reduce(stats[[0, 2]]), distributed.all_reduce(stats[1:2], op="max")])[
            [0, 2, 1]
        ]
    return groups | dict(zip(ADAM_KEYS, stats.tolist()))  # one read-back for all three


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
            sums[0] += _loss_sum(tr, rows[:, :-1], targets)[0].double()  # the cross-entropy alone
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
    rows = read_metrics(tr.run_dir / METRICS)
    summary = {
        "run_dir": str(tr.run_dir),
        "steps": tr.clock.step,
        "tokens": tr.clock.tokens,
        "wall_s": tr.wall_s(),
        "params": sum(p.numel() for p in tr.model.parameters()),
        **run_summary(rows),
        **stability.summary(tr, rows),  # the stability toolkit's switches and events, those that are on
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
