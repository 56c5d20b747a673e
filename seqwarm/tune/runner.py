"""`seqwarm tune`'s runner: checks everything up front, trains the probes the search asks for, writes the outputs.

The train function is a parameter (`train_fn`, called as `train_fn(cfg, force=True, progress=...)`
like `seqwarm.lifecycle.train`, which `seqwarm.cli` passes in): tune is an analysis of short runs and
does not import the training loop itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from seqwarm.config import Config, load_config
from seqwarm.data.corpus import open_data
from seqwarm.distributed import env_from_torchrun
from seqwarm.errors import ConfigError, DivergedError
from seqwarm.tune.outputs import config_name, plan_line, probe_line, write_outputs
from seqwarm.tune.probes import (
    cached_probe,
    check_cache,
    diverged_step,
    drop_checkpoints,
    is_probe_dir,
    probe_config,
    probe_result,
    save_probe,
)
from seqwarm.tune.search import ProbeResult, TuneResult, horizon_note, max_ratio, resolve_plan, search
from seqwarm.tune.settings import TuneSettings, parse_settings

TrainFn = Callable[..., object]  # train_fn(cfg, force=True, progress=bool), as seqwarm.lifecycle.train


def run_probe(cfg: Config, train_fn: TrainFn, probes_dir: Path, *, progress: bool = True) -> ProbeResult:
    """Train the probe `cfg` (a `probe_config` under `probes_dir`), or read its cached result.

    A non-finite loss (`DivergedError`) makes it a diverged probe, cached like any other. Training
    replaces the probe's directory (force), so it must be one of this tune's probe directories.
    """
    run_dir = Path(cfg.run.dir)
    if not is_probe_dir(run_dir, probes_dir):
        raise ValueError(f"{run_dir}: not a probe directory under {probes_dir}")
    if (cached := cached_probe(run_dir)) is not None:
        return cached
    diverged = None
    try:
        train_fn(cfg, force=True, progress=progress)
    except DivergedError:
        diverged = diverged_step(run_dir)
    result = probe_result(cfg, diverged)
    drop_checkpoints(run_dir, probes_dir)
    save_probe(run_dir, result)
    return result


def run_tune(
    config: str | None,
    overrides: Sequence[str],
    settings: TuneSettings,
    out: Path,
    *,
    train_fn: TrainFn,
    budget_steps: int | None = None,
    progress: bool = True,
    log=print,
) -> TuneResult:
    """Validate everything, run the search with cached probes, write the report and the snippets."""
    cfg = load_config(config, list(overrides))
    plan, info = resolve_plan(cfg, settings, budget_steps)
    probes_dir = out / "probes"
    probe_config(
        cfg, plan.candidates[0], plan.t_start, plan.begin_steps, info, probes_dir
    )  # a bad probe config fails now
    check_cache(cfg, info, probes_dir)
    open_data(cfg, progress)  # a missing or corrupted corpus fails now, not at probe 3

    log(plan_line(plan, info, out))
    count = 0

    def probe(seqlen_start: int, duration: int, steps: int) -> ProbeResult:
        nonlocal count
        count += 1
        p = probe_config(cfg, seqlen_start, duration, steps, info, probes_dir)
        r = run_probe(p, train_fn, probes_dir, progress=progress)
        log(probe_line(count, steps, r, max_ratio(r.evals, steps, r.diverged_step), plan.factor))
        return r

    result = search(probe, plan)
    if (note := horizon_note(cfg, plan)) is not None:
        result.notes.append(note)
    write_outputs(result, cfg, info, out, config, overrides)
    return result


def main_tune(
    target: str | None,
    items: Sequence[str],
    *,
    train_fn: TrainFn,
    out: str | None = None,
    budget_steps: int | None = None,
    progress: bool = True,
    log=print,
) -> tuple[TuneResult, Path]:
    """`seqwarm tune CONFIG [section.field=value ...] [tune.setting=value ...]`."""
    if env_from_torchrun().enabled:
        raise ConfigError("tune: runs its probes one after another in one process; do not launch it with torchrun")
    settings = parse_settings([i for i in items if i.startswith("tune.")])
    overrides = [i for i in items if not i.startswith("tune.")]
    out_dir = Path(out) if out else Path("runs") / f"tune-{config_name(target)}"
    start = time.perf_counter()
    result = run_tune(
        target, overrides, settings, out_dir, train_fn=train_fn, budget_steps=budget_steps, progress=progress, log=log
    )
    log(f"tune: {time.perf_counter() - start:.0f} s")
    return result, out_dir
