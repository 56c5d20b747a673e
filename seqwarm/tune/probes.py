"""Real probes: their configs, their run directories, and the cache that lets a tune resume.

A probe (seqlen_s, T, steps) is the full run's first `steps` steps with SLW at (seqlen_s, T) and
frequent validation, trained into its own run directory `OUT/probes/seqlenS-TT-stepsN/`. When it
ends, what it left there (`metrics.jsonl`) becomes a `ProbeResult`, written to `probe.json`, and its
checkpoints are deleted: a rerun reads `probe.json` instead of training again. Training itself is
the runner's (`seqwarm.tune.runner`); nothing here trains.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import yaml

from seqwarm.checkpoint import checkpoint_dir
from seqwarm.config import Config, load_config
from seqwarm.errors import SeqwarmError
from seqwarm.files import atomic_write
from seqwarm.metrics import METRICS, read_metrics
from seqwarm.plan import plan_steps
from seqwarm.rundir import CONFIG
from seqwarm.tune.search import ProbeResult, with_curriculum

PROBE = "probe.json"  # a finished probe's result: the cache a rerun reads instead of training again


def probe_name(seqlen_start: int, duration: int, steps: int) -> str:
    return f"seqlen{seqlen_start}-T{duration}-steps{steps}"


def probe_config(cfg: Config, seqlen_start: int, duration: int, steps: int, info: dict, probes_dir: Path) -> Config:
    """The probe (seqlen_s, T, steps): the full run's first `steps` steps, with frequent validation.

    Only the stopping step changes; the LR decay keeps the full run's horizon (decay tokens or
    steps set explicitly, since their default is max_tokens/max_steps). Validation runs on a fixed
    subset of the val split whenever the token clock crosses a multiple of `every_tokens`, chosen
    as eval_every_steps x the fewest tokens any of the probe's steps trains, so that every
    `eval_every_steps` consecutive steps hold at least one validation.
    """
    p = with_curriculum(cfg, seqlen_start, duration)
    t = p.train
    t.lr_decay_tokens, t.lr_decay_steps = t.decay_tokens, t.decay_steps
    t.max_steps = min(steps, t.max_steps) if t.max_steps else steps
    p.eval.max_sequences = info["eval_sequences"]
    p.checkpoint.every_steps, p.checkpoint.keep_last = None, 1  # only the final one, deleted after
    p.log.tensorboard = p.log.wandb = False  # probes are scored from metrics.jsonl, not watched
    # Named by the steps it trains: a probe longer than the full run stops with it, and its cached
    # result (steps = max_steps) must lead `check_cache` back to the same directory.
    p.run.dir = str(probes_dir / probe_name(seqlen_start, duration, t.max_steps))
    per_step = [r["tokens"] for r in plan_steps(p)]
    fewest = min(b - a for a, b in zip([0, *per_step], per_step)) if per_step else 1
    p.eval.every_tokens = max(1, fewest * info["eval_every_steps"])
    return p


def is_probe_dir(run_dir: Path, probes_dir: Path) -> bool:
    """Whether `run_dir` is a probe directory of this tune: a child of its probes directory."""
    return Path(run_dir).parent == Path(probes_dir)


def diverged_step(run_dir: Path) -> int:
    """The step a diverged probe stopped at: its last training row (1 when it logged none)."""
    rows = [r for r in read_metrics(Path(run_dir) / METRICS) if "loss" in r]
    return rows[-1]["step"] if rows else 1


def probe_result(cfg: Config, diverged: int | None = None) -> ProbeResult:
    """What the probe `cfg` left in its run directory: its validation curve and its cost."""
    rows = read_metrics(Path(cfg.run.dir) / METRICS)
    c = cfg.curriculum
    return ProbeResult(
        seqlen_start=c.seqlen_start,
        duration=c.duration,
        steps=cfg.train.max_steps,
        evals=tuple((r["step"], r["val/ppl"]) for r in rows if "val/ppl" in r),
        diverged_step=diverged,
        steps_done=max((r["step"] for r in rows), default=0),
        tokens=max((r["tokens"] for r in rows), default=0),
        time_s=max((r["time_s"] for r in rows), default=0.0),
    )


def drop_checkpoints(run_dir: Path, probes_dir: Path) -> None:
    """Delete a finished probe's checkpoints: its metrics and probe.json are the cache.

    Only ever a probe directory of this tune: the checkpoints of any other run are not tune's to delete.
    """
    if not is_probe_dir(run_dir, probes_dir):
        raise ValueError(f"{run_dir}: not a probe directory under {probes_dir}; refusing to delete its checkpoints")
    shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)


def save_probe(run_dir: Path, result: ProbeResult) -> None:
    """Write probe.json atomically: a probe is either cached whole or trained again."""
    atomic_write(Path(run_dir) / PROBE, json.dumps(asdict(result) | {"cached": False}, indent=1) + "\n")


def load_probe(path: Path) -> ProbeResult:
    raw = json.loads(Path(path).read_text())
    raw["evals"] = tuple(tuple(e) for e in raw["evals"])
    return ProbeResult(**(raw | {"cached": True}))


def cached_probe(run_dir: Path) -> ProbeResult | None:
    """The cached result of the probe in `run_dir`, or None when it has not finished."""
    cache = Path(run_dir) / PROBE
    return load_probe(cache) if cache.exists() else None


def check_cache(cfg: Config, info: dict, probes_dir: Path) -> None:
    """Refuse, before any probe runs, cached probes that another config or setting trained.

    A directory without probe.json is an interrupted probe, trained again from scratch (which
    replaces the directory), so it must be one this tune made: a seqwarm run directory whose
    config points at it. Anything else there is refused rather than deleted.
    """
    if not probes_dir.exists():
        return
    for d in sorted(p for p in probes_dir.iterdir() if p.is_dir()):
        if not (d / PROBE).exists():
            if any(d.iterdir()):
                if not (d / CONFIG).exists():
                    raise SeqwarmError(f"{d}: exists but is not a seqwarm probe; move it or choose another --out")
                if (run := _run_dir(d)) != d:
                    raise SeqwarmError(
                        f"{d}: the run directory of another run ({run or 'no run.dir'}), not a probe of this tune; "
                        "move it or choose another --out"
                    )
            continue  # an interrupted probe: it is trained again
        r = load_probe(d / PROBE)
        want = probe_config(cfg, r.seqlen_start, r.duration, r.steps, info, probes_dir).to_dict()
        have = load_config(d / CONFIG).to_dict()
        diff = [f"{s}.{k}: {have[s][k]!r} -> {want[s][k]!r}" for s in want for k in want[s] if have[s][k] != want[s][k]]
        if diff or Path(want["run"]["dir"]) != d:
            raise SeqwarmError(
                f"{d}: a cached probe of a different config ({'; '.join(diff[:3]) or d.name}); "
                "use another --out or remove it"
            )


def _run_dir(d: Path) -> Path | None:
    """The run.dir of the config in `d` (read as plain YAML, so that any version's config reads), or None."""
    try:
        raw = yaml.safe_load((d / CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    run = raw.get("run") if isinstance(raw, dict) else None
    return Path(str(run["dir"])) if isinstance(run, dict) and run.get("dir") else None
