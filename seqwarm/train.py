"""The training loop: length -> batch -> forward/backward -> clip -> step -> log -> eval -> save.

`train(cfg)` validates everything (config, data, run directory) before it changes anything, then
`fit` runs the loop. Every quantity that decides what a step does is a function of the clock:
the SLW length of the step (pacing, Section 4), its learning rate (token-wise decay, Appendix A.2)
and whether training is over (token-wise termination, Section 5.1).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from seqwarm import __version__, distributed
from seqwarm.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from seqwarm.config import Config, load_config, save_config
from seqwarm.curriculum import BatchSchedule, SeqlenSchedule
from seqwarm.data.loader import IGNORE_INDEX, Batch, SequenceIndex, TokenData, TrainLoader
from seqwarm.data.prepare import ensure_builtin
from seqwarm.errors import ConfigError, DivergedError, SeqwarmError
from seqwarm.distributed import DistEnv
from seqwarm.model import GPT
from seqwarm.monitor import ADAM_KEYS, LossRatio, NonFiniteGuard, adam_statistics, all_finite
from seqwarm.runtime import keep_freed_memory
from seqwarm.schedule import Clock, finished, learning_rate

METRICS = "metrics.jsonl"


class MetricsLog:
    """metrics.jsonl (one JSON object per line), mirrored to TensorBoard when asked.

    Only rank 0 writes (`enabled=False` elsewhere): every rank computes the same rows.
    """

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True, start_step: int = 0):
        self.file = self.tb = None
        if not enabled:
            return
        # On a resume from the checkpoint of step S, what was logged after S belongs to the
        # interrupted session and is logged again: drop those rows, and have TensorBoard hide those
        # events (purge_step), so every step appears once. A fresh run has nothing to drop.
        path = run_dir / METRICS
        if path.exists():
            keep = [r for r in read_metrics(path) if r["step"] <= start_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        self.file = open(path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)

    def write(self, row: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["step"])

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


@dataclass
class Trainer:
    """Everything `fit` works on; each stateful part has `state_dict()`/`load_state_dict()`."""

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
    seqlen: SeqlenSchedule
    batch_size: BatchSchedule
    clock: Clock
    loss_ratio: LossRatio
    guard: NonFiniteGuard
    time_offset: float = 0.0  # wall seconds of earlier sessions of this run (resume)


def resolve_device(name: str, env: DistEnv = DistEnv()) -> torch.device:
    """cpu, or this process's GPU (LOCAL_RANK under torchrun)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    if name == "cpu":
        return torch.device("cpu")
    if env.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {env.local_rank}: this machine has {torch.cuda.device_count()} CUDA devices")
    torch.cuda.set_device(env.local_rank)
    return torch.device("cuda", env.local_rank)


def check_parallel(cfg: Config, env: DistEnv) -> None:
    """The global batch must split into whole micro-batches on every process (before anything starts)."""
    t, c = cfg.train, cfg.curriculum
    unit = t.micro_batch_size * env.world_size
    if t.global_batch_size % unit:
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) must be a multiple of processes x train.micro_batch_size "
            f"({env.world_size} x {t.micro_batch_size} = {unit})"
        )
    if c.kind == "bsz_warmup" and c.batch_size_start < unit:
        raise ConfigError(
            f"curriculum.batch_size_start ({c.batch_size_start}) is below one micro-batch per process "
            f"({env.world_size} x {t.micro_batch_size} = {unit})"
        )


def open_data(cfg: Config, progress: bool = True) -> TokenData:
    path = ensure_builtin(progress) if cfg.data.path == "builtin" else cfg.data.path
    return TokenData(path, verify=cfg.data.verify, vocab_size=cfg.model.gpt().vocab_size)


def build(cfg: Config, run_dir: Path, data: TokenData, env: DistEnv = DistEnv(), device: torch.device | None = None) -> Trainer:
    device = device or resolve_device(cfg.train.device, env)
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs CUDA (use bf16 or fp32 on cpu)")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if device.type == "cpu":
        keep_freed_memory()
    seqlen_end = cfg.curriculum.seqlen_end
    train_index = data.sequences("train", seqlen_end)
    val_index = data.sequences("val", seqlen_end)

    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    model = GPT(cfg.model.gpt()).to(device)
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
        fused=device.type == "cuda",
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
            train_index, seed=cfg.run.seed, drop_tail=cfg.curriculum.drop_tail, rank=env.rank, world_size=env.world_size
        ),
        val=val_index,
        seqlen=SeqlenSchedule(cfg.curriculum),
        batch_size=BatchSchedule(cfg.curriculum, t.global_batch_size, unit=t.micro_batch_size * env.world_size),
        clock=Clock(),
        loss_ratio=LossRatio(),
        guard=NonFiniteGuard(cfg.monitor.on_nonfinite, cfg.monitor.max_consecutive_skips),
    )


def train(cfg: Config, *, resume: bool = False, force: bool = False, progress: bool = True, on_step=None) -> dict:
    """Validate, set up the run directory, train. Returns the run summary.

    Nothing in the run directory is touched until the config and the data have been checked.
    Under torchrun every process calls this; rank 0 alone writes to the run directory.
    """
    env = distributed.env_from_torchrun()
    check_parallel(cfg, env)
    run_dir = Path(cfg.run.dir)
    checkpoint = None
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise SeqwarmError(f"{run_dir}: no checkpoint to resume from (start over with --force)")
    elif run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise SeqwarmError(f"{run_dir}: run directory exists; use --resume to continue it or --force to replace it")
    device = resolve_device(cfg.train.device, env)
    joined = distributed.init(env, device, cfg.train.dist_timeout_s)
    try:
        if env.main:  # rank 0 prepares the builtin corpus, if needed, before the others read it
            data = open_data(cfg, progress)
        distributed.barrier(env)
        if not env.main:
            data = open_data(cfg, progress=False)
        trainer = build(cfg, run_dir, data, env, device)
        if checkpoint is not None:
            restore(trainer, checkpoint)
        elif env.main:
            if force and run_dir.exists():
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
        if env.main:
            save_config(cfg, run_dir / "config.yaml")
        distributed.barrier(env)
        return fit(trainer, progress=progress, on_step=on_step)
    finally:
        if joined:
            distributed.shutdown()


def restore(tr: Trainer, checkpoint: Path) -> None:
    """Continue from a checkpoint, written by any number of processes (its tensors are unsharded)."""
    ck = load_checkpoint(checkpoint)
    distributed.load_full_state(tr.model, tr.optimizer, ck.model, ck.optimizer)
    if not set_rng_state(ck.rng, tr.env.rank):
        # More processes than wrote the checkpoint: a fresh dropout stream, still a function of the run.
        torch.manual_seed(tr.cfg.run.seed + tr.env.rank + 7919 * ck.state["clock"]["step"])
    state = ck.state
    tr.clock.load_state_dict(state["clock"])
    tr.loader.load_state_dict(state["loader"])
    tr.loss_ratio.load_state_dict(state["loss_ratio"])
    tr.guard.load_state_dict(state["guard"])
    tr.scaler.load_state_dict(state["scaler"]) if state["scaler"] else None
    tr.time_offset = state["time_s"]


def fit(tr: Trainer, *, progress: bool = True, on_step=None) -> dict:
    cfg, t, clock = tr.cfg, tr.cfg.train, tr.clock
    start = time.perf_counter() - tr.time_offset
    autocast = _autocast(tr.device, t.precision)
    bar = _progress_bar(cfg, clock, enabled=progress and cfg.log.progress and tr.env.main)
    tr.model.train()
    log = MetricsLog(tr.run_dir, cfg.log.tensorboard, enabled=tr.env.main, start_step=clock.step)
    try:
        if clock.step == 0 and cfg.eval.every_tokens is not None:
            evaluate_and_log(tr, log, start, autocast)  # the curves start at the initial model
        while not finished(clock, t):
            seqlen = tr.seqlen(clock.step)  # SLW/Shortformer: a function of the step (Section 4)
            batch = tr.loader.next_batch(tr.batch_size(clock.tokens), seqlen)  # bsz warmup: of the tokens
            lr = learning_rate(clock.after(batch.tokens, t), t)
            step = train_step(tr, batch, lr, autocast)
            prev_tokens = clock.tokens
            # A skipped update trained on nothing: the step counts (pacing moves on, the batch is
            # dropped) but its tokens do not.
            clock.tick(batch.tokens if step.applied else 0, t)

            row = step_row(tr, batch, seqlen, lr, step) | adam_row(tr, step)
            row["time_s"] = time.perf_counter() - start
            log.write(row)
            # A loss-scale overflow is fp16's normal way to find its scale, not a failure.
            reason = None if step.overflow else tr.guard.observe(step.applied)
            if reason:
                raise DivergedError(
                    f"step {clock.step}: loss {step.loss}, gradient norm {step.grad_norm}; the update was not "
                    f"applied; stopping: {reason} (the last checkpoint is intact)"
                )

            if _crossed(prev_tokens, clock.tokens, cfg.eval.every_tokens) or finished(clock, t):
                log.flush()
                evaluate_and_log(tr, log, start, autocast)
            if (cfg.checkpoint.every_steps and clock.step % cfg.checkpoint.every_steps == 0) or finished(clock, t):
                log.flush()
                save(tr, time.perf_counter() - start)
            bar.update(clock.tokens - prev_tokens if t.max_tokens else 1)
            if clock.step % cfg.log.every_steps == 0:
                bar.set_postfix(step=clock.step, seqlen=seqlen, loss=f"{step.loss:.3f}", lr=f"{lr:.2e}", refresh=False)
            if on_step is not None:
                on_step(clock)
    finally:
        log.close()
    bar.close()
    summary = write_summary(tr, time.perf_counter() - start) if tr.env.main else None
    return distributed.broadcast(summary, tr.env)


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over the global batch's target tokens
    grad_norm: float  # global l2 norm before clipping
    applied: bool  # the update reached the weights
    overflow: bool  # fp16 loss-scale overflow: skipped by the scaler, which lowers its scale


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
    distributed.all_reduce(total)  # the global batch's mean loss, on every rank
    tr.scaler.unscale_(tr.optimizer)
    max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
    grad_norm = distributed.full(torch.nn.utils.clip_grad_norm_(tr.model.parameters(), max_norm))
    loss, norm = torch.stack([total, grad_norm.float()]).tolist()  # one host sync for both
    # A non-finite loss or gradient never reaches the weights. Under fp16 an infinite gradient with
    # a finite loss is a loss-scale overflow: the scaler skips that step itself and lowers its scale.
    # Both numbers are global, so every rank takes the same decision.
    applied = math.isfinite(loss) and math.isfinite(norm)
    overflow = tr.scaler.is_enabled() and math.isfinite(loss) and not applied
    if applied or overflow:
        tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    tr.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, norm, applied, overflow)


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


def step_row(tr: Trainer, batch: Batch, seqlen: int, lr: float, step: StepResult) -> dict:
    """The metrics row of the step that just ticked the clock (Section 3's instruments included)."""
    t = tr.cfg.train
    row = {
        "step": tr.clock.step,
        "tokens": tr.clock.tokens,
        "seqlen": seqlen,
        "batch_size": len(batch.starts),
        "lr": lr,
        "loss": step.loss,
        "loss_ratio": tr.loss_ratio(step.loss),
        "grad_norm": step.grad_norm,
        "clipped": step.applied and 0 < t.grad_clip < step.grad_norm,
    }
    if not step.applied:
        row["skipped"] = "fp16 overflow" if step.overflow else "non-finite"
    return row


def adam_row(tr: Trainer, step: StepResult) -> dict:
    """Adam's variance/momentum statistics, on the steps `monitor.adam_every_steps` selects."""
    if not step.applied or tr.clock.step % tr.cfg.monitor.adam_every_steps:
        return {}
    stats = adam_statistics(tr.optimizer)
    if stats is None:
        return {}
    if distributed.is_sharded(tr.model):  # each rank holds a shard of the state: combine them
        stats = torch.cat([distributed.all_reduce(stats[[0, 2]]), distributed.all_reduce(stats[1:2], op="max")])[[0, 2, 1]]
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


def evaluate_and_log(tr: Trainer, log: MetricsLog, start: float, autocast) -> None:
    """Validate and append an eval row to the metrics."""
    val_loss = evaluate(tr, autocast)
    row = {
        "step": tr.clock.step,
        "tokens": tr.clock.tokens,
        "time_s": time.perf_counter() - start,
        "val/loss": val_loss,
        "val/ppl": math.exp(min(val_loss, 50.0)),
    }
    log.write(row)


def save(tr: Trainer, time_s: float) -> Path | None:
    """A checkpoint of the whole run; a collective under torchrun (rank 0 writes full, unsharded tensors)."""
    bad = torch.tensor([0.0 if all_finite(distributed.local(p) for p in tr.model.parameters()) else 1.0], device=tr.device)
    if distributed.all_reduce(bad, op="max").item():  # every rank decides alike
        raise SeqwarmError(f"step {tr.clock.step}: the weights are not finite; not saving a checkpoint of them")
    model_state = distributed.full_model_state(tr.model)
    optimizer_state = distributed.full_optimizer_state(tr.model, tr.optimizer)
    rng = distributed.gather_dicts(rng_state(tr.env.rank), tr.env)  # each rank's dropout stream
    path = None
    if tr.env.main:
        state = {
            "seqwarm": __version__,
            "clock": tr.clock.state_dict(),
            "loader": tr.loader.state_dict(),
            "loss_ratio": tr.loss_ratio.state_dict(),
            "guard": tr.guard.state_dict(),
            "scaler": tr.scaler.state_dict() if tr.scaler.is_enabled() else None,
            "time_s": time_s,
            "model": tr.cfg.model.gpt().__dict__,
        }
        path = save_checkpoint(
            tr.run_dir,
            tr.clock.step,
            model_state=model_state,
            optimizer_state=optimizer_state,
            rng=rng,
            state=state,
            keep_last=tr.cfg.checkpoint.keep_last,
        )
    distributed.barrier(tr.env)
    return path


def write_summary(tr: Trainer, wall_s: float) -> dict:
    """summary.json: the run's totals, its validation results and its stability record (Section 3)."""
    rows = read_metrics(tr.run_dir / METRICS)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "val/loss" in r]
    best = min(eval_rows, key=lambda r: r["val/loss"]) if eval_rows else None
    last = eval_rows[-1] if eval_rows else None
    ratios = [r["loss_ratio"] for r in train_rows if math.isfinite(r["loss_ratio"])]
    var_max = [r["adam/var_max"] for r in train_rows if "adam/var_max" in r]
    n = max(len(train_rows), 1)
    summary = {
        "run_dir": str(tr.run_dir),
        "steps": tr.clock.step,
        "tokens": tr.clock.tokens,
        "wall_s": wall_s,
        "params": sum(p.numel() for p in tr.model.parameters()),
        "final_val_loss": last["val/loss"] if last else None,
        "final_val_ppl": last["val/ppl"] if last else None,
        "best_val_loss": best["val/loss"] if best else None,
        "best_val_ppl": best["val/ppl"] if best else None,
        "max_loss_ratio": max(ratios, default=None),
        "steps_loss_ratio_gt_1.2": sum(x > 1.2 for x in ratios),
        "pct_steps_loss_ratio_gt_1.2": 100.0 * sum(x > 1.2 for x in ratios) / n,
        "steps_loss_ratio_gt_1.5": sum(x > 1.5 for x in ratios),
        "pct_steps_loss_ratio_gt_1.5": 100.0 * sum(x > 1.5 for x in ratios) / n,
        "max_adam_var_max": max(var_max, default=None),
        "clip_count": sum(bool(r.get("clipped")) for r in train_rows),
        "skipped_steps": sum("skipped" in r for r in train_rows),
    }
    (tr.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; a last line cut by a crash is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


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
        desc=Path(cfg.run.dir).name,
        disable=not enabled,
        dynamic_ncols=True,
    )


def main_train(config_path: str | None, overrides: list[str], *, resume: str | None, force: bool) -> dict:
    """`seqwarm train`: a new run from CONFIG, or `--resume RUN_DIR` with the run's saved config."""
    if resume is not None:
        if config_path is not None:
            raise ConfigError("train: give either CONFIG or --resume RUN_DIR, not both")
        cfg = load_config(Path(resume) / "config.yaml", [*overrides, f"run.dir={resume}"])
    else:
        cfg = load_config(config_path, overrides)
    return train(cfg, resume=resume is not None, force=force)
