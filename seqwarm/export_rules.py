"""Other frameworks' sequence-length rules, each restated as a small pure function of that framework's own step.

DeepSpeed's `fixed_root`/`fixed_linear`/`fixed_discrete` curriculum schedules, Composer's `SeqLengthWarmup` and
OLMo-core's `SequenceLengthSchedulerCallback` (truncating and splitting): each function restates, in our words, what
the named function of that project computes (read in its source; docs/EXPORT.md says which version). None is
imported: seqwarm depends on none of them. `seqwarm.export_schedule` uses them for `--table`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from seqwarm.errors import ConfigError

# --- the frameworks' length rules ---------------------------------------------------------------------


def deepspeed_fixed_root(
    global_step: int,
    *,
    min_difficulty: int,
    max_difficulty: int,
    total_curriculum_step: int,
    difficulty_step: int,
    root_degree: float = 1.0,
    floor_at_min: bool = True,
) -> int:
    """DeepSpeed's `fixed_root` / `fixed_linear` (root_degree 1) difficulty at its `global_step` (1 = first step).

    From deepspeed/runtime/data_pipeline/curriculum_scheduler.py, `CurriculumScheduler.__fixed_root_get_difficulty`:
    floor(min + (max - min) * (t / T) ** (1 / r)), less its remainder modulo difficulty_step, then at most
    max. t / T is not clamped, so past T the raw value keeps growing: a max that is not a multiple of the
    step is reached only once the raw value passes the next multiple. Since 0.19.8 the result is also
    raised to the first multiple of the step at or above min (`floor_at_min`); before, it could fall below.
    """
    raw = (float(global_step) / total_curriculum_step) ** (1.0 / root_degree)
    d = math.floor(raw * (max_difficulty - min_difficulty) + min_difficulty)
    d -= d % difficulty_step
    if floor_at_min:
        d = max(d, -(-min_difficulty // difficulty_step) * difficulty_step)
    return min(d, max_difficulty)


def deepspeed_fixed_discrete(global_step: int, *, difficulty: Sequence[int], max_step: Sequence[int]) -> int:
    """DeepSpeed's `fixed_discrete`: difficulty[i] while global_step <= max_step[i], then the last one.

    From `CurriculumScheduler.__fixed_discrete_get_difficulty` (same file as above).
    """
    for d, until in zip(difficulty, max_step):
        if global_step <= until:
            return d
    return difficulty[-1]


def deepspeed_lengths(metric: dict, steps: int, *, floor_at_min: bool = True) -> list[int]:
    """The lengths DeepSpeed's sampler sets for seqwarm steps 0..steps-1, from a `curriculum_metrics` entry.

    `DeepSpeedDataSampler.get_next_global_batch` (deepspeed/runtime/data_pipeline/data_sampling/data_sampler.py)
    adds 1 to its curriculum step before asking for a difficulty, so seqwarm's step s is DeepSpeed's s + 1.
    `CurriculumScheduler.update_difficulty` starts at min_difficulty and stops updating once the
    difficulty reaches max_difficulty: a later, shorter stage of a discrete schedule is never used.
    `floor_at_min=False` gives the rule before 0.19.8.
    """
    sc = metric["schedule_config"]
    lo, hi = metric["min_difficulty"], metric["max_difficulty"]
    if metric["schedule_type"] == "fixed_discrete":

        def rule(t: int) -> int:
            return deepspeed_fixed_discrete(t, difficulty=sc["difficulty"], max_step=sc["max_step"])
    else:
        root = sc.get("root_degree", 1.0) if metric["schedule_type"] == "fixed_root" else 1.0

        def rule(t: int) -> int:
            return deepspeed_fixed_root(
                t,
                min_difficulty=lo,
                max_difficulty=hi,
                total_curriculum_step=sc["total_curriculum_step"],
                difficulty_step=sc["difficulty_step"],
                root_degree=root,
                floor_at_min=floor_at_min,
            )

    current, out = lo, []
    for s in range(steps):
        if current < hi:
            current = rule(s + 1)
        out.append(current)
    return out


def composer_seqlen(
    batch: int, *, min_seq_length: int, max_seq_length: int, step_size: int, warmup_batches: int
) -> int:
    """Composer's `SeqLengthWarmup` length at its `state.timestamp.batch` (0 = first batch).

    From composer/algorithms/seq_length_warmup/seq_length_warmup.py, `SeqLengthWarmup.apply`: a staircase
    of K = (max - min) // step_size increments, one every W // K batches (W = int(total batches x
    duration)), so it reaches max after K * (W // K) <= W batches. Composer divides by zero when K = 0 or
    W < K; here that is a ConfigError.
    """
    increments = (max_seq_length - min_seq_length) // step_size
    if increments == 0 or warmup_batches < increments:
        raise ConfigError(
            f"curriculum.duration: Composer's SeqLengthWarmup divides by zero with {warmup_batches} warmup batches "
            f"and {increments} length increments of {step_size} (it needs warmup >= increments >= 1)"
        )
    every = warmup_batches // increments
    return min(max(step_size * (batch // every) + min_seq_length, min_seq_length), max_seq_length)


def olmo_truncated_seqlen(
    step: int, *, min_sequence_length: int, max_sequence_length: int, warmup_steps: int, keep_multiple_of: int
) -> int:
    """OLMo-core's `SequenceLengthSchedulerCallback(truncate=True)` length at its trainer step (1 = first step).

    From src/olmo_core/train/callbacks/sequence_length_scheduler.py, `_get_truncated_sequence_length`
    and `pre_step`: min + (max - min) * min(step, W) / W floored to a multiple of keep_multiple_of (128 by
    default), with no floor at min; after step W the batch is left at full length.
    """
    if step > warmup_steps:
        return max_sequence_length
    raw = min_sequence_length + (max_sequence_length - min_sequence_length) * min(step, warmup_steps) / warmup_steps
    return int(keep_multiple_of * (raw // keep_multiple_of))


def olmo_split_seqlen(step: int, *, min_sequence_length: int, max_sequence_length: int, warmup_steps: int) -> int:
    """OLMo-core's `SequenceLengthSchedulerCallback(truncate=False)` (its default) length at its step (1 = first).

    From `_get_split_sequence_length` (same file): min x 2 ** floor(log2(raw // min)), the rows split
    into more, shorter rows that keep every token (not SLW's truncation); full length after step W.
    """
    if step > warmup_steps:
        return max_sequence_length
    raw = min_sequence_length + (max_sequence_length - min_sequence_length) * min(step, warmup_steps) / warmup_steps
    return min_sequence_length * 2 ** math.floor(math.log(raw // min_sequence_length, 2))
