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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from seqwarm import __version__
from seqwarm.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from seqwarm.config import Config, load_config, save_config
from seqwarm.curriculum import BatchSchedule, SeqlenSchedule
from seqwarm.data.loader import IGNORE_INDEX, Batch, SequenceIndex, TokenData, TrainLoader
from seqwarm.data.prepare import ensure_builtin
from seqwarm.errors import ConfigError, DivergedError, SeqwarmError
from seqwarm.model import GPT, linear_cross_entropy
from seqwarm.monitor import ADAM_KEYS, LossRatio, NonFiniteGuard, adam_statistics, all_finite
from seqwarm.runtime import keep_freed_memory
from seqwarm.schedule import Clock, finished, learning_rate

METRICS = "metrics.jsonl"


class MetricsLog:
    """metrics.jsonl (one JSON object per line), mirrored to TensorBoard when asked."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.file = open(run_dir / METRICS, "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["step"])

    def flush(self) -> None:
        self.file.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


@dataclass
class Trainer:
    """Everything `fit` works on; each stateful part has `state_dict()`/`load_state_dict()`."""

    cfg: Config
    run_dir: Path
    device: torch.device
    model: GPT
    hidden_fn: Callable[[torch.Tensor], torch.Tensor]  # model.hidden, compiled or not
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def open_data(cfg: Config, progress: bool = True) -> TokenData:
    path = ensure_builtin(progress) if cfg.data.path == "builtin" else cfg.data.path
    return TokenData(path, verify=cfg.data.verify, vocab_size=cfg.model.gpt().vocab_size)


def build(cfg: Config, run_dir: Path, data: TokenData) -> Trainer:
    device = resolve_device(cfg.train.device)
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs CUDA (use bf16 or fp32 on cpu)")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if device.type == "cpu":
        keep_freed_memory()
    seqlen_end = cfg.curriculum.seqlen_end
    train_index = data.sequences("train", seqlen_end)
    val_index = data.sequences("val", seqlen_end)

    torch.manual_seed(cfg.run.seed)
    model = GPT(cfg.model.gpt()).to(device)
    hidden_fn = model.hidden
    if cfg.train.compile:
        # The Transformer is compiled; the chunked output layer + loss stays eager (a Python loop over
        # chunks, matmul-bound). Static shapes; `_loss_sum` marks the length dynamic, so SLW compiles
        # one graph for all lengths.
        hidden_fn = torch.compile(model.hidden, dynamic=False)
    t = cfg.train
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
        model=model,
        hidden_fn=hidden_fn,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=t.precision == "fp16"),
        loader=TrainLoader(train_index, seed=cfg.run.seed, drop_tail=cfg.curriculum.drop_tail),
        val=val_index,
        seqlen=SeqlenSchedule(cfg.curriculum),
        batch_size=BatchSchedule(cfg.curriculum, t.global_batch_size, unit=t.micro_batch_size),
        clock=Clock(),
        loss_ratio=LossRatio(),
        guard=NonFiniteGuard(cfg.monitor.on_nonfinite, cfg.monitor.max_consecutive_skips),
    )


def train(cfg: Config, *, resume: bool = False, force: bool = False, progress: bool = True, on_step=None) -> dict:
    """Validate, set up the run directory, train. Returns the run summary.

    Nothing in the run directory is touched until the config and the data have been checked.
    """
    run_dir = Path(cfg.run.dir)
    checkpoint = None
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise SeqwarmError(f"{run_dir}: no checkpoint to resume from (start over with --force)")
    elif run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise SeqwarmError(f"{run_dir}: run directory exists; use --resume to continue it or --force to replace it")
    data = open_data(cfg, progress)
    trainer = build(cfg, run_dir, data)

    if checkpoint is not None:
        restore(trainer, checkpoint)
    else:
        if force and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return fit(trainer, progress=progress, on_step=on_step)


def restore(tr: Trainer, checkpoint: Path) -> None:
    state = load_checkpoint(checkpoint, model=tr.model, optimizer=tr.optimizer)
    tr.clock.load_state_dict(state["clock"])
    tr.loader.load_state_dict(state["loader"])
    tr.loss_ratio.load_state_dict(state["loss_ratio"])
    tr.guard.load_state_dict(state["guard"])
    tr.scaler.load_state_dict(state["scaler"]) if state["scaler"] else None
    tr.time_offset = state["time_s"]
    # Rows logged after this checkpoint belong to the interrupted session: the resumed run
    # writes them again, so drop them to keep one row per step.
    rows = read_metrics(tr.run_dir / METRICS)
    keep = [r for r in rows if r["step"] <= tr.clock.step]
    (tr.run_dir / METRICS).write_text("".join(json.dumps(r) + "\n" for r in keep))


def fit(tr: Trainer, *, progress: bool = True, on_step=None) -> dict:
    cfg, t, clock = tr.cfg, tr.cfg.train, tr.clock
    start = time.perf_counter() - tr.time_offset
    autocast = _autocast(tr.device, t.precision)
    bar = _progress_bar(cfg, clock, enabled=progress and cfg.log.progress)
    tr.model.train()
    log = MetricsLog(tr.run_dir, cfg.log.tensorboard)
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
    return write_summary(tr, time.perf_counter() - start)


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over the global batch's target tokens
    grad_norm: float  # global l2 norm before clipping
    applied: bool  # the update reached the weights
    overflow: bool  # fp16 loss-scale overflow: skipped by the scaler, which lowers its scale


def train_step(tr: Trainer, batch: Batch, lr: float, autocast) -> StepResult:
    """One optimizer step over the global batch, accumulated over micro-batches.

    The loss is the mean over the global batch's target tokens (not the mean of micro-batch
    means), so padding and uneven micro-batches weigh every token equally. The output layer and
    the loss are computed chunk by chunk (`linear_cross_entropy`), so the full logits of a
    micro-batch never exist in memory.
    """
    t = tr.cfg.train
    for group in tr.optimizer.param_groups:
        group["lr"] = lr
    inputs, targets = batch.inputs.to(tr.device, non_blocking=True), batch.targets.to(tr.device, non_blocking=True)
    total = torch.zeros((), device=tr.device)
    for x, y in zip(inputs.split(t.micro_batch_size), targets.split(t.micro_batch_size)):
        with autocast:
            loss = _loss_sum(tr, x, y) / batch.tokens
        tr.scaler.scale(loss).backward()
        total += loss.detach()
    tr.scaler.unscale_(tr.optimizer)
    max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(tr.model.parameters(), max_norm)
    loss, norm = torch.stack([total, grad_norm.float()]).tolist()  # one host sync for both
    # A non-finite loss or gradient never reaches the weights. Under fp16 an infinite gradient with
    # a finite loss is a loss-scale overflow: the scaler skips that step itself and lowers its scale.
    applied = math.isfinite(loss) and math.isfinite(norm)
    overflow = tr.scaler.is_enabled() and math.isfinite(loss) and not applied
    if applied or overflow:
        tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    tr.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, norm, applied, overflow)


def _loss_sum(tr: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the model on inputs x against targets y (IGNORE_INDEX skipped)."""
    if tr.cfg.train.compile and tr.cfg.curriculum.kind != "none":
        # Only the length varies under SLW. Marking just that dimension dynamic (rather than
        # `dynamic=True`) keeps the batch size static, so dynamo cannot tie the two together when
        # they happen to be equal (batch 8 at seqlen 8) and recompile when they part.
        x = x.clone()  # not a view: dynamo would guard on the shape of its base
        torch._dynamo.mark_dynamic(x, 1)
    hidden = tr.hidden_fn(x)
    return linear_cross_entropy(hidden, tr.model.wte.weight, y, vocab_size=tr.model.cfg.vocab_size, ignore_index=IGNORE_INDEX)


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
    return {} if stats is None else dict(zip(ADAM_KEYS, stats.tolist()))  # one read-back for all three


@torch.no_grad()
def evaluate(tr: Trainer, autocast) -> float:
    """Mean loss per token on the fixed full-length validation sequences."""
    n = min(tr.cfg.eval.max_sequences, len(tr.val))
    total = count = 0.0
    tr.model.eval()
    for i in range(0, n, tr.cfg.eval.batch_size):
        rows = tr.val.rows(range(i, min(i + tr.cfg.eval.batch_size, n))).to(tr.device)
        with autocast:
            total += _loss_sum(tr, rows[:, :-1], rows[:, 1:]).item()
        count += rows[:, 1:].numel()
    tr.model.train()
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


def save(tr: Trainer, time_s: float) -> Path:
    if not all_finite(tr.model.parameters()):
        raise SeqwarmError(f"step {tr.clock.step}: the weights are not finite; not saving a checkpoint of them")
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
    return save_checkpoint(
        tr.run_dir, tr.clock.step, model=tr.model, optimizer=tr.optimizer, state=state, keep_last=tr.cfg.checkpoint.keep_last
    )


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
