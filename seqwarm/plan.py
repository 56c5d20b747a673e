"""`seqwarm plan`: the schedule a config will follow, step by step, without training or data.

It runs the very functions training uses (pacing, the sequence order of `seqwarm.data.order`, the
clock, the LR, the stopping rule), so what it prints is what `train` will do.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator

from seqwarm.config import Config
from seqwarm.curriculum import BatchSchedule, SeqlenSchedule
from seqwarm.data.format import model_config
from seqwarm.data.order import SequenceOrder
from seqwarm.errors import ConfigError
from seqwarm.schedule import Clock, finished, learning_rate
from seqwarm.tables import text_table

MAX_PLAN_STEPS = 1_000_000
"""The most steps `seqwarm plan` simulates: about a minute of one core and 0.4 GB for its rows, over 3x
the longest shipped config (gpt2-117m-bsz512, 300K steps). A plan is simulated step by step (with
`drop_tail: false` the tokens of a step depend on every step before it), so without a bound
`train.max_tokens=1e15` would run for days; a larger plan is refused in one line before any work."""

# flop_split's keys, as the footer prints them
PARTS = {"body": "body (the blocks' matmuls)", "attention": "attention (scores and values)", "output": "output layer"}


def plan_steps(cfg: Config) -> Iterator[dict]:
    """One dict per optimizer step: step (after it), seqlen, batch_size, tokens (cumulative), lr, flops."""
    t = cfg.train
    gpt = model_config(cfg)
    seqlen_of = SeqlenSchedule(cfg.curriculum)
    batch_size_of = BatchSchedule(cfg.curriculum, t.global_batch_size, unit=t.micro_batch_size)
    # The corpus's size only changes which sequences are drawn, never how many tokens each serves.
    order = SequenceOrder(1 << 62, cfg.curriculum.seqlen_end, seed=cfg.run.seed, drop_tail=cfg.curriculum.drop_tail)
    clock = Clock()
    while not finished(clock, t):
        seqlen = seqlen_of(clock.step)
        batch_size = batch_size_of(clock.tokens)
        _, served = order.next_segments(batch_size, seqlen)
        tokens = int(served.sum())
        lr = learning_rate(clock.after(tokens, t), t)
        clock.tick(tokens, t)
        # Padded rows cost a full-length forward/backward too.
        flops = len(served) * seqlen * gpt.flops_per_token(seqlen)
        yield {
            "step": clock.step,
            "seqlen": seqlen,
            "batch_size": batch_size,
            "tokens": clock.tokens,
            "lr": lr,
            "flops": flops,
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


def bounded_plan(cfg: Config) -> list[dict]:
    """`plan_steps` as a list, refused with a one-line ConfigError beyond MAX_PLAN_STEPS (before any
    work when the token budget alone says so, else once the simulation passes the bound)."""
    if min_steps(cfg) > MAX_PLAN_STEPS:
        raise _too_long(cfg, f"at least {min_steps(cfg):,}")
    rows = list(itertools.islice(plan_steps(cfg), MAX_PLAN_STEPS + 1))
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
        positions = r["batch_size"] * r["seqlen"]
        for part, per_token in gpt.flop_split(r["seqlen"]).items():
            totals[part] += positions * per_token
    total = sum(totals.values())
    return {part: v / total for part, v in totals.items()}


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
    summary = {
        "steps": len(rows),
        "tokens": rows[-1]["tokens"],
        "flops": total_flops,
        # In the rows' numbering: row k is the k-th step, which trains at schedule(k - 1).
        "full_length_step": SeqlenSchedule(cfg.curriculum).full_length_step + 1,
        "params": model_config(cfg).n_params(),
        "flop_share": flop_shares(cfg, rows),
    }
    if jsonl:
        for r in shown:
            out.write(json.dumps(_short_floats(r)) + "\n")
        out.write(json.dumps(_short_floats({"summary": summary})) + "\n")
        return summary
    table = [["step", "seqlen", "batch", "tokens", "lr", "flops"]]
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
        )
    out.write(text_table(table, right=range(6), rule=False) + "\n")
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
