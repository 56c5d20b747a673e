"""`seqwarm tune`: the paper's low-cost tuning strategy for SLW's seqlen_s and T, automated.

Section 4 of the paper chooses the two hyperparameters of the linear pacing function from short
runs, using only the validation set:

1. start with seqlen_s = 8 and T = a few multiples of the LR warmup steps;
2. increase seqlen_s until the validation perplexity no longer fluctuates at the very beginning;
3. binary-search the largest T whose run has no significant fluctuation during the first few
   multiples of the LR warmup steps, a fluctuation being a validation perplexity above 1.3x the
   best one before it.

`search` is that procedure as a pure function of a probe, `probe(seqlen_s, T, steps)`, so that it
can be tested on a fake probe with a known answer. `run_tune` gives it real probes: prefixes of the
full run (the same config, LR schedule and data order, only stopped after `steps` steps) with
frequent validation on a fixed subset of the val split, each cached in its own run directory.
The decisions and assumptions behind the defaults are in docs/TUNING.md.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from seqwarm.checkpoint import checkpoint_dir
from seqwarm.config import Config, coerce, config_from_dict, load_config
from seqwarm.distributed import env_from_torchrun
from seqwarm.errors import ConfigError, DivergedError, SeqwarmError
from seqwarm.plan import plan_steps
from seqwarm.report import markdown_table
from seqwarm.metrics import METRICS, read_metrics
from seqwarm.data.corpus import open_data
from seqwarm.train import train

PROBE = "probe.json"  # a finished probe's result: the cache a rerun reads instead of training again
REPORT = "tune.md"
RESULT = "tune.json"
SNIPPET = "recommendation.yaml"
DEEPSPEED = "deepspeed.json"
SEQLEN, DURATION = "seqlen_s", "T"  # the search's two stages: steps 1-2, and step 3


@dataclass
class TuneSettings:
    """The tuner's knobs (`tune.field=value` on the command line). Defaults are the paper's."""

    factor: float = 1.3
    """A validation perplexity above factor x the best one before it is a significant fluctuation (Section 4: 1.3)."""
    seqlen_candidates: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    """Steps 1-2: seqlen_s values, increasing; the smallest is tried first (Section 4: 8). Values >= seqlen_end are skipped."""
    t_start_warmups: float = 4.0
    """Step 1: T of the seqlen_s probes, in LR warmups ("a few multiples of LR warmup steps")."""
    begin_warmups: float = 1.0
    """Step 2's window, "the very beginning": the first begin_warmups x LR warmup steps (seqlen_s probes train that long)."""
    horizon_warmups: float = 10 / 3
    """Step 3's window and the T probes' length, in LR warmups (the paper: the first 10K steps with a 3K-step warmup)."""
    horizon_steps: int | None = None
    """Step 3's window in steps, instead of horizon_warmups; required when the config has no LR warmup."""
    t_min: int | None = None
    """Smallest T searched, in steps. Default: one LR warmup."""
    t_max: int | None = None
    """Largest T searched, in steps. Default: the full run's steps at full length (its baseline's step count)."""
    t_step: int | None = None
    """Resolution of T: the search runs over t_min, t_min + t_step, ... <= t_max. Default: one LR warmup."""
    eval_every_steps: int | None = None
    """Validate at least every this many steps in a probe. Default: a tenth of the LR warmup, at least 1."""
    eval_sequences: int | None = None
    """Full-length validation sequences per probe evaluation (the split's first ones). Default: eval.max_sequences."""

    def __post_init__(self):
        if not self.factor > 1.0:
            raise ConfigError(f"tune.factor: must be > 1 (a ratio to the best perplexity so far), got {self.factor}")
        c = self.seqlen_candidates
        if not c:
            raise ConfigError("tune.seqlen_candidates: the search range is empty")
        if any(s <= 0 for s in c) or any(a >= b for a, b in zip(c, c[1:])):
            raise ConfigError(f"tune.seqlen_candidates: need positive, strictly increasing lengths, got {c}")
        for name in ("t_start_warmups", "begin_warmups", "horizon_warmups"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"tune.{name}: must be positive, got {getattr(self, name)}")
        for name in ("horizon_steps", "t_min", "t_max", "t_step", "eval_every_steps", "eval_sequences"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"tune.{name}: must be positive, got {value}")
        if self.t_min is not None and self.t_max is not None and self.t_min > self.t_max:
            raise ConfigError(f"tune.t_min ({self.t_min}) > tune.t_max ({self.t_max}): the T bounds are inverted")


def parse_settings(items: Sequence[str]) -> TuneSettings:
    """`tune.field=value` overrides (YAML values) -> TuneSettings; an unknown field is a ConfigError."""
    hints = typing.get_type_hints(TuneSettings)
    names = [f.name for f in fields(TuneSettings)]
    kwargs = {}
    for item in items:
        key, _, text = item.partition("=")
        name = key.strip().removeprefix("tune.")
        if name not in names:
            raise ConfigError(f"tune.{name}: unknown tune setting (known: {', '.join(names)})")
        value = yaml.safe_load(text) if text.strip() else None
        kwargs[name] = coerce(value, hints[name], f"tune.{name}")
    return TuneSettings(**kwargs)


# --- the fluctuation rule --------------------------------------------------------------------------


def ppl_ratios(ppls: Sequence[float]) -> list[float]:
    """ratio_i = p_i / min(p_0 .. p_{i-1}) for i >= 1: each perplexity against the best one *before* it.

    Section 4: a fluctuation is "the perplexity value becomes larger than 1.3x of the previous best
    perplexity". Including p_i in its own best would only turn ratios below 1 into 1, so the verdict
    does not depend on the choice. A non-finite perplexity is an infinite ratio.
    """
    out, best = [], math.inf
    for i, p in enumerate(ppls):
        if i:
            out.append(p / best if math.isfinite(p) else math.inf)
        if math.isfinite(p):
            best = min(best, p)
    return out


def max_ratio(evals: Sequence[tuple[int, float]], until_step: int, diverged_step: int | None = None) -> float:
    """The largest ratio among the evaluations at steps <= until_step (inf if training diverged by then).

    0.0 when fewer than two evaluations fall in the window (nothing to compare).
    """
    if diverged_step is not None and diverged_step <= until_step:
        return math.inf
    return max(ppl_ratios([p for s, p in evals if s <= until_step]), default=0.0)


# --- the search (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    """What a probe training left: its validation curve and its cost."""

    seqlen_start: int
    duration: int
    steps: int  # the length it was asked for
    evals: tuple[tuple[int, float], ...]  # (step, validation perplexity), step 0 first
    diverged_step: int | None = None  # the step that stopped it on a non-finite loss
    steps_done: int = 0
    tokens: int = 0
    time_s: float = 0.0
    cached: bool = False


@dataclass(frozen=True)
class Probe:
    stage: str  # SEQLEN (steps 1-2) or DURATION (step 3)
    result: ProbeResult
    window: int  # the steps the fluctuation rule looked at
    max_ratio: float
    stable: bool


@dataclass(frozen=True)
class SearchPlan:
    """The search in steps, settings resolved against the config (`resolve_plan`)."""

    factor: float
    candidates: tuple[int, ...]  # seqlen_s, increasing
    t_start: int  # step 1's T: the seqlen_s probes use it
    begin_steps: int  # step 2's window = the seqlen_s probes' length
    horizon_steps: int  # step 3's window = the T probes' length
    t_grid: range  # step 3's candidates, increasing
    budget_steps: int | None = None  # cap on the summed lengths of all probes


@dataclass
class TuneResult:
    plan: SearchPlan
    probes: list[Probe]
    seqlen_start: int | None  # recommended seqlen_s: the smallest stable candidate (known so far)
    duration: int | None  # recommended T: the largest stable T (known so far), else step 1's T
    duration_verified: bool  # False: T is step 1's starting value, no T probe confirmed it
    complete: bool  # False: the budget ran out before the search ended
    notes: list[str]

    @property
    def recommended(self) -> bool:
        """Both hyperparameters are known (step 3 can end with no stable T even after step 2 found seqlen_s)."""
        return self.seqlen_start is not None and self.duration is not None

    @property
    def probe_steps(self) -> int:
        return sum(p.result.steps for p in self.probes)


class _OutOfBudget(Exception):
    pass


def search(probe: Callable[[int, int, int], ProbeResult], plan: SearchPlan) -> TuneResult:
    """Steps 1-3 of Section 4's strategy, with `probe(seqlen_s, T, steps)` for the training runs.

    Assumes stability is monotone in each hyperparameter: at the very beginning, once a seqlen_s
    is stable every larger one is; over the horizon, once a T fluctuates every larger one does.
    Then steps 1-2 take 1 + ceil(log2(n)) probes for n candidates at most (the smallest first, as
    the paper starts at 8, then bisection), and step 3 takes ceil(log2(len(t_grid) + 1)).
    """
    probes: list[Probe] = []
    notes: list[str] = []

    def stable(stage: str, seqlen_start: int, duration: int, steps: int) -> bool:
        spent = sum(p.result.steps for p in probes)
        if plan.budget_steps is not None and spent + steps > plan.budget_steps:
            raise _OutOfBudget
        result = probe(seqlen_start, duration, steps)
        ratio = max_ratio(result.evals, steps, result.diverged_step)
        probes.append(Probe(stage, result, steps, ratio, ratio <= plan.factor))
        return probes[-1].stable

    cands, grid = plan.candidates, plan.t_grid
    s_lo, s_hi = -1, len(cands)  # cands[s_lo] fluctuates (or none), cands[s_hi] is stable (len: none known)
    t_lo, t_hi = -1, len(grid)  # grid[t_lo] is stable (-1: none known), grid[t_hi] fluctuates (len: none)
    complete = True
    try:
        while s_hi - s_lo > 1:
            mid = 0 if s_lo == -1 and s_hi == len(cands) else (s_lo + s_hi) // 2
            if stable(SEQLEN, cands[mid], plan.t_start, plan.begin_steps):
                s_hi = mid
            else:
                s_lo = mid
        if s_hi < len(cands):
            while t_hi - t_lo > 1:
                mid = (t_lo + t_hi) // 2
                if stable(DURATION, cands[s_hi], grid[mid], plan.horizon_steps):
                    t_lo = mid
                else:
                    t_hi = mid
    except _OutOfBudget:
        complete = False
        notes.append(
            f"incomplete: the budget of {plan.budget_steps:,} probe steps ran out after {len(probes)} probes; "
            "the recommendation is the best known so far (rerun with a larger --budget-steps to finish: done probes are cached)"
        )

    seqlen_start = cands[s_hi] if s_hi < len(cands) else None
    duration = grid[t_lo] if t_lo >= 0 else None
    verified = duration is not None
    if seqlen_start is None:
        if complete:
            notes.append(
                f"no seqlen_s in {list(cands)} is free of fluctuation at the very beginning: "
                "lower train.lr, or add larger tune.seqlen_candidates"
            )
    elif complete and duration is None:
        notes.append(
            f"even T = {grid[0]} (tune.t_min) fluctuates within the first {plan.horizon_steps} steps: "
            "lower tune.t_min or train.lr"
        )
    else:
        if complete and t_lo == len(grid) - 1:
            notes.append(f"the largest T of the range ({grid[-1]}, tune.t_max) is stable: a larger T may be too; raise tune.t_max")
        if complete and s_hi > 0:
            notes.append(f"seqlen_s = {cands[0]} fluctuates at the very beginning; {seqlen_start} is the smallest that does not")
        if duration is None:
            duration = plan.t_start
            notes.append(f"T = {duration} is step 1's starting value (a few LR warmups), not confirmed by a T probe")
    return TuneResult(plan, probes, seqlen_start, duration, verified, complete, notes)


# --- resolving the settings against a config ---------------------------------------------------------


def warmup_steps(cfg: Config, seqlen_start: int, t_start_warmups: float) -> int | None:
    """The LR warmup in steps; None when the config has none.

    A token warmup (`train.warmup_tokens`) is converted with `plan_steps`: the step at which the
    token clock reaches it in step 1's probe (seqlen_start, T = t_start_warmups x W). W depends on T
    and T on W; W grows with T and is bounded by the warmup at seqlen_start throughout, so iterating
    from the full-length count reaches the fixed point.
    """
    t = cfg.train
    if t.warmup_steps:
        return t.warmup_steps
    if not t.warmup_tokens:
        return None
    w = max(1, math.ceil(t.warmup_tokens / (t.global_batch_size * cfg.curriculum.seqlen_end)))
    for _ in range(100):
        c = _with_curriculum(cfg, seqlen_start, max(1, round(t_start_warmups * w)))
        nxt = w
        for row in plan_steps(c):
            nxt = row["step"]
            if row["tokens"] >= t.warmup_tokens:
                break
        if nxt == w:
            break
        w = nxt
    return w


def full_length_steps(cfg: Config) -> int:
    """The full run's steps at full length and full batch (the baseline's step count)."""
    t = cfg.train
    steps = math.ceil(t.max_tokens / (t.global_batch_size * cfg.curriculum.seqlen_end)) if t.max_tokens else t.max_steps
    return min(steps, t.max_steps) if t.max_steps else steps


def _steps(warmups: float, w: float) -> int:
    return max(1, math.ceil(warmups * w - 1e-9))  # 10/3 x 3000 is 10000, not 10001


def resolve_plan(cfg: Config, s: TuneSettings, budget_steps: int | None = None) -> tuple[SearchPlan, dict]:
    """The search in steps for this config, and what it was derived from. Raises on bad settings."""
    cur = cfg.curriculum
    if cur.kind == "slw" and cur.pacing == "discrete":
        raise ConfigError("curriculum.pacing: tune searches T of linear or root pacing, not discrete stages")
    if budget_steps is not None and budget_steps <= 0:
        raise ConfigError(f"--budget-steps: must be positive, got {budget_steps}")
    candidates = tuple(c for c in s.seqlen_candidates if cur.multiple_of <= c < cur.seqlen_end)
    if not candidates:
        raise ConfigError(
            f"tune.seqlen_candidates: the search range is empty: none of {s.seqlen_candidates} lies in "
            f"[curriculum.multiple_of ({cur.multiple_of}), curriculum.seqlen_end ({cur.seqlen_end}))"
        )
    w = warmup_steps(cfg, candidates[0], s.t_start_warmups)
    source = "train.warmup_steps" if cfg.train.warmup_steps else "train.warmup_tokens, converted by plan_steps"
    if w is None:
        if s.horizon_steps is None:
            raise ConfigError(
                "train.warmup_steps: the config has no LR warmup, and the tuning windows are multiples of it; "
                "set tune.horizon_steps (the other windows scale with it)"
            )
        w = s.horizon_steps / s.horizon_warmups  # the warmup the horizon would be horizon_warmups of
        source = "none in the config; derived from tune.horizon_steps / tune.horizon_warmups"
    horizon = s.horizon_steps or _steps(s.horizon_warmups, w)
    begin = _steps(s.begin_warmups, w)
    every = s.eval_every_steps or max(1, int(w // 10))
    for name, window in (("tune.begin_warmups (the very beginning)", begin), ("the probe horizon", horizon)):
        if window < every:
            raise ConfigError(f"{name}: {window} steps is shorter than one validation interval (tune.eval_every_steps = {every})")
    t_min = s.t_min or _steps(1, w)
    t_max = s.t_max or full_length_steps(cfg)
    if t_min > t_max:
        raise ConfigError(f"tune.t_min ({t_min}) > tune.t_max ({t_max}): the T bounds are inverted")
    plan = SearchPlan(
        factor=s.factor,
        candidates=candidates,
        t_start=_steps(s.t_start_warmups, w),
        begin_steps=begin,
        horizon_steps=horizon,
        t_grid=range(t_min, t_max + 1, s.t_step or _steps(1, w)),
        budget_steps=budget_steps,
    )
    skipped = [c for c in s.seqlen_candidates if c not in candidates]
    info = {
        "warmup_steps": w,
        "warmup_source": source,
        "eval_every_steps": every,
        "eval_sequences": s.eval_sequences or cfg.eval.max_sequences,
        "skipped_candidates": skipped,
    }
    return plan, info


# --- real probes -----------------------------------------------------------------------------------


def _with_curriculum(cfg: Config, seqlen_start: int, duration: int) -> Config:
    """A copy of cfg with SLW at (seqlen_start, T): root pacing stays root, anything else becomes linear."""
    raw = cfg.to_dict()
    c = raw["curriculum"]
    pacing = c["pacing"] if c["kind"] == "slw" and c["pacing"] == "root" else "linear"
    c.update(kind="slw", pacing=pacing, seqlen_start=seqlen_start, duration=duration, stages=None)
    return config_from_dict(raw)


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
    p = _with_curriculum(cfg, seqlen_start, duration)
    t = p.train
    t.lr_decay_tokens, t.lr_decay_steps = t.decay_tokens, t.decay_steps
    t.max_steps = min(steps, t.max_steps) if t.max_steps else steps
    p.eval.max_sequences = info["eval_sequences"]
    p.checkpoint.every_steps, p.checkpoint.keep_last = None, 1  # only the final one, deleted after
    p.log.tensorboard = False
    p.run.dir = str(probes_dir / probe_name(seqlen_start, duration, steps))
    per_step = [r["tokens"] for r in plan_steps(p)]
    fewest = min(b - a for a, b in zip([0, *per_step], per_step)) if per_step else 1
    p.eval.every_tokens = max(1, fewest * info["eval_every_steps"])
    return p


def run_probe(cfg: Config, *, progress: bool = True) -> ProbeResult:
    """Train the probe, or read its cached result; a non-finite loss makes it a diverged probe."""
    run_dir = Path(cfg.run.dir)
    cache = run_dir / PROBE
    if cache.exists():
        return _load_probe(cache)
    diverged = None
    try:
        train(cfg, force=True, progress=progress)
    except DivergedError:
        rows = [r for r in read_metrics(run_dir / METRICS) if "loss" in r]
        diverged = rows[-1]["step"] if rows else 1
    rows = read_metrics(run_dir / METRICS)
    shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)  # metrics + probe.json are the cache
    c = cfg.curriculum
    result = ProbeResult(
        seqlen_start=c.seqlen_start,
        duration=c.duration,
        steps=cfg.train.max_steps,
        evals=tuple((r["step"], r["val/ppl"]) for r in rows if "val/ppl" in r),
        diverged_step=diverged,
        steps_done=max((r["step"] for r in rows), default=0),
        tokens=max((r["tokens"] for r in rows), default=0),
        time_s=max((r["time_s"] for r in rows), default=0.0),
    )
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result) | {"cached": False}, indent=1) + "\n")
    tmp.replace(cache)  # atomic: a probe is either cached whole or trained again
    return result


def _load_probe(path: Path) -> ProbeResult:
    raw = json.loads(path.read_text())
    raw["evals"] = tuple(tuple(e) for e in raw["evals"])
    return ProbeResult(**(raw | {"cached": True}))


def check_cache(cfg: Config, info: dict, probes_dir: Path) -> None:
    """Refuse, before any probe runs, cached probes that another config or setting trained."""
    if not probes_dir.exists():
        return
    for d in sorted(p for p in probes_dir.iterdir() if p.is_dir()):
        if not (d / PROBE).exists():
            if any(d.iterdir()) and not (d / "config.yaml").exists():
                raise SeqwarmError(f"{d}: exists but is not a seqwarm probe; move it or choose another --out")
            continue  # an interrupted probe: it is trained again
        r = _load_probe(d / PROBE)
        want = probe_config(cfg, r.seqlen_start, r.duration, r.steps, info, probes_dir).to_dict()
        have = load_config(d / "config.yaml").to_dict()
        diff = [f"{s}.{k}: {have[s][k]!r} -> {want[s][k]!r}" for s in want for k in want[s] if have[s][k] != want[s][k]]
        if diff or Path(want["run"]["dir"]) != d:
            raise SeqwarmError(
                f"{d}: a cached probe of a different config ({'; '.join(diff[:3]) or d.name}); "
                "use another --out or remove it"
            )


# --- the whole tune ---------------------------------------------------------------------------------


def run_tune(
    config: str | None,
    overrides: Sequence[str],
    settings: TuneSettings,
    out: Path,
    *,
    budget_steps: int | None = None,
    progress: bool = True,
    log=print,
) -> TuneResult:
    """Validate everything, run the search with cached probes, write the report and the snippets."""
    cfg = load_config(config, list(overrides))
    plan, info = resolve_plan(cfg, settings, budget_steps)
    probes_dir = out / "probes"
    probe_config(cfg, plan.candidates[0], plan.t_start, plan.begin_steps, info, probes_dir)  # a bad probe config fails now
    check_cache(cfg, info, probes_dir)
    open_data(cfg, progress)  # a missing or corrupted corpus fails now, not at probe 3

    log(
        f"tune: LR warmup {info['warmup_steps']:g} steps; seqlen_s probes {plan.begin_steps} steps at T={plan.t_start}, "
        f"T probes {plan.horizon_steps} steps; seqlen_s in {list(plan.candidates)}, "
        f"T in {plan.t_grid.start}..{plan.t_grid[-1]} step {plan.t_grid.step}; in {out}"
    )
    count = 0

    def probe(seqlen_start: int, duration: int, steps: int) -> ProbeResult:
        nonlocal count
        count += 1
        p = probe_config(cfg, seqlen_start, duration, steps, info, probes_dir)
        r = run_probe(p, progress=progress)
        ratio = max_ratio(r.evals, steps, r.diverged_step)
        verdict = "stable" if ratio <= plan.factor else "fluctuates"
        log(
            f"[{count}] seqlen_s={seqlen_start} T={duration} ({steps} steps): max ppl ratio {ratio:.3f} -> {verdict}"
            f"{' (diverged)' if r.diverged_step is not None else ''}, {r.tokens:,} tokens, "
            f"{r.time_s:.1f} s{' (cached)' if r.cached else ''}"
        )
        return r

    result = search(probe, plan)
    full = full_length_steps(cfg)
    if plan.horizon_steps >= full:
        result.notes.append(
            f"the probe horizon ({plan.horizon_steps} steps) is as long as the full run ({full} steps at full length): "
            "on this config tuning costs more than a run"
        )
    write_outputs(result, cfg, info, out, config)
    return result


# --- outputs ----------------------------------------------------------------------------------------


def full_run_tokens(cfg: Config, result: TuneResult) -> int:
    """The full run's token budget: max_tokens, or the tokens of max_steps steps at the recommendation."""
    if cfg.train.max_tokens:
        return cfg.train.max_tokens
    c = _with_curriculum(cfg, result.seqlen_start or result.plan.candidates[0], result.duration or result.plan.t_start)
    return max((r["tokens"] for r in plan_steps(c)), default=0)


def curriculum_snippet(cfg: Config, seqlen_start: int, duration: int) -> dict:
    c = _with_curriculum(cfg, seqlen_start, duration).curriculum
    snippet = {"kind": "slw", "pacing": c.pacing, "seqlen_start": seqlen_start, "seqlen_end": c.seqlen_end, "duration": duration}
    if c.pacing == "root":
        snippet["root_degree"] = c.root_degree
    return snippet | {"multiple_of": c.multiple_of}


def deepspeed_block(cfg: Config, seqlen_start: int, duration: int) -> dict:
    """DeepSpeed's legacy `curriculum_learning` config for the same schedule (its curriculum-learning tutorial)."""
    c = _with_curriculum(cfg, seqlen_start, duration).curriculum
    schedule = {"total_curriculum_step": duration, "difficulty_step": c.multiple_of}
    if c.pacing == "root":
        schedule["root_degree"] = c.root_degree
    return {
        "curriculum_learning": {
            "enabled": True,
            "curriculum_type": "seqlen",
            "min_difficulty": seqlen_start,
            "max_difficulty": c.seqlen_end,
            "schedule_type": "fixed_root" if c.pacing == "root" else "fixed_linear",
            "schedule_config": schedule,
        }
    }


def _verdict(p: Probe) -> str:
    text = "stable" if p.stable else "fluctuates"
    return text + (" (diverged)" if p.result.diverged_step is not None else "")


PROBE_COLUMNS = [
    ("#", lambda r: str(r[0])),
    ("step", lambda r: "1-2: seqlen_s" if r[1].stage == SEQLEN else "3: T"),
    ("seqlen_s", lambda r: str(r[1].result.seqlen_start)),
    ("T", lambda r: str(r[1].result.duration)),
    ("window (steps)", lambda r: str(r[1].window)),
    ("max val ppl / best before", lambda r: f"{r[1].max_ratio:.3f}"),
    ("verdict", lambda r: _verdict(r[1])),
    ("steps", lambda r: f"{r[1].result.steps_done:,}"),
    ("tokens", lambda r: f"{r[1].result.tokens:,}"),
    ("time", lambda r: f"{r[1].result.time_s:.1f} s" + (" (cached)" if r[1].result.cached else "")),
]


def write_outputs(result: TuneResult, cfg: Config, info: dict, out: Path, config: str | None) -> None:
    """tune.md, tune.json, and (with a recommendation) recommendation.yaml and deepspeed.json."""
    out.mkdir(parents=True, exist_ok=True)
    plan = result.plan
    tokens = sum(p.result.tokens for p in result.probes)
    seconds = sum(p.result.time_s for p in result.probes)
    budget = full_run_tokens(cfg, result)
    fraction = tokens / budget if budget else None
    s, t = result.seqlen_start, result.duration
    name = Path(config).stem if config else "defaults"
    for stale in (SNIPPET, DEEPSPEED):
        (out / stale).unlink(missing_ok=True)
    if result.recommended:
        snippet = {"curriculum": curriculum_snippet(cfg, s, t)}
        head = f"# seqwarm tune {name}: {'complete' if result.complete else 'INCOMPLETE (budget ran out)'}"
        (out / SNIPPET).write_text(head + "\n" + yaml.safe_dump(snippet, sort_keys=False))
        (out / DEEPSPEED).write_text(json.dumps(deepspeed_block(cfg, s, t), indent=2) + "\n")

    status = "complete" if result.complete else "**incomplete** (the probe budget ran out)"
    if not result.recommended:
        rec = "no recommendation"
    else:
        rec = f"seqlen_s = {s}, T = {t} steps" + ("" if result.duration_verified else " (T not verified)")
    lines = [
        f"# seqwarm tune: {name}",
        "",
        f"**Recommendation: {rec}.** Search {status}; {len(result.probes)} probes.",
        "",
        *([f"- {n}" for n in result.notes] + [""] if result.notes else []),
        f"Probe cost: {tokens:,} training tokens = "
        + (f"{100 * fraction:.2f}% of the full run's {budget:,}-token budget" if fraction is not None else "n/a")
        + f"; {result.probe_steps:,} probe steps, {seconds:.0f} s of probe training (evaluation included).",
        "",
        "## Settings",
        "",
        f"- LR warmup W = {info['warmup_steps']:g} steps ({info['warmup_source']}).",
        f"- Steps 1-2: seqlen_s in {list(plan.candidates)}, smallest first, then bisection; each probe trains "
        f"{plan.begin_steps} steps (\"the very beginning\") at T = {plan.t_start}."
        + (f" Skipped (not in [multiple_of, seqlen_end)): {info['skipped_candidates']}." if info["skipped_candidates"] else ""),
        f"- Step 3: bisection for the largest stable T in {plan.t_grid.start}..{plan.t_grid[-1]} step {plan.t_grid.step} "
        f"({len(plan.t_grid)} values); each probe trains {plan.horizon_steps} steps.",
        f"- Fluctuation: a validation perplexity above {plan.factor:g}x the best one before it, within the probe; "
        f"validation at least every {info['eval_every_steps']} step(s) on the first {info['eval_sequences']} val sequences.",
        *([f"- Budget: {plan.budget_steps:,} probe steps."] if plan.budget_steps else []),
        "",
        "## Probes",
        "",
        markdown_table(PROBE_COLUMNS, list(enumerate(result.probes, 1))),
        "",
    ]
    if result.recommended:
        overrides = f"curriculum.kind=slw curriculum.seqlen_start={s} curriculum.duration={t}"
        lines += [
            "## seqwarm",
            "",
            f"`{SNIPPET}`, or on the command line: `seqwarm train {name} {overrides}`",
            "",
            "```yaml",
            yaml.safe_dump({"curriculum": curriculum_snippet(cfg, s, t)}, sort_keys=False).rstrip(),
            "```",
            "",
            "## DeepSpeed",
            "",
            f"`{DEEPSPEED}`, to merge into the DeepSpeed config (DeepSpeed rounds slightly differently: docs/TUNING.md).",
            "",
            "```json",
            json.dumps(deepspeed_block(cfg, s, t), indent=2),
            "```",
            "",
        ]
    (out / REPORT).write_text("\n".join(lines))
    record = {
        "config": config,
        "recommendation": {"seqlen_start": s, "duration": t, "duration_verified": result.duration_verified},
        "complete": result.complete,
        "notes": result.notes,
        "plan": asdict(plan) | {"t_grid": [plan.t_grid.start, plan.t_grid[-1], plan.t_grid.step]},
        **info,
        "cost": {"tokens": tokens, "full_run_tokens": budget, "fraction": fraction, "steps": result.probe_steps, "time_s": seconds},
        "probes": [
            {"stage": p.stage, "window": p.window, "max_ratio": p.max_ratio if math.isfinite(p.max_ratio) else None, "stable": p.stable}
            | asdict(p.result)
            for p in result.probes
        ],
    }
    (out / RESULT).write_text(json.dumps(record, indent=1) + "\n")


def main_tune(
    target: str | None,
    items: Sequence[str],
    *,
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
    out_dir = Path(out) if out else Path("runs") / f"tune-{Path(target).stem if target else 'defaults'}"
    start = time.perf_counter()
    result = run_tune(target, overrides, settings, out_dir, budget_steps=budget_steps, progress=progress, log=log)
    log(f"tune: {time.perf_counter() - start:.0f} s")
    return result, out_dir
