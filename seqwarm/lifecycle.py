"""A run's lifecycle around the loop: claim the run directory, choose and verify the checkpoint to
continue from, build the trainer, train, release.

`train(cfg)` validates everything (config, data, run directory) before it changes anything, then
`seqwarm.trainer.fit` runs the loop. `main_train` is the `seqwarm train` command.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

from seqwarm import checkpoint as ckpt
from seqwarm import distributed, files, rundir
from seqwarm.checkpoint import Checkpoint, read_checkpoint
from seqwarm.config import Config, load_config
from seqwarm.data.corpus import open_data
from seqwarm.distributed import DistEnv
from seqwarm.errors import ConfigError, SeqwarmError
from seqwarm.interrupt import graceful_stop
from seqwarm.preflight import preflight
from seqwarm.runtime import resolve_device
from seqwarm.schedule import Clock
from seqwarm.stability import step_inputs
from seqwarm.trainer import FitHook, _autocast, build, check_parallel, fit, with_resolved_precision


def train(
    cfg: Config,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    on_step: Callable[[Clock], None] | None = None,
) -> dict:
    """Validate, set up the run directory, train. Returns the run summary.

    Nothing in the run directory is touched until the config and the data have been checked. On
    `resume`, `cfg` may differ from the run's config.yaml only in what does not change what is
    computed (`seqwarm.rundir.resume_changes`); the newest checkpoint that passes verification is
    used. Under torchrun every process calls this; rank 0 alone locks and writes the run directory.
    SIGINT/SIGTERM stop the run after the current step with a checkpoint (`seqwarm.interrupt`).
    """
    _refuse_resume_with_force(resume, force)
    env = distributed.env_from_torchrun()
    check_parallel(cfg, env)
    device = resolve_device(cfg.train.device, env.local_rank)
    cfg = with_resolved_precision(cfg, device)  # config.yaml records what `auto` became on this machine
    run_dir = Path(cfg.run.dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SeqwarmError(f"run.dir {run_dir}: exists and is not a directory")
    joined = distributed.init(env, device, cfg.train.dist_timeout_s)
    created = not run_dir.exists()
    try:
        with contextlib.ExitStack() as held:
            loaded: list[Checkpoint] = []  # rank 0's verified checkpoint, read once

            def claim() -> tuple[Path | None, dict]:
                held.enter_context(files.directory_lock(run_dir, what="run directory"))
                if created:  # runs before the lock is released, and only by the process that held it
                    held.callback(_remove_if_unused, run_dir)
                return _check_run_dir(cfg, run_dir, resume=resume, force=force, loaded=loaded)

            checkpoint, changes = _on_rank0(env, claim)
            stop = held.enter_context(graceful_stop())
            if env.main:  # rank 0 prepares the builtin corpus, if needed, before the others read it
                data = open_data(cfg, progress)
            distributed.barrier(env)
            if not env.main:
                data = open_data(cfg, progress=False)
            trainer = build(cfg, run_dir, data, env, device)
            trainer.stop = stop
            if cfg.train.preflight:  # before anything is written: an out-of-memory leaves the run directory as it was
                preflight(trainer, _autocast(device, cfg.train.precision), step_inputs(trainer, cfg.monitor.every))
            if checkpoint is not None:
                trainer.load_state_dict(loaded[0] if loaded else read_checkpoint(checkpoint))
                trainer.last_checkpoint = checkpoint
                if env.main and changes:
                    rundir.record_resume(run_dir, trainer.clock, changes)
            elif env.main:
                if not files.only_lock(run_dir):  # --force (checked), or --resume of a run with no checkpoint yet
                    rundir.clear_run_dir(run_dir)
                rundir.write_marker(run_dir)
            if env.main:
                rundir.write_config(run_dir, cfg)
            distributed.barrier(env)
            summary = fit(trainer, progress=progress, hook=FitHook(on_step=on_step) if on_step else None)
            if stop.requested and env.main:  # it came during the last step, its eval or the summary
                _note(f"{stop.name} received as the run ended: it finished, nothing was cut short")
            return summary
    finally:
        if joined:
            distributed.shutdown()


def _refuse_resume_with_force(resume: bool, force: bool) -> None:
    """The one wording of this conflict, for `train` (the API) and `main_train` (the command, which
    must say it before it reads the run's config)."""
    if resume and force:
        raise ConfigError("--resume and --force conflict: --resume continues the run, --force replaces it; give one")


def _remove_if_unused(run_dir: Path) -> None:
    """A run directory this process created and then wrote nothing into (refused, or failed before its
    first file): removed, so that it does not stand in the way of the next attempt."""
    if run_dir.is_dir() and files.only_lock(run_dir):
        (run_dir / files.LOCK).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run_dir.rmdir()


def _on_rank0(env: DistEnv, fn: Callable[[], object]):
    """`fn()` on rank 0, its result (or its one-line error) on every rank, so all ranks stop alike."""
    result, error = None, None
    if env.main:
        try:
            result = fn()
        except SeqwarmError as e:
            error = e
    result, message = distributed.broadcast((result, None if error is None else str(error)), env)
    if error is not None:
        raise error
    if message is not None:
        raise SeqwarmError(message)
    return result


def _note(message: str) -> None:
    print(f"seqwarm: {message}", file=sys.stderr)


def _check_run_dir(
    cfg: Config, run_dir: Path, *, resume: bool, force: bool, loaded: list[Checkpoint]
) -> tuple[Path | None, dict]:
    """Under the run directory's lock: may this run write `run_dir`, and from which checkpoint?

    Returns (the checkpoint to resume from, or None to start at step 0; the resume's changes).
    Cleans what interrupted saves left. Changes nothing in the directory when it refuses.
    """
    if not resume:
        if not files.only_lock(run_dir):
            if not force:
                raise SeqwarmError(
                    f"{run_dir}: run directory exists; use --resume to continue it or --force to replace it"
                )
            rundir.check_replaceable(run_dir, keep={"data.path": _data_path(cfg)})
        return None, {}
    changes = rundir.resume_changes(rundir.read_config(run_dir), cfg)
    for name in ckpt.clean_checkpoints(run_dir):
        _note(f"{ckpt.checkpoint_dir(run_dir) / name}: removed, left by an interrupted save")
    chosen = ckpt.newest_verified(run_dir, lambda path: read_checkpoint(path, verify=True), doing="resuming from")
    if chosen is None and (run_dir / rundir.SUMMARY).exists():
        raise SeqwarmError(f"{run_dir}: finished ({rundir.SUMMARY}) and has no checkpoint left; nothing to resume")
    if chosen is None:
        rundir.check_replaceable(run_dir, keep={"data.path": _data_path(cfg)})
        _note(f"{run_dir}: no checkpoint yet (stopped before its first); training it from step 0")
        return None, {}
    for bad, _ in chosen.failed:  # out of the step-* names, so that training writes those steps afresh
        _note(f"{bad.name}: set aside as {ckpt.set_aside(bad).name}")
    loaded.append(chosen.value)
    return chosen.path, changes


def _data_path(cfg: Config) -> Path:
    """The directory `data.path` names (the cache's, for a builtin corpus name): what --force must not delete."""
    from seqwarm.data.builtin.names import builtin_data_dir, builtin_tokenizer

    path = cfg.data.path
    return builtin_data_dir(str(path)) if builtin_tokenizer(path) is not None else Path(path)


def main_train(config_path: str | None, overrides: list[str], *, resume: str | None, force: bool) -> dict:
    """`seqwarm train`: a new run from CONFIG, or `--resume RUN_DIR` with the run's saved config."""
    if resume is not None:
        if config_path is not None:
            raise ConfigError("train: give either CONFIG or --resume RUN_DIR, not both")
        _refuse_resume_with_force(True, force)
        cfg = rundir.read_config(Path(resume), [*overrides, f"run.dir={resume}"])
    else:
        cfg = load_config(config_path, overrides)
    return train(cfg, resume=resume is not None, force=force)
