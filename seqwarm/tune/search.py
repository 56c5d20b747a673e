"""The pure core of `seqwarm tune`: the fluctuation rule, the search, and the plan in steps.

Everything here is a function of plain data and a `Config`: no file is read or written and nothing
trains. `search` runs Section 4's steps 1-3 against a probe function, `probe(seqlen_s, T, steps)`,
so that it can be tested on a fake probe with a known answer; `seqwarm.tune.runner` gives it real
probes. `resolve_plan` turns the settings (in LR warmups) into the search in steps for one config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from seqwarm.config import Config, config_from_dict
from seqwarm.curriculum import Root, slw_overrides
from seqwarm.errors import ConfigError
from seqwarm.plan import plan_steps
from seqwarm.tune.settings import TuneSettings

SEQLEN, DURATION = "seqlen_s", "T"  # the search's two stages: steps 1-2, and step 3


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
            notes.append(
                f"the largest T of the range ({grid[-1]}, tune.t_max) is stable: a larger T may be too; raise tune.t_max"
            )
        if complete and s_hi > 0:
            notes.append(
                f"seqlen_s = {cands[0]} fluctuates at the very beginning; {seqlen_start} is the smallest that does not"
            )
        if duration is None:
            duration = plan.t_start
            notes.append(f"T = {duration} is step 1's starting value (a few LR warmups), not confirmed by a T probe")
    return TuneResult(plan, probes, seqlen_start, duration, verified, complete, notes)


# --- resolving the settings against a config ---------------------------------------------------------


def with_curriculum(cfg: Config, seqlen_start: int, duration: int) -> Config:
    """A copy of cfg with SLW at (seqlen_start, T): root pacing stays root, anything else becomes linear."""
    raw = cfg.to_dict()
    root = isinstance(cfg.curriculum.length_axis().pacing, Root)
    raw["curriculum"].update(slw_overrides(seqlen_start, duration, root=root))
    return config_from_dict(raw)


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
        c = with_curriculum(cfg, seqlen_start, max(1, round(t_start_warmups * w)))
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
    """The search in steps for this config, and what it was derived from. Raises on bad settings.

    The second value, `info`, goes into tune.json as it is: `warmup_steps` (W, the unit of the
    windows), `warmup_source`, `eval_every_steps` and `eval_sequences` (the probes' validation) and
    `skipped_candidates` (seqlen_s values outside [multiple_of, seqlen_end)).
    """
    cur = cfg.curriculum
    if cur.length_axis().user_stages:
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
            raise ConfigError(
                f"{name}: {window} steps is shorter than one validation interval (tune.eval_every_steps = {every})"
            )
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


def horizon_note(cfg: Config, plan: SearchPlan) -> str | None:
    """A note when the T probes are as long as the full run itself: tuning then costs more than training."""
    full = full_length_steps(cfg)
    if plan.horizon_steps < full:
        return None
    return (
        f"the probe horizon ({plan.horizon_steps} steps) is as long as the full run ({full} steps at full length): "
        "on this config tuning costs more than a run"
    )
