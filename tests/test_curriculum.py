import numpy as np
import pytest
import torch

from seqwarm.config import CurriculumConfig
from seqwarm.curriculum import (
    BatchSchedule,
    SeqlenSchedule,
    batch_size_warmup,
    linear_pacing,
    root_pacing,
    round_seqlen,
    truncate,
)
from seqwarm.data.order import split_segments


def random_settings(rng, n=200):
    for _ in range(n):
        multiple_of = int(rng.choice([1, 2, 4, 8, 16]))
        seqlen_start = multiple_of * int(rng.integers(1, 300 // multiple_of + 1))  # a multiple, as configs require
        seqlen_end = int(rng.integers(seqlen_start, 2100))
        duration = int(rng.integers(1, 5000))
        yield dict(seqlen_start=seqlen_start, seqlen_end=seqlen_end, duration=duration, multiple_of=multiple_of)


@pytest.mark.parametrize("pacing", ["linear", "root"])
def test_pacing_properties_on_random_settings(pacing):
    rng = np.random.default_rng(0)
    for s in random_settings(rng):
        cfg = CurriculumConfig(kind="slw", pacing=pacing, root_degree=float(rng.choice([1.5, 2, 3])), **s)
        schedule = SeqlenSchedule(cfg)
        T = s["duration"]
        steps = np.unique(
            np.concatenate([np.arange(0, min(T, 50)), rng.integers(0, 2 * T + 2, 100), [T - 1, T, T + 1]])
        )
        lengths = [schedule(int(t)) for t in steps]
        assert all(a <= b for a, b in zip(lengths, lengths[1:])), "monotone"
        assert all(s["seqlen_start"] <= x <= s["seqlen_end"] for x in lengths), "bounds"
        for t, x in zip(steps, lengths):
            if t >= T:
                assert x == s["seqlen_end"], "full length from T on"
            else:
                # the formula, rounded down to the multiple, clamped after rounding
                raw = (
                    linear_pacing(t, s["seqlen_start"], s["seqlen_end"], T)
                    if pacing == "linear"
                    else root_pacing(t, s["seqlen_start"], s["seqlen_end"], T, cfg.root_degree)
                )
                expected = max(s["seqlen_start"], int(raw) - int(raw) % s["multiple_of"])
                assert x == min(expected, s["seqlen_end"])
                assert x % s["multiple_of"] == 0 or x == s["seqlen_start"], "multiple of, unless clamped up"


def test_paper_example_multiple_of_8():
    # GPT-2 117M, seqlen_s = 8, seqlen_e = 1024, T = 60K (Section 5.1)
    schedule = SeqlenSchedule(CurriculumConfig(kind="slw", seqlen_start=8, seqlen_end=1024, duration=60000))
    assert schedule(0) == 8
    assert schedule(30000) == 516 - 516 % 8  # 8 + 1016 * 0.5 = 516 -> 512
    assert schedule(59999) == 1016  # 1023.98 rounds down
    assert schedule(60000) == 1024
    assert all(schedule(t) % 8 == 0 for t in range(0, 60001, 997))


def test_rounding_never_falls_below_start():
    # DeepSpeed's rounding would give 8 here; ours clamps to seqlen_start after rounding.
    assert round_seqlen(12.0, 8, 12, 1024) == 12
    assert round_seqlen(17.9, 8, 12, 1024) == 16
    assert round_seqlen(1022.5, 8, 12, 1023) == 1016
    assert round_seqlen(1023.0, 8, 12, 1023) == 1023  # reaches a non-multiple seqlen_end


def test_root_pacing_is_the_root():
    # r = 2: the square root of the progress; half way in time is 1/sqrt(2) of the way in length
    assert root_pacing(50, 0, 1000, 100, 2.0) == pytest.approx(1000 * 0.5**0.5)
    assert root_pacing(200, 0, 1000, 100, 2.0) == 1000


def test_discrete_stages_switch_at_the_given_step():
    cfg = CurriculumConfig(
        kind="slw", pacing="discrete", stages=[[100, 128], [150, 512]], seqlen_start=8, seqlen_end=1024
    )
    schedule = SeqlenSchedule(cfg)
    assert [schedule(t) for t in (0, 99, 100, 149, 150, 10**6)] == [128, 128, 512, 512, 1024, 1024]
    assert schedule.full_length_step == 150


def test_shortformer_switches_to_full_length_at_the_given_step():
    # Press et al. (2021): a first stage at 128 tokens, then full length (the paper's Section 5.1)
    schedule = SeqlenSchedule(CurriculumConfig(kind="shortformer", seqlen_start=128, duration=40, seqlen_end=1024))
    assert [schedule(t) for t in (0, 1, 39, 40, 41, 10**6)] == [128, 128, 128, 1024, 1024, 1024]
    assert schedule.full_length_step == 40


def test_batch_size_warmup_follows_the_formula_in_whole_micro_batches():
    # GPT-3: 16 -> 256 sequences over 4B tokens; micro-batches of 4 sequences on 2 processes: unit 8
    for tokens in range(0, 5_000_000_000, 37_000_000):
        bs = batch_size_warmup(tokens, 16, 256, 4_000_000_000, unit=8)
        exact = 16 + 240 * min(tokens / 4e9, 1.0)
        assert bs % 8 == 0 and exact - 8 < bs <= exact
    assert batch_size_warmup(0, 16, 256, 10**9, unit=8) == 16
    assert batch_size_warmup(10**9, 16, 256, 10**9, unit=8) == batch_size_warmup(10**12, 16, 256, 10**9, unit=8) == 256
    # a start below one unit still trains one whole unit
    assert batch_size_warmup(0, 3, 256, 10**9, unit=8) == 8


def test_batch_schedule_grows_with_the_tokens_only_for_bsz_warmup():
    cfg = CurriculumConfig(kind="bsz_warmup", batch_size_start=4, batch_warmup_tokens=1000, seqlen_end=64)
    schedule = BatchSchedule(cfg, global_batch_size=32, unit=4)
    assert [schedule(t) for t in (0, 100, 500, 999, 1000, 10**6)] == [4, 4, 16, 28, 32, 32]
    assert SeqlenSchedule(cfg)(0) == 64  # every step at full length
    assert BatchSchedule(CurriculumConfig(kind="slw", duration=5), 32, unit=4)(0) == 32


def test_baseline_is_full_length():
    schedule = SeqlenSchedule(CurriculumConfig(kind="none", seqlen_end=256))
    assert schedule(0) == schedule(10**9) == 256
    assert schedule.full_length_step == 0


def test_truncation_keeps_targets_aligned():
    batch = torch.arange(3 * 17).view(3, 17)  # full-length rows of seqlen_e + 1 = 17 tokens
    for seqlen in (1, 8, 16):
        inputs, targets = truncate(batch, seqlen)
        assert inputs.shape == targets.shape == (3, seqlen)
        assert torch.equal(targets, inputs + 1)  # the target of position i is token i + 1 of the row
        assert torch.equal(inputs, batch[:, :seqlen])


def test_split_segments_serves_each_target_once():
    starts, lengths = np.array([0, 100, 200]), np.array([16, 5, 40])
    served, tail_starts, tail_lengths = split_segments(starts, lengths, 8)
    assert served.tolist() == [8, 5, 8]
    assert tail_starts.tolist() == [8, 208] and tail_lengths.tolist() == [8, 32]
