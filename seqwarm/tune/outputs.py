"""What `seqwarm tune` writes and prints: tune.md, tune.json, recommendation.yaml, deepspeed.json, and the progress lines.

The texts and records are pure functions of the search's result and the config; `write_outputs`
alone touches files, each written atomically.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import yaml

from seqwarm import export_schedule
from seqwarm.config import PACKAGED_CONFIGS, Config
from seqwarm.curriculum import Root
from seqwarm.files import atomic_write
from seqwarm.plan import plan_steps
from seqwarm.tables import Column, markdown_table
from seqwarm.tune.search import SEQLEN, Probe, ProbeResult, SearchPlan, TuneResult, with_curriculum

REPORT = "tune.md"
RESULT = "tune.json"
SNIPPET = "recommendation.yaml"
DEEPSPEED = "deepspeed.json"


def config_name(config: str | None) -> str:
    """The tuned config's name in titles and the default output directory."""
    return Path(config).stem if config else "defaults"


# The overrides the recommendation's command line sets itself, and seqwarm 0.2's `curriculum.kind`, which would
# override its `curriculum.length` (a tuned run's own value of these is what the recommendation replaces).
RECOMMENDED_KEYS = ("curriculum.length", "curriculum.seqlen_start", "curriculum.duration", "curriculum.kind")


def train_command(cfg: Config, config: str | None, overrides: Sequence[str], recommended: Sequence[str]) -> str:
    """`seqwarm train ...` for the tuned run with the recommendation: the config as `seqwarm train` finds it (a
    shipped one by name, another by its path, none for seqwarm's defaults), the tune's overrides (its model, data,
    LR: `model.family=llama` trains the family that was tuned) and then the recommended curriculum fields, which
    replace the tune's own values of them."""
    args = ["seqwarm", "train"]
    if config is not None:
        path = Path(config)
        args.append(path.stem if path.resolve().parent == PACKAGED_CONFIGS.resolve() else str(config))
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key == "curriculum.kind":  # the legacy key set the batch axis too: keep that part
            args.append(f"curriculum.batch={cfg.curriculum.batch}")
        elif key not in RECOMMENDED_KEYS:
            args.append(item)
    return shlex.join([*args, *recommended])


# --- progress lines -----------------------------------------------------------------------------------


def plan_line(plan: SearchPlan, info: dict, out: Path) -> str:
    return (
        f"tune: LR warmup {info['warmup_steps']:g} steps; seqlen_s probes {plan.begin_steps} steps at T={plan.t_start}, "
        f"T probes {plan.horizon_steps} steps; seqlen_s in {list(plan.candidates)}, "
        f"T in {plan.t_grid.start}..{plan.t_grid[-1]} step {plan.t_grid.step}; in {out}"
    )


def probe_line(count: int, steps: int, result: ProbeResult, ratio: float, factor: float) -> str:
    """One probe's line: its largest perplexity ratio, the verdict and its cost."""
    r = result
    verdict = "stable" if ratio <= factor else "fluctuates"
    return (
        f"[{count}] seqlen_s={r.seqlen_start} T={r.duration} ({steps} steps): max ppl ratio {ratio:.3f} -> {verdict}"
        f"{' (diverged)' if r.diverged_step is not None else ''}, {r.tokens:,} tokens, "
        f"{r.time_s:.1f} s{' (cached)' if r.cached else ''}"
    )


# --- snippets -----------------------------------------------------------------------------------------


def full_run_tokens(cfg: Config, result: TuneResult) -> int:
    """The full run's token budget: max_tokens, or the tokens of max_steps steps at the recommendation."""
    if cfg.train.max_tokens:
        return cfg.train.max_tokens
    c = with_curriculum(cfg, result.seqlen_start or result.plan.candidates[0], result.duration or result.plan.t_start)
    return max((r["tokens"] for r in plan_steps(c)), default=0)


def curriculum_snippet(cfg: Config, seqlen_start: int, duration: int) -> dict:
    c = with_curriculum(cfg, seqlen_start, duration).curriculum
    snippet = {
        "length": c.length,
        "pacing": c.pacing,
        "seqlen_start": seqlen_start,
        "seqlen_end": c.seqlen_end,
        "duration": duration,
    }
    if isinstance(c.length_axis().pacing, Root):
        snippet["root_degree"] = c.root_degree
    return snippet | {"multiple_of": c.multiple_of}


def deepspeed_block(cfg: Config, seqlen_start: int, duration: int) -> dict:
    """DeepSpeed's `data_efficiency` block for the same schedule: the form deepspeed 0.19.8 accepts (docs/EXPORT.md)."""
    return export_schedule.deepspeed_block(with_curriculum(cfg, seqlen_start, duration))


def snippet_text(result: TuneResult, cfg: Config, config: str | None) -> str:
    """recommendation.yaml: the curriculum section, under a comment saying whether the search finished."""
    snippet = {"curriculum": curriculum_snippet(cfg, result.seqlen_start, result.duration)}
    head = f"# seqwarm tune {config_name(config)}: {'complete' if result.complete else 'INCOMPLETE (budget ran out)'}"
    return head + "\n" + yaml.safe_dump(snippet, sort_keys=False)


def deepspeed_text(result: TuneResult, cfg: Config) -> str:
    return json.dumps(deepspeed_block(cfg, result.seqlen_start, result.duration), indent=2) + "\n"


# --- tune.md and tune.json ----------------------------------------------------------------------------


def cost(result: TuneResult, cfg: Config) -> dict:
    """The probes' summed cost, and as a fraction of the full run's token budget (None without one)."""
    tokens = sum(p.result.tokens for p in result.probes)
    budget = full_run_tokens(cfg, result)
    return {
        "tokens": tokens,
        "full_run_tokens": budget,
        "fraction": tokens / budget if budget else None,
        "steps": result.probe_steps,
        "time_s": sum(p.result.time_s for p in result.probes),
    }


def _verdict(p: Probe) -> str:
    text = "stable" if p.stable else "fluctuates"
    return text + (" (diverged)" if p.result.diverged_step is not None else "")


PROBE_COLUMNS: list[Column] = [  # rows: (number, Probe)
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


def report_text(result: TuneResult, cfg: Config, info: dict, config: str | None, overrides: Sequence[str] = ()) -> str:
    """tune.md: the recommendation, notes, settings in steps, the probes' table, their cost, both snippets;
    `overrides` are the tune's own (`seqwarm tune CONFIG overrides`), repeated in the recommendation's command."""
    plan = result.plan
    spent = cost(result, cfg)
    tokens, budget, fraction = spent["tokens"], spent["full_run_tokens"], spent["fraction"]
    s, t = result.seqlen_start, result.duration
    name = config_name(config)
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
        + f"; {result.probe_steps:,} probe steps, {spent['time_s']:.0f} s of probe training (evaluation included).",
        "",
        "## Settings",
        "",
        f"- LR warmup W = {info['warmup_steps']:g} steps ({info['warmup_source']}).",
        f"- Steps 1-2: seqlen_s in {list(plan.candidates)}, smallest first, then bisection; each probe trains "
        f'{plan.begin_steps} steps ("the very beginning") at T = {plan.t_start}.'
        + (
            f" Skipped (not in [multiple_of, seqlen_end)): {info['skipped_candidates']}."
            if info["skipped_candidates"]
            else ""
        ),
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
        c = with_curriculum(cfg, s, t).curriculum
        recommended = [f"curriculum.length={c.length}", f"curriculum.seqlen_start={s}", f"curriculum.duration={t}"]
        lines += [
            "## seqwarm",
            "",
            f"`{SNIPPET}`, or on the command line: `{train_command(cfg, config, overrides, recommended)}`",
            "",
            "```yaml",
            yaml.safe_dump({"curriculum": curriculum_snippet(cfg, s, t)}, sort_keys=False).rstrip(),
            "```",
            "",
            "## DeepSpeed",
            "",
            f"`{DEEPSPEED}`, to merge into the DeepSpeed config (DeepSpeed counts steps from 1; "
            f"`seqwarm export-schedule CONFIG {' '.join(recommended)} --to deepspeed --table` lists where its lengths "
            "differ: "
            "docs/EXPORT.md).",
            "",
            "```json",
            json.dumps(deepspeed_block(cfg, s, t), indent=2),
            "```",
            "",
        ]
    return "\n".join(lines)


def result_record(
    result: TuneResult, cfg: Config, info: dict, config: str | None, overrides: Sequence[str] = ()
) -> dict:
    """tune.json: the same as tune.md, machine-readable, with every probe's validation curve."""
    plan = result.plan
    return {
        "config": config,
        "overrides": list(overrides),
        "recommendation": {
            "seqlen_start": result.seqlen_start,
            "duration": result.duration,
            "duration_verified": result.duration_verified,
        },
        "complete": result.complete,
        "notes": result.notes,
        "plan": asdict(plan) | {"t_grid": [plan.t_grid.start, plan.t_grid[-1], plan.t_grid.step]},
        **info,
        "cost": cost(result, cfg),
        "probes": [
            {
                "stage": p.stage,
                "window": p.window,
                "max_ratio": p.max_ratio if math.isfinite(p.max_ratio) else None,
                "stable": p.stable,
            }
            | asdict(p.result)
            for p in result.probes
        ],
    }


def write_outputs(
    result: TuneResult, cfg: Config, info: dict, out: Path, config: str | None, overrides: Sequence[str] = ()
) -> None:
    """tune.md, tune.json, and (with a recommendation) recommendation.yaml and deepspeed.json.

    Without a recommendation the snippets of an earlier tune in `out` are removed, so that the
    directory never pairs this report with another search's answer.
    """
    out.mkdir(parents=True, exist_ok=True)
    if result.recommended:
        atomic_write(out / SNIPPET, snippet_text(result, cfg, config))
        atomic_write(out / DEEPSPEED, deepspeed_text(result, cfg))
    else:
        for stale in (SNIPPET, DEEPSPEED):
            (out / stale).unlink(missing_ok=True)
    atomic_write(out / REPORT, report_text(result, cfg, info, config, overrides))
    atomic_write(out / RESULT, json.dumps(result_record(result, cfg, info, config, overrides), indent=1) + "\n")
