"""The public API: the names other code relies on, and docs/API.md's examples, run as written."""

import re
from pathlib import Path

import pytest

import seqwarm

DOCS = Path(__file__).resolve().parent.parent / "docs" / "API.md"
CONTRACT = (
    "SeqlenSchedule BatchSchedule truncate Clock learning_rate LossRatio adam_statistics NonFiniteGuard GPT GPTConfig "
    "load_config train"
).split()


def test_the_contracted_names_are_exported():
    for name in CONTRACT:
        assert name in seqwarm.__all__
        assert getattr(seqwarm, name) is not None
    with pytest.raises(AttributeError):
        seqwarm.no_such_name  # noqa: B018


def test_schedules_need_no_config_object():
    linear = seqwarm.SeqlenSchedule.linear(seqlen_start=8, seqlen_end=64, duration=8)
    assert [linear(t) for t in range(10)] == [8, 8, 16, 24, 32, 40, 48, 56, 64, 64]
    assert linear.full_length_step == 8
    root = seqwarm.SeqlenSchedule.root(seqlen_start=8, seqlen_end=1024, duration=100, root_degree=2)
    assert root(25) == 8 + int(1016 * 0.5) // 8 * 8  # sqrt(1/4) = 1/2 of the way
    stages = seqwarm.SeqlenSchedule.discrete(stages=[[3, 16], [6, 32]], seqlen_end=64)
    assert [stages(t) for t in range(8)] == [16, 16, 16, 32, 32, 32, 64, 64]
    assert seqwarm.SeqlenSchedule.constant(256)(10**6) == 256
    batch = seqwarm.BatchSchedule.warmup(batch_size_start=4, batch_size_end=32, warmup_tokens=1000, unit=4)
    assert [batch(t) for t in (0, 500, 1000)] == [4, 16, 32]


def test_a_start_off_the_multiple_is_refused():
    with pytest.raises(seqwarm.SeqwarmError, match=r"seqlen_start \(12\) must be a multiple .* use 8 or 16"):
        seqwarm.SeqlenSchedule.linear(seqlen_start=12, seqlen_end=64, duration=8)


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_the_plain_pytorch_loop_of_api_md_runs_and_warms_up():
    loop = python_blocks(DOCS)[0]
    assert len([line for line in loop.splitlines() if line.strip()]) <= 22  # short enough to read at a glance
    scope: dict = {}
    exec(compile(loop, str(DOCS), "exec"), scope)
    clock, schedule, run = scope["clock"], scope["schedule"], scope["run"]
    assert clock.tokens >= run.max_tokens
    assert schedule(0) == 8 and schedule(clock.step) == 128  # it warmed up, then trained at full length
    # Random tokens cannot be learned: the loss stays near a uniform guess's ln(50257) = 10.8.
    assert 10.0 < scope["loss_ratio"].min_loss < 11.5
