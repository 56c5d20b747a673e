"""`seqwarm plan`: the schedule a config will follow, step by step, without training or data.

It drives the same step plan training drives (`seqwarm.schedule.StepPlan`: the curriculum, the
clock, the LR, the stopping rule) with the sequence order of `seqwarm.data.order` standing in for
the data, so what it prints is what `train` will do.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator

from seqwarm.config import Config
from seqwarm.curriculum import Curriculum
from seqwarm.data.order import SequenceOrder
from seqwarm.errors import ConfigError
from seqwarm.model_config import model_config
from seqwarm.schedule import StepPlan
from seqwarm.tables import text_table

MAX_PLAN_STEPS = 1_000_000
"""The most steps `seqwarm plan` simulates: about a minute of one core and 0.4 GB for its rows, over 3x
the longest shipped config (gpt2-117m-bsz512, 300K steps). A plan is simulated step by step (with
`drop_tail: false` the tokens of a step depend on every step before it), so without a bound
`train.max_tokens=1e15` would run for days; a larger plan is refused in one line before any work."""

# flop_split's keys, as the footer prints them
PARTS = {"body": "body (the blocks' matmuls)", "attention": "attention (scores and values)", "output": "output layer"}


def step_plan(cfg: Config, processes: int = 1) -> StepPlan:
    """The step plan a config's run follows (as `seqwarm.trainer_state.build` makes it), at a new clock."""
    t = cfg.train
    return StepPlan(
        Curriculum(cfg.curriculum, t.global_batch_size, unit=t.micro_batch_size * processes), t.lr_schedule()
    )


STABLE = {"loss_ratio": 1.0}
"""The signal `plan_steps` gives closed-loop pacing by default: every step stable, its fastest (open-loop) schedule."""
UNSTABLE = {"loss_ratio": float("inf")}
"""Every step unstable: closed-loop pacing's slowest schedule (its maximum duration)."""


def window_share(seqlen: int, window: int | None) -> float:
    """The attention FLOPs of a windowed row as a share of causal attention's: position i (1-based) attends
    min(i, window) keys instead of i, so sum_i min(i, w) / sum_i i. 1 without a window (the same FLOPs as before)."""
    if window is None or window >= seqlen:
        return 1.0
    keys = window * (window + 1) // 2 + (seqlen - window) * window
    return keys / (seqlen * (seqlen + 1) // 2)


def step_flop_split(gpt, seqlen: int, window: int | None) -> dict[str, float]:
    """`flop_split` per token at a length, its attention term scaled by the window's share (`window_share`)."""
    split = dict(gpt.flop_split(seqlen))
    split["attention"] *= window_share(seqlen, window)
    return split


def plan_steps(cfg: Config, signals: dict = STABLE) -> Iterator[dict]:
    """One dict per optimizer step: step (after it), seqlen, batch_size, tokens (cumulative), lr, flops, window
    (None: full causal attention), split (rows per sequence when melted), token_target (the matched control's SLW
    tokens). Closed-loop pacing is fed `signals` after every step (default: stable, its fastest schedule)."""
    gpt = model_config(cfg)
    plan = step_plan(cfg)
    # The corpus's size only changes which sequences are drawn, never how many tokens each serves.
    order = SequenceOrder(1 << 62, cfg.curriculum.seqlen_end, seed=cfg.run.seed, drop_tail=cfg.curriculum.drop_tail)
    while not plan.finished:
        spec = plan.spec()
        _, served = order.next_segments(spec.batch_size, spec.draw_length)
        tokens = int(served.sum())
        lr = plan.lr(tokens)
        plan.tick(tokens)
        plan.observe(signals)
        # Padded rows cost a full-length forward/backward too.
        split = step_flop_split(gpt, spec.seqlen, spec.window)
        flops = len(served) * spec.split * spec.seqlen * sum(split.values())
        yield {
            "step": plan.clock.step,
            "seqlen": spec.seqlen,
            "batch_size": spec.batch_size,
            "tokens": plan.clock.tokens,
            "lr": lr,
            "flops": flops,
            "window": spec.window,
            "split": spec.split,
            "token_target": spec.token_target,
        }


def min_steps(cfg: Config) -> int:
    """A lower bound on the plan's steps: no step trains on more than a full batch at full length."""
    t = cfg.train
    per_step = t.global_batch_size * cfg.curriculum.seqlen_end
    bounds = [t.max_steps] if t.max_steps else []
    if t.max_tokens:
        bounds.append(-(-t.max_tokens // per_step))
    return min(bounds)


def _too_long(cfg: Config, steps: str) -> ConfigError:
    field = "train.max_tokens" if cfg.train.max_tokens else "train.max_steps"
    return ConfigError(
        f"{field}: the plan has {steps} steps, more than the {MAX_PLAN_STEPS:,} that `seqwarm plan` simulates; "
        "plan a shorter run (its first steps are the same), e.g. train.max_steps=100000"
    )


def bounded_plan(cfg: Config, signals: dict = STABLE) -> list[dict]:
    """`plan_steps` as a list, refused with a one-line ConfigError beyond MAX_PLAN_STEPS (before any
    work when the token budget alone says so, else once the simulation passes the bound)."""
    if min_steps(cfg) > MAX_PLAN_STEPS:
        raise _too_long(cfg, f"at least {min_steps(cfg):,}")
    rows = list(itertools.islice(plan_steps(cfg, signals), MAX_PLAN_STEPS + 1))
    if len(rows) > MAX_PLAN_STEPS:
        raise _too_long(cfg, "over " + f"{MAX_PLAN_STEPS:,}")
    return rows


def flop_shares(cfg: Config, rows: list[dict]) -> dict[str, float]:
    """The share of the schedule's training FLOPs in each part of `GPTConfig.flop_split` (they sum to 1).

    Weighted as `plan_steps` counts a step: every row of the batch at the step's length, a padded row
    as much as a full one. A curriculum's short early steps move FLOPs from attention to the rest (Section 5.1).
    """
    gpt = model_config(cfg)
    totals = dict.fromkeys(PARTS, 0.0)
    for r in rows:
        positions = r["batch_size"] * r.get("split", 1) * r["seqlen"]
        for part, per_token in step_flop_split(gpt, r["seqlen"], r.get("window")).items():
            totals[part] += positions * per_token
    total = sum(totals.values())
    return {part: v / total for part, v in totals.items()}


def _new_axes(curriculum) -> bool:
    """Whether a curriculum uses an axis of issue 26 (melt, window, matched, adaptive): its plan shows tokens per step."""
    return curriculum.melts or curriculum.window.axis.varies or curriculum.batch.axis.matched or curriculum.stateful


def _step_tokens(rows: list[dict], r: dict) -> int:
    i = r["step"] - 1  # rows are numbered from 1, in order
    return r["tokens"] - (rows[i - 1]["tokens"] if i else 0)


def _short_floats(obj):
    """Floats to 12 significant digits, for --jsonl: an LR computed as 0.0006000000000000001 prints as 0.0006
    (issue 27); 12 digits keep every value a user could set or compare, far above float noise."""
    if isinstance(obj, float):
        return float(f"{obj:.12g}")
    if isinstance(obj, dict):
        return {k: _short_floats(v) for k, v in obj.items()}
    return obj


def print_plan(cfg: Config, *, every: int | None = None, jsonl: bool = False, out=None) -> dict:
    """Print the plan (a table, or JSONL with every step) and return its totals."""
    out = out or sys.stdout
    rows = bounded_plan(cfg)
    if not rows:
        raise ValueError("plan: the config stops before its first step")
    every = every or (1 if jsonl else max(1, len(rows) // 40))
    shown = [r for r in rows if r["step"] % every == 0 or r["step"] in (1, len(rows))]
    total_flops = sum(r["flops"] for r in rows)
    curriculum = step_plan(cfg).curriculum
    summary = {
        "steps": len(rows),
        "tokens": rows[-1]["tokens"],
        "flops": total_flops,
        # In the rows' numbering: row k is the k-th step, which trains at schedule(k - 1).
        "full_length_step": curriculum.full_length_step + 1,
        "params": model_config(cfg).n_params(),
        "flop_share": flop_shares(cfg, rows),
    }
    if curriculum.adaptive_bounds is not None:
        slowest = bounded_plan(cfg, UNSTABLE)
        fast, slow = curriculum.adaptive_bounds
        summary["adaptive"] = {
            "fastest_full_step": fast + 1,
            "slowest_full_step": slow + 1,
            "slowest_steps": len(slowest),
        }
    if jsonl:
        for r in shown:
            out.write(json.dumps(_short_floats(r)) + "\n")
        out.write(json.dumps(_short_floats({"summary": summary})) + "\n")
        return summary
    table = [["step", "seqlen", "batch", "tokens", "lr", "flops"]]
    # The columns of the axes in use only, so a plan without them prints as it always did.
    extra = {
        "rows": ("rows", any(r["split"] > 1 for r in rows), lambda r: str(r["batch_size"] * r["split"])),
        "window": ("window", any(r["window"] is not None for r in rows), lambda r: str(r["window"] or "full")),
        "step tokens": ("step tokens", _new_axes(curriculum), lambda r: f"{_step_tokens(rows, r):,}"),
        "slw tokens": ("slw tokens", any(r["token_target"] for r in rows), lambda r: f"{r['token_target']:,}"),
    }
    columns = [(name, fmt) for name, shown_, fmt in extra.values() if shown_]
    table[0] += [name for name, _ in columns]
    for r in shown:
        table.append(
            [
                str(r["step"]),
                str(r["seqlen"]),
                str(r["batch_size"]),
                f"{r['tokens']:,}",
                f"{r['lr']:.3e}",
                f"{r['flops']:.3e}",
            ]
            + [fmt(r) for _, fmt in columns]
        )
    out.write(text_table(table, right=range(len(table[0])), rule=False) + "\n")
    if "adaptive" in summary:
        a = summary["adaptive"]
        out.write(
            f"adaptive pacing: the schedule depends on the run's loss ratio; the table is its fastest (every step "
            f"stable: the open-loop schedule, full from step {a['fastest_full_step']:,}); at its slowest (no step "
            f"stable) full from step {a['slowest_full_step']:,}, {a['slowest_steps']:,} steps in all\n"
        )
    # Before the total, which stays the last line (scripts read its "full length from step N").
    shares = ", ".join(f"{PARTS[k]} {v:.1%}" for k, v in summary["flop_share"].items())
    out.write(f"FLOPs by part, over the whole schedule: {shares}\n")
    stop = f"max_tokens {cfg.train.max_tokens:,}" if cfg.train.max_tokens else f"max_steps {cfg.train.max_steps:,}"
    out.write(
        f"total: {summary['steps']:,} steps to reach {stop}; {summary['tokens']:,} tokens, "
        f"{total_flops:.3e} FLOPs ({total_flops / 8.64e19:.3g} PFLOP/s-days), "
        f"full length from step {summary['full_length_step']:,}\n"
    )
    return summary
