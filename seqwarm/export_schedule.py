"""`seqwarm export-schedule`: a config's schedule as the settings other frameworks accept, and where they differ.

For DeepSpeed, Megatron-DeepSpeed, Composer and OLMo-core this module gives (1) the settings that come
closest to the config's SLW schedule, LR and stopping rule in that framework, (2) what the framework
cannot reproduce, in words, and (3) the framework's own length rule as a small pure function, so that
`--table` can list the steps where it trains at another length than `seqwarm.curriculum.SeqlenSchedule`.

Each length rule restates, in our words, what the named function of that project computes (read in
its source; docs/EXPORT.md says which version). None is imported: seqwarm depends on none of them.

Steps: seqwarm counts steps from 0 (`SeqlenSchedule(step)`). DeepSpeed's data sampler and OLMo-core's
trainer count the first step as 1, Composer as 0; each rule takes the framework's own step, and
`lengths` converts, so the tables are in seqwarm's 0-based steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from seqwarm.config import Config
from seqwarm.curriculum import LengthAxis, Linear, Root, Stages
from seqwarm.errors import ConfigError
from seqwarm.export_documents import DOCUMENT_KIND, Export, Variant, notes_text, settings_text  # noqa: F401 (the command's API)
from seqwarm.export_rules import (  # noqa: F401 (re-exported: tests and users name them here)
    composer_seqlen,
    deepspeed_fixed_discrete,
    deepspeed_fixed_root,
    deepspeed_lengths,
    olmo_split_seqlen,
    olmo_truncated_seqlen,
)
from seqwarm.plan import plan_steps, step_plan
from seqwarm.tables import text_table

FRAMEWORKS = ("deepspeed", "megatron-deepspeed", "composer", "olmo-core")

SEQLEN_METRIC = "seqlen_truncate"
"""The curriculum metric name Megatron-DeepSpeed's `data_post_process` (pretrain_gpt.py) truncates by."""


# --- the run's length in steps --------------------------------------------------------------------------


def run_steps(cfg: Config) -> int:
    """The optimizer steps the config trains: `seqwarm plan`'s count.

    With `drop_tail: true` every row serves exactly the step's length, so the count is the clock
    ticking by batch x length (a second for 50K steps); otherwise the plan's sequence order decides
    how many tokens each step serves, and it is asked (slower: it draws every segment).
    """
    if not cfg.curriculum.drop_tail:
        return sum(1 for _ in plan_steps(cfg))
    plan = step_plan(cfg)
    while not plan.finished:
        plan.tick(plan.spec().full_tokens)  # batch x length, or x the full length when melted
    return plan.clock.step


def _steps_to_tokens(lengths: Sequence[int], batch: int, max_tokens: int | None, cap: int) -> int:
    """Steps a token-counting loop needs to reach max_tokens at `lengths` (then full length), at most cap."""
    if max_tokens is None:
        return cap
    tokens, step = 0, 0
    while tokens < max_tokens and step < cap:
        tokens += batch * (lengths[step] if step < len(lengths) else lengths[-1])
        step += 1
    return step


# --- the exports -------------------------------------------------------------------------------------


def _exportable(cfg: Config, framework: str, *, melt: bool = False) -> None:
    """A ConfigError naming the field when the curriculum uses an axis `framework` cannot represent: an attention
    window, the tokens-matched batch, closed-loop pacing, or melt (unless `melt`: its exporter maps it)."""
    c = cfg.curriculum
    if c.window_axis().varies:
        raise ConfigError(
            f"curriculum.window: {framework} has no attention-window schedule; a window warmup is not exported"
        )
    if c.batch_axis().matched:
        raise ConfigError(
            f"curriculum.batch: the tokens-matched batch (full-length rows, batch from SLW's tokens) has no {framework} "
            "equivalent; it is not exported"
        )
    if c.length_axis().adaptive:
        raise ConfigError(
            f"curriculum.pacing: adaptive pacing follows the run's loss ratio, which {framework}'s schedule cannot; "
            f"export its open-loop bound with curriculum.pacing=linear"
        )
    if c.melts and not melt:
        raise ConfigError(
            f"curriculum.packing: melt (rows split at constant tokens per step) has no {framework} equivalent; "
            "olmo-core exports it (composer where its lengths divide seqlen_end), or use packing truncate"
        )


def _slw(cfg: Config, framework: str, *, melt: bool = False) -> LengthAxis:
    """The config's length axis, or a ConfigError when it has no length schedule to export (or uses an axis the
    framework cannot represent: `_exportable`)."""
    _exportable(cfg, framework, melt=melt)
    c = cfg.curriculum
    axis = c.length_axis()
    if not axis.varies:
        raise ConfigError(
            f"curriculum.kind: {c.kind} has no sequence length schedule to export to {framework} "
            "(set curriculum.length to slw or shortformer)"
        )
    return axis


def _linear_only(axis: LengthAxis, what: str) -> None:
    if not isinstance(axis.pacing, Linear):
        raise ConfigError(f"curriculum.pacing: {what} is linear only; {axis.describe()} cannot be exported")


def deepspeed_metric(cfg: Config) -> dict:
    """The `seqlen_truncate` entry of `curriculum_metrics` for the config's curriculum."""
    pacing = _slw(cfg, "deepspeed").pacing
    c = cfg.curriculum
    if isinstance(pacing, Stages):  # discrete stages, or Shortformer's one stage
        # seqwarm's stage ends before step until_step (0-based); DeepSpeed's at global step <= max_step
        # (1-based): the same steps.
        schedule_type = "fixed_discrete"
        sc = {"difficulty": [s[1] for s in pacing.stages] + [c.seqlen_end], "max_step": [s[0] for s in pacing.stages]}
        lo = min(s[1] for s in pacing.stages)
    else:
        schedule_type = "fixed_root" if isinstance(pacing, Root) else "fixed_linear"
        sc = {"total_curriculum_step": pacing.duration, "difficulty_step": c.multiple_of}
        if isinstance(pacing, Root):
            sc["root_degree"] = pacing.root_degree
        lo = c.seqlen_start
    return {
        # A single cluster of all samples, valued by length: no offline data analysis is needed, the
        # files named "dummy" are never opened (Megatron-DeepSpeed's data-efficiency examples do the same).
        "index_to_sample_path": "dummy",
        "index_to_metric_path": "dummy",
        "difficulty_type": "value",
        "clustering_type": "single_cluster",
        "min_difficulty": lo,
        "max_difficulty": c.seqlen_end,
        "schedule_type": schedule_type,
        "schedule_config": sc,
    }


def deepspeed_block(cfg: Config) -> dict:
    """DeepSpeed's `data_efficiency` block (the form deepspeed 0.19.8 accepts) for the config's curriculum."""
    return {
        "data_efficiency": {
            "enabled": True,
            "data_sampling": {
                "enabled": True,
                # Workers would prefetch batches ahead of the difficulty they were drawn for.
                "num_workers": 0,
                "curriculum_learning": {
                    "enabled": True,
                    "data_cluster_path": "data_clusters",
                    "curriculum_metrics": {SEQLEN_METRIC: deepspeed_metric(cfg)},
                },
            },
        }
    }


def _deepspeed_variants(metric: dict) -> list[Variant]:
    # The rule before 0.19.8 (floor_at_min=False) differs only for a min_difficulty that is not a multiple
    # of difficulty_step, which seqwarm's config refuses (curriculum.seqlen_start): one variant is enough.
    return [Variant("deepspeed", lambda n: deepspeed_lengths(metric, n))]


def _deepspeed_notes(cfg: Config) -> list[str]:
    c = cfg.curriculum
    notes = [
        "DeepSpeed's sampler counts its first step as 1, so it trains at seqwarm's next length one step early.",
        "The block only schedules the length: truncating each batch to "
        f"current_difficulties['{SEQLEN_METRIC}'] is the training script's job (Megatron-DeepSpeed's "
        "data_post_process does it); the LR and the stop on tokens are the script's too.",
    ]
    pacing = c.length_axis().pacing
    if not isinstance(pacing, Stages) and c.seqlen_end % c.multiple_of:
        notes.append(
            f"seqlen_end {c.seqlen_end} is not a multiple of {c.multiple_of}: DeepSpeed stays below it until its "
            "unclamped pacing passes the next multiple."
        )
    stages = pacing.stages if isinstance(pacing, Stages) else ()
    if any(a[1] > b[1] for a, b in zip(stages, stages[1:])):
        notes.append("stages shrink: DeepSpeed never lowers a difficulty once it reaches max_difficulty.")
    if not c.drop_tail:
        notes.append("drop_tail: false (serving the truncated tails later) has no DeepSpeed equivalent.")
    return notes


def export_deepspeed(cfg: Config) -> Export:
    metric = deepspeed_metric(cfg)
    return Export("deepspeed", deepspeed_block(cfg), _deepspeed_notes(cfg), _deepspeed_variants(metric))


def megatron_flags(cfg: Config, steps: int) -> list[str]:
    """Megatron-DeepSpeed's command-line flags (megatron/arguments.py) for the config's batch, LR and stop."""
    t = cfg.train
    flags = [
        f"--seq-length {cfg.curriculum.seqlen_end}",
        f"--global-batch-size {t.global_batch_size}",
        f"--lr {t.lr:g}",
        f"--min-lr {t.min_lr:g}",
        f"--lr-decay-style {t.lr_decay_style}",
    ]
    if t.warmup_tokens:
        flags.append(f"--lr-warmup-tokens {t.warmup_tokens}")
    else:
        flags.append(f"--lr-warmup-iters {t.warmup_steps}")
    if t.lr_decay_unit == "tokens":
        # With step-wise warmup, Megatron-DeepSpeed's OptimizerParamScheduler.get_lr starts the token-wise
        # decay at the tokens trained when the warmup ends, as seqwarm's Clock.decay_start_tokens does.
        flags.append(f"--lr-decay-tokens {t.decay_tokens}")
    else:
        flags.append(f"--lr-decay-iters {t.decay_steps}")
    if t.max_tokens is not None:
        flags.append(f"--train-tokens {t.max_tokens}")
    flags.append(f"--train-iters {steps}")
    return flags


def export_megatron(cfg: Config) -> Export:
    _exportable(cfg, "megatron-deepspeed")
    t, c = cfg.train, cfg.curriculum
    if c.batch_axis().warmup_tokens is not None:
        raise ConfigError(
            f"curriculum.kind: {c.kind}: a batch warmup is not exported (Megatron's --rampup-batch-size counts "
            "samples, not tokens)"
        )
    slw = c.length_axis().varies
    n = run_steps(cfg)
    metric = deepspeed_metric(cfg) if slw else None
    if slw:
        lengths = deepspeed_lengths(metric, n + n // 10 + 16)
    else:
        lengths = [c.seqlen_end]
    # Megatron-DeepSpeed adds samples x curriculum length to consumed_train_tokens (megatron/training.py,
    # train), seqwarm's count; it needs as many iterations as that count takes at DeepSpeed's lengths.
    steps = _steps_to_tokens(lengths, t.global_batch_size, t.max_tokens, t.max_steps or 1 << 62)
    flags = megatron_flags(cfg, steps)
    notes = [
        "Megatron-DeepSpeed steps its LR scheduler inside train_step, before it adds the step's tokens: the LR "
        "of an update uses the step and token counts of the updates before it (seqwarm's counts the update "
        "itself), and the first update has LR 0 under a warmup.",
    ]
    settings: dict = {"flags": flags}
    variants: list[Variant] = []
    if slw:
        flags.append("--data-efficiency-curriculum-learning")
        flags.append("--deepspeed --deepspeed_config ds_config.json")
        settings["ds_config.json"] = deepspeed_block(cfg)
        notes = _deepspeed_notes(cfg)[:1] + notes
        if not c.drop_tail:
            notes.append("drop_tail: false (serving the truncated tails later) has no Megatron-DeepSpeed equivalent.")
        if t.max_tokens is not None and steps != n:
            notes.append(
                f"At DeepSpeed's lengths the run needs {steps:,} iterations to reach --train-tokens; seqwarm: {n:,}."
            )
        variants = _deepspeed_variants(metric)[:1]
    return Export("megatron-deepspeed", settings, notes, variants)


def composer_duration(total_batches: int, warmup_batches: int) -> float:
    """The fraction `duration` for which Composer's int(total x duration) is exactly warmup_batches."""
    d = warmup_batches / total_batches
    while int(total_batches * d) < warmup_batches:
        d = math.nextafter(d, math.inf)
    return d


def export_composer(cfg: Config) -> Export:
    _linear_only(_slw(cfg, "composer", melt=True), "Composer's SeqLengthWarmup")
    c, t = cfg.curriculum, cfg.train
    n = run_steps(cfg)
    if c.duration > n:
        raise ConfigError(
            f"curriculum.duration: T = {c.duration} exceeds the run's {n} steps; Composer's duration is a fraction of "
            "max_duration, at most 1"
        )
    args = {
        "duration": composer_duration(n, c.duration),
        "min_seq_length": c.seqlen_start,
        "max_seq_length": c.seqlen_end,
        "step_size": c.multiple_of,
        "truncate": not c.melts,
        "preserve_end_of_sequence": False,
    }
    rule = dict(min_seq_length=c.seqlen_start, max_seq_length=c.seqlen_end, step_size=c.multiple_of)
    composer_seqlen(0, **rule, warmup_batches=c.duration)  # its division by zero, as a ConfigError, now
    if c.melts:
        _composer_melts(c, rule)
    notes = [
        "Composer's warmup is a staircase: one increment of step_size every W // K batches (K increments), "
        "so it reaches max_seq_length at batch K * (W // K), before T when K does not divide T.",
        "Composer counts a batch's tokens before the algorithm truncates it, and refuses token durations with "
        "SeqLengthWarmup (composer issue 226): max_duration is seqwarm's step count in batches, and the LR "
        "schedule runs over batches, not over trained tokens (Appendix A.2's token-wise decay is lost).",
    ]
    if t.lr_decay_unit == "tokens" and t.max_tokens is not None:
        notes.append(f"max_duration {n}ba is the step at which seqwarm reaches max_tokens {t.max_tokens:,}.")
    if not c.drop_tail:
        notes.append("drop_tail: false (serving the truncated tails later) has no Composer equivalent.")
    if c.melts:
        notes.append(
            "truncate=False reshapes rows of inputs and the model shifts inside each short row: a row of seqlen_end "
            "trains seqlen_end - k targets when split in k (seqwarm keeps all seqlen_end), and the batch grows k-fold."
        )
    settings = {"SeqLengthWarmup": args, "Trainer": {"max_duration": f"{n}ba"}}
    variants = [
        Variant("composer", lambda k: [composer_seqlen(b, **rule, warmup_batches=c.duration) for b in range(k)])
    ]
    return Export("composer", settings, notes, variants)


def _composer_melts(c, rule: dict) -> None:
    """Composer's truncate=False equals melt only where each of its staircase lengths divides seqlen_end (then its
    reshape of the flattened batch splits every row whole); otherwise a ConfigError naming the first that does not."""
    for b in range(c.duration):
        length = composer_seqlen(b, **rule, warmup_batches=c.duration)
        if c.seqlen_end % length:
            raise ConfigError(
                f"curriculum.packing: Composer's SeqLengthWarmup(truncate=False) trains its staircase length {length} "
                f"at batch {b}, which does not divide seqlen_end ({c.seqlen_end}): it would join rows and drop a "
                "remainder, not melt; export melt to olmo-core"
            )


def _olmo_melts(c) -> None:
    """OLMo-core's truncate=False trains seqlen_start x 2^j only; melt's lengths (divisors of seqlen_end that are
    multiples of multiple_of) must be that set, or a ConfigError naming one that is not."""
    ours = {d for d in range(c.seqlen_start, c.seqlen_end + 1) if c.seqlen_end % d == 0 and d % c.multiple_of == 0}
    extra = sorted(ours - {c.seqlen_start << j for j in range(c.seqlen_end.bit_length())})
    if extra:
        raise ConfigError(
            f"curriculum.packing: melt trains length {extra[0]} here, which OLMo-core's truncate=False (seqlen_start x "
            "a power of 2) never does; no OLMo-core equivalent"
        )


def export_olmo(cfg: Config) -> Export:
    _linear_only(_slw(cfg, "olmo-core", melt=True), "OLMo-core's SequenceLengthSchedulerCallback")
    c = cfg.curriculum
    lo, hi, w = c.seqlen_start, c.seqlen_end, c.duration
    ratio = hi // lo if hi % lo == 0 else 0
    if hi <= lo or ratio & (ratio - 1) or ratio == 0:
        # pre_train refuses this for truncate=True (its check reads "when 'truncate=False'" but runs when true).
        raise ConfigError(
            f"curriculum.seqlen_end: OLMo-core's sequence length scheduler needs seqlen_end ({hi}) = seqlen_start "
            f"({lo}) x a power of 2 greater than 1"
        )
    n = run_steps(cfg)
    args = {"min_sequence_length": lo, "warmup_steps": w, "truncate": True, "keep_multiple_of": c.multiple_of}
    if c.melts:
        _olmo_melts(c)
        args = {"min_sequence_length": lo, "warmup_steps": w, "truncate": False}
    notes = [
        "OLMo-core's step counts from 1, so it trains at seqwarm's next length one step early; keep_multiple_of "
        f"{c.multiple_of} replaces its default 128, which floors every length below 128 to 0.",
        "OLMo-core's token totals (and so a token max_duration or token-unit LR schedule) count the tokens "
        "before truncation: max_duration is seqwarm's step count, and the LR runs over steps.",
        "OLMo-core trains a row of sequence_length tokens on sequence_length - 1 targets; seqwarm on "
        "seqlen_end targets (rows of seqlen_end + 1 tokens).",
    ]
    if not c.drop_tail:
        notes.append("drop_tail: false (serving the truncated tails later) has no OLMo-core equivalent.")
    if c.melts:
        notes[0] = "OLMo-core's step counts from 1, so it trains at seqwarm's next length one step early."
        notes.append(
            "truncate=False melts rows of inputs and shifts inside each piece: a row split in k trains k - 1 "
            "targets fewer than seqwarm's melt, which keeps every target; both raise the micro-batch k-fold."
        )
    settings = {
        "SequenceLengthSchedulerCallback": args,
        "NumpyFSLDataset": {"sequence_length": hi},
        # Plain values (OLMo-core's Duration is a value and a unit); settings_text writes them as Python.
        "Trainer": {"max_duration": {"value": n, "unit": "steps"}},
    }

    def exported(k: int, keep: int = c.multiple_of) -> list[int]:
        kw = dict(min_sequence_length=lo, max_sequence_length=hi, warmup_steps=w, keep_multiple_of=keep)
        return [olmo_truncated_seqlen(s + 1, **kw) for s in range(k)]

    split = dict(min_sequence_length=lo, max_sequence_length=hi, warmup_steps=w)
    melted = Variant(
        "olmo-core truncate=False (its default: power-of-two split)",
        lambda k: [olmo_split_seqlen(s + 1, **split) for s in range(k)],
    )
    if c.melts:
        return Export("olmo-core", settings, notes, [melted])
    variants = [Variant(f"olmo-core truncate=True, keep_multiple_of={c.multiple_of}", exported)]
    if c.multiple_of != 128:
        variants.append(
            Variant("olmo-core truncate=True, keep_multiple_of=128 (its default)", lambda k: exported(k, 128))
        )
    variants.append(melted)
    return Export("olmo-core", settings, notes, variants)


EXPORTERS: dict[str, Callable[[Config], Export]] = {
    "deepspeed": export_deepspeed,
    "megatron-deepspeed": export_megatron,
    "composer": export_composer,
    "olmo-core": export_olmo,
}


def export(cfg: Config, framework: str) -> Export:
    if framework not in EXPORTERS:
        raise ConfigError(f"--to: unknown framework {framework!r} (choose from {', '.join(FRAMEWORKS)})")
    return EXPORTERS[framework](cfg)


# --- the table of differences ------------------------------------------------------------------------


def differences(ours: Sequence[int], theirs: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Runs of consecutive steps where the lengths differ, with the same pair: (first, last, ours, theirs)."""
    runs: list[tuple[int, int, int, int]] = []
    for s, (a, b) in enumerate(zip(ours, theirs)):
        if a == b:
            continue
        if runs and runs[-1][1] == s - 1 and runs[-1][2:] == (a, b):
            runs[-1] = (runs[-1][0], s, a, b)
        else:
            runs.append((s, s, a, b))
    return runs


def table_text(cfg: Config, exp: Export) -> str:
    """For each variant: how many of the run's steps differ from seqwarm's length, and those steps' ranges."""
    n = run_steps(cfg)
    curriculum = step_plan(cfg).curriculum  # its lengths: truncated or melted
    ours = [curriculum.at(s, 0).seqlen for s in range(n)]
    out = []
    for v in exp.variants:
        runs = differences(ours, v.lengths(n))
        count = sum(last - first + 1 for first, last, _, _ in runs)
        out.append(f"{v.label}: {count:,} of {n:,} steps at another length than seqwarm's (steps from 0)")
        if runs:
            rows = [["steps", "seqwarm", "framework"]]
            rows += [[f"{a}" if a == b else f"{a}-{b}", str(x), str(y)] for a, b, x, y in runs]
            out.append(text_table(rows, right=(1, 2), rule=False))
    return "\n".join(out) + "\n"


__all__ = [
    "FRAMEWORKS",
    "Export",
    "Variant",
    "composer_duration",
    "composer_seqlen",
    "deepspeed_block",
    "deepspeed_fixed_discrete",
    "deepspeed_fixed_root",
    "deepspeed_lengths",
    "deepspeed_metric",
    "differences",
    "export",
    "megatron_flags",
    "notes_text",
    "olmo_split_seqlen",
    "olmo_truncated_seqlen",
    "run_steps",
    "settings_text",
    "table_text",
]
