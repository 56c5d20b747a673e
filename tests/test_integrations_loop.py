"""`SequenceLengthWarmup`, SLW for a plain PyTorch loop: against `seqwarm plan` and `learning_rate`, its state,
its dict truncation, its errors, and docs/API.md's loop, run as written."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim.lr_scheduler import LRScheduler

import seqwarm
from seqwarm.config import load_config
from seqwarm.errors import ConfigError, DataError
from seqwarm.integrations import SequenceLengthWarmup
from seqwarm.integrations.loop import dict_target_tokens, truncate_dict
from seqwarm.plan import plan_steps
from seqwarm.schedule import Clock, learning_rate

DOCS = Path(__file__).resolve().parent.parent / "docs" / "API.md"
SETTINGS = dict(seqlen_start=8, seqlen_end=64, duration=8, lr=1e-3, min_lr=1e-4, warmup_steps=3, max_tokens=3_000)


def dummy_optimizer() -> torch.optim.Optimizer:
    """Two param groups, as a loop with weight decay has; SLW sets the LR of both."""
    return torch.optim.AdamW(
        [{"params": [torch.nn.Parameter(torch.ones(3))]}, {"params": [torch.nn.Parameter(torch.ones(2))]}]
    )


def run_steps(slw: SequenceLengthWarmup, optimizer, scheduler, batch: int, steps: int | None = None) -> list[dict]:
    """Steps of a loop with no model: rows of full length, truncated, counted, stepped. One row per step."""
    rows, out = torch.randint(0, 100, (batch, slw.config.curriculum.seqlen_end + 1)), []
    while not slw.finished and (steps is None or len(out) < steps):
        inputs, targets = slw.truncate(rows)
        sum(p.sum() for g in optimizer.param_groups for p in g["params"]).backward()
        optimizer.step()
        lrs = scheduler.get_last_lr()
        assert lrs == [group["lr"] for group in optimizer.param_groups] and len(set(lrs)) == 1
        scheduler.step()
        optimizer.zero_grad()
        out.append({"step": slw.clock.step, "seqlen": inputs.shape[1], "tokens": slw.clock.tokens, "lr": lrs[0]})
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # tiny-slw: linear pacing, step-wise warmup, token-wise cosine decay
        ["curriculum.pacing=root", "curriculum.root_degree=2", "train.warmup_steps=0", "train.warmup_tokens=500"],
        ["curriculum.pacing=discrete", "curriculum.stages=[[3, 16], [6, 32]]", "train.lr_decay_style=linear"],
        ["curriculum.kind=none", "train.lr_decay_unit=steps", "train.max_steps=12"],
    ],
)
def test_lengths_tokens_and_lrs_equal_seqwarm_plan(overrides):
    cfg = load_config("tiny-slw", overrides)
    slw = SequenceLengthWarmup.from_config(cfg)
    optimizer = dummy_optimizer()
    got = run_steps(slw, optimizer, slw.scheduler(optimizer), batch=cfg.train.global_batch_size)
    want = [{k: r[k] for k in ("step", "seqlen", "tokens", "lr")} for r in plan_steps(cfg)]
    assert len(want) > 5 and got == want  # exactly: same functions, same clock
    assert len({r["seqlen"] for r in got}) > 1 or cfg.curriculum.kind == "none"


def test_the_lr_at_equal_tokens_is_seqwarms_learning_rate_with_accumulation_and_padding():
    slw = SequenceLengthWarmup(**SETTINGS)
    optimizer = dummy_optimizer()
    scheduler = slw.scheduler(optimizer)
    clock, train = Clock(), slw.config.train
    rows = torch.randint(0, 100, (3, 65))
    rows[0, 40:] = -100  # padding targets: not trained, not counted
    for _ in range(12):
        seqlen = slw.seqlen
        for _ in range(2):  # two micro-batches of one step
            slw.truncate(rows)
        tokens = 2 * (3 * seqlen - max(0, seqlen - 39))  # targets are rows[:, 1 : seqlen + 1]
        optimizer.step()
        assert scheduler.get_last_lr()[0] == learning_rate(clock.after(tokens, train), train)
        scheduler.step()
        clock.tick(tokens, train)
        assert slw.clock == clock
    assert isinstance(scheduler, LRScheduler) and scheduler.last_epoch == 12


def test_a_skipped_update_counts_the_step_not_its_tokens():
    slw = SequenceLengthWarmup(**SETTINGS)
    scheduler = slw.scheduler(dummy_optimizer())
    slw.truncate(torch.zeros(2, 65, dtype=torch.long))
    scheduler.step()  # no optimizer.step(): a GradScaler found an inf and skipped the update
    assert (slw.clock.step, slw.clock.tokens) == (1, 0)
    slw.truncate(torch.zeros(2, 65, dtype=torch.long))
    slw.step(applied=False)  # the same without a scheduler
    assert (slw.clock.step, slw.clock.tokens, slw.open_step) == (2, 0, False)


def test_state_dict_round_trip_resumes_exactly():
    def fresh():
        slw = SequenceLengthWarmup(**SETTINGS)
        optimizer = dummy_optimizer()
        return slw, optimizer, slw.scheduler(optimizer)

    torch.manual_seed(0)
    slw, optimizer, scheduler = fresh()
    whole = run_steps(slw, optimizer, scheduler, batch=4)

    slw, optimizer, scheduler = fresh()
    first = run_steps(slw, optimizer, scheduler, batch=4, steps=6)
    for loss in (3.0, 2.0, 2.5):
        slw.loss_ratio(loss)
    slw.guard.observe(False)
    saved = json.loads(json.dumps({"slw": slw.state_dict(), "scheduler": scheduler.state_dict()}))  # plain values

    for restore in ("slw", "scheduler"):  # either state resumes the whole object
        slw, optimizer, scheduler = fresh()
        (slw if restore == "slw" else scheduler).load_state_dict(saved[restore])
        assert slw.clock.step == 6 and slw.loss_ratio.min_loss == 2.0 and slw.guard.skipped == 1
        assert first + run_steps(slw, optimizer, scheduler, batch=4) == whole


def test_a_resume_refuses_another_schedule_and_allows_a_longer_run():
    slw = SequenceLengthWarmup(**SETTINGS)
    saved = slw.state_dict()
    with pytest.raises(ConfigError, match=r"^curriculum\.duration: cannot change"):
        SequenceLengthWarmup(**{**SETTINGS, "duration": 9}).load_state_dict(saved)
    with pytest.raises(ConfigError, match=r"^train\.max_tokens: cannot change .* LR decay ends at it"):
        SequenceLengthWarmup(**{**SETTINGS, "max_tokens": 4_000}).load_state_dict(saved)
    longer = SequenceLengthWarmup(**{**SETTINGS, "lr_decay_tokens": 3_000})
    longer.load_state_dict(SequenceLengthWarmup(**{**SETTINGS, "lr_decay_tokens": 3_000}).state_dict())
    SequenceLengthWarmup(**{**SETTINGS, "lr_decay_tokens": 3_000, "max_tokens": 9_000}).load_state_dict(
        longer.state_dict()
    )
    with pytest.raises(ConfigError, match="not a SequenceLengthWarmup state"):
        slw.load_state_dict({"step": 3})
    slw.truncate(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(RuntimeError, match="save between steps"):
        slw.state_dict()
    assert slw.state_dict(drop_open_step=True) == saved and slw.open_step  # the state at the step's start


def test_dict_truncation_keeps_masks_labels_and_positions_aligned():
    B, L, s = 3, 20, 8
    ids = torch.arange(B * L).reshape(B, L)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 5:] = 0  # right padding of row 1
    labels = ids.clone()
    labels[1, 5:] = -100
    labels[2, :3] = -100  # a prompt that is not trained
    positions = torch.cat([torch.arange(6), torch.arange(L - 6)]).repeat(B, 1)  # two packed documents
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "position_ids": positions,
        "inputs_embeds": torch.randn(B, L, 4),
        "shared_positions": positions[:1],  # (1, L): broadcast over the rows
        "doc_id": torch.arange(B),  # not a sequence: unchanged
        "note": "kept",
    }
    slw = SequenceLengthWarmup(seqlen_start=8, seqlen_end=32, duration=4, max_tokens=1_000)
    assert slw.seqlen == s
    out = slw.truncate(batch)
    for key in ("input_ids", "attention_mask", "labels", "position_ids", "inputs_embeds", "shared_positions"):
        assert torch.equal(out[key], batch[key][:, :s]), key
    assert out["doc_id"] is batch["doc_id"] and out["note"] == "kept" and batch["input_ids"].shape == (B, L)
    kept = out["labels"] != -100
    assert torch.equal(out["labels"][kept], out["input_ids"][kept])  # still the same token at each position
    assert torch.equal(out["attention_mask"].bool() | (out["labels"] == -100), torch.ones(B, s, dtype=torch.bool))
    # Labels are shifted by the model: position 0 is never a target. Row 0: 7, row 1: 4 (1..4), row 2: 5 (3..7).
    assert slw.step_tokens == 16 == int((labels[:, 1:s] != -100).sum())
    assert int(dict_target_tokens({**out, "shift_labels": out["labels"]})) == int(kept.sum())
    assert (
        int(dict_target_tokens({"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]})) == 7 + 4 + 7
    )
    assert dict_target_tokens({"input_ids": out["input_ids"]}) == B * (s - 1)
    short = truncate_dict({"input_ids": ids[:, :5], "labels": labels[:, :5]}, s)  # dynamic padding: already shorter
    assert short["input_ids"].shape == (B, 5)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"duration": 0}, "curriculum.duration"),
        ({"seqlen_start": 12}, r"curriculum.seqlen_start \(12\) must be a multiple"),
        ({"seqlen_end": 4}, r"curriculum.multiple_of \(8\) must not exceed|seqlen_start \(8\) must be <="),
        ({"seqlen_end": None}, "curriculum.seqlen_end: required"),
        ({"pacing": "cubic"}, "curriculum.pacing"),
        ({"multiple_of": 0}, "curriculum.multiple_of"),
        ({"max_tokens": None}, "train.max_tokens"),
        ({"max_tokens": -5}, "train.max_tokens"),
        ({"min_lr": 1.0}, "train.min_lr"),
        ({"lr": "fast"}, "train.lr"),
        ({"warmup_tokens": 100}, "train.warmup_steps and train.warmup_tokens"),
        ({"lr_decay_unit": "epochs"}, "train.lr_decay_unit"),
        ({"on_nonfinite": "ignore"}, "monitor.on_nonfinite"),
    ],
)
def test_bad_arguments_raise_a_config_error_naming_the_field(change, field):
    with pytest.raises(ConfigError, match=field):
        SequenceLengthWarmup(**{**SETTINGS, **change})


def test_bad_batches_and_misuse_are_refused():
    slw = SequenceLengthWarmup(**SETTINGS)
    with pytest.raises(DataError, match=r"batch: expected rows of seqlen_end \+ 1 = 65"):
        slw.truncate(torch.zeros(2, 64, dtype=torch.long))
    with pytest.raises(DataError, match="input_ids"):
        slw.truncate({"labels": torch.zeros(2, 64, dtype=torch.long)})
    optimizer = dummy_optimizer()
    slw.scheduler(optimizer)
    with pytest.raises(RuntimeError, match="no batch of this step went through truncate"):
        optimizer.step()
    # A batch warmup is the loop's to follow (`batch_size`); a trainer that fixes the batch size refuses it.
    warm = SequenceLengthWarmup.from_config(
        load_config(
            "tiny-slw",
            ["curriculum.kind=bsz_warmup", "curriculum.batch_size_start=4", "curriculum.batch_warmup_tokens=100"],
        )
    )
    assert warm.batch_size == 4
    with pytest.raises(ConfigError, match="curriculum.batch: .*curriculum.kind: bsz_warmup"):
        warm.fixed_batch("the Hugging Face Trainer")


def test_the_package_exports_it_without_importing_transformers():
    assert seqwarm.SequenceLengthWarmup is SequenceLengthWarmup
    code = "import sys, seqwarm.integrations; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_loop_of_api_md_runs_warms_up_and_stops_on_tokens():
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    (loop,) = [b for b in blocks if "SequenceLengthWarmup(" in b]
    assert len([line for line in loop.splitlines() if line.strip()]) <= 30  # short enough to read at a glance
    scope: dict = {}
    exec(compile(loop, str(DOCS), "exec"), scope)
    slw, optimizer = scope["slw"], scope["optimizer"]
    assert slw.finished and slw.clock.tokens >= 8_000 and slw.metrics()["seqlen"] == 128
    assert slw.schedule(0) == 8 and slw.guard.skipped == 0
    assert math.isclose(optimizer.param_groups[0]["lr"], scope["scheduler"].get_last_lr()[0])
    assert set(slw.adam_statistics(optimizer)) == {"adam/var_l1", "adam/var_max", "adam/mom_l1"}
    # Random tokens cannot be learned: the loss stays near a uniform guess's ln(512) = 6.24.
    assert 5.5 < slw.loss_ratio.min_loss < 7.0
    resumed = SequenceLengthWarmup(
        seqlen_start=8, seqlen_end=128, duration=10, lr=1e-3, min_lr=1e-4, warmup_steps=5, max_tokens=8_000
    )
    resumed.load_state_dict(scope["checkpoint"]["slw"])
    assert resumed.clock == slw.clock and resumed.finished


def test_a_melted_run_trains_a_model_on_the_plans_rows_at_constant_tokens_per_step():
    """`curriculum.packing: melt` through `SequenceLengthWarmup`, training seqwarm's GPT with gradient accumulation:
    every micro-batch the model sees is its full-length rows melted into micro x seqlen_end / L rows of the step's
    length L, as the step plan says (`seqwarm plan`'s seqlen and split); every step trains the same batch x seqlen_end
    tokens, at `seqwarm plan`'s LR; the run stops on tokens with a finite loss that fell."""
    from seqwarm.model import GPT, GPTConfig

    cfg = load_config("tiny-slw", ["curriculum.packing=melt", "train.max_tokens=6144", "train.lr=1e-2"])
    end, micro, batch = cfg.curriculum.seqlen_end, cfg.train.micro_batch_size, cfg.train.global_batch_size
    slw = SequenceLengthWarmup.from_config(cfg)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, d_model=32, max_seqlen=end, vocab_size=64))
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = slw.scheduler(optimizer)
    # Learnable rows (each token is the one before it plus one, mod 64), so the loss has somewhere to go.
    data = (torch.randint(0, 64, (256, 1)) + torch.arange(end + 1)) % 64
    steps = []
    while not slw.finished:
        spec, shapes, step_loss = slw.spec, [], 0.0
        for _ in range(batch // micro):
            inputs, targets = slw.truncate(data[torch.randint(0, len(data), (micro,))])
            shapes.append(tuple(inputs.shape))
            assert torch.equal(inputs[:, 1:], targets[:, :-1])  # each melted row is a piece of one row: shifted by one
            loss = model(inputs, targets)[0] / targets.numel() / (batch // micro)
            loss.backward()
            step_loss += loss.item()
        optimizer.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        slw.observe_loss(step_loss, slw.clock.step)
        steps.append({"seqlen": spec.seqlen, "split": spec.split, "shapes": shapes, "tokens": slw.clock.tokens})
        steps[-1] |= {"lr": lr, "loss": step_loss}

    plan = list(plan_steps(cfg))
    assert [(s["seqlen"], s["split"], s["tokens"], s["lr"]) for s in steps] == [
        (r["seqlen"], r["split"], r["tokens"], r["lr"]) for r in plan
    ]
    assert [s["seqlen"] for s in steps[:8]] == [8, 8, 16, 16, 32, 32, 32, 32] and steps[-1]["seqlen"] == end
    for s in steps:
        assert s["seqlen"] * s["split"] == end
        assert s["shapes"] == [(micro * s["split"], s["seqlen"])] * (batch // micro)
    assert {b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}, *steps], steps)} == {batch * end}
    assert slw.clock.tokens == 6144 and len(steps) == 6144 // (batch * end)
    assert all(math.isfinite(s["loss"]) for s in steps) and steps[-1]["loss"] < 0.8 * steps[0]["loss"]
