"""One step plan: the trainer, `seqwarm plan` and `SequenceLengthWarmup` follow the same steps.

Each consumer drives a `seqwarm.schedule.StepPlan`; these tests drive all three over every shipped config
and over random curricula (every axis combination: SLW with batch-size warmup, melt, the attention window, the
tokens-matched batch, closed-loop pacing fed stable steps) and require the same length, batch, window, tokens and
LR at every step.
"""

import random
from pathlib import Path

import pytest
import torch

from seqwarm.config import PACKAGED_CONFIGS, load_config
from seqwarm.data.corpus import open_data
from seqwarm.integrations.loop import SequenceLengthWarmup
from seqwarm.plan import plan_steps
from seqwarm.trainer import build, training_steps

KEYS = ("step", "seqlen", "batch_size", "tokens", "lr", "window")


def keyed(rows) -> list[dict]:
    return [{k: r.get(k) for k in KEYS} for r in rows]  # the trainer logs `window` only on windowed steps


def integration_steps(cfg, n: int) -> list[dict]:
    """The steps `SequenceLengthWarmup.from_config` gives a loop that draws `batch_size` full-length rows and
    reports a constant loss (stable steps, as `seqwarm plan` assumes for closed-loop pacing)."""
    slw = SequenceLengthWarmup.from_config(cfg)
    rows = []
    while not slw.finished and len(rows) < n:
        batch = torch.zeros(slw.batch_size, cfg.curriculum.seqlen_end + 1, dtype=torch.long)
        split, window = slw.spec.split, slw.window
        inputs, targets = slw.truncate(batch)
        assert inputs.shape == (slw.batch_size * split, slw.seqlen)
        lr = slw.lr()
        slw.step()
        slw.observe_loss(1.0, slw.clock.step)
        rows.append(slw.metrics() | {"batch_size": len(targets) // split, "lr": lr, "window": window})
    return rows


def random_curriculum(rng: random.Random) -> list[str]:
    """Overrides of a random curriculum on the tiny model (seqlen_end 64, batch 8 of micro-batches of 4)."""
    length = rng.choice(["none", "slw", "shortformer"])
    packing = rng.choice(["truncate", "melt"])
    batch = rng.choice(["constant", "warmup"] + (["matched"] if length != "none" and packing == "truncate" else []))
    out = [f"curriculum.length={length}", f"curriculum.batch={batch}", f"curriculum.packing={packing}"]
    melt = packing == "melt"  # its lengths divide seqlen_end (64)
    out += [f"curriculum.seqlen_start={rng.choice([8, 16] if melt else [8, 16, 24])}"]
    out += [f"curriculum.duration={rng.randint(1, 30)}"]
    pacing = rng.choice(["linear", "root", "discrete", "sine", "cosine", "adaptive"])
    out += [f"curriculum.pacing={pacing}", f"curriculum.root_degree={rng.choice([1.5, 2.0, 3.0])}"]
    if pacing == "discrete":
        a, b = (16, 32) if melt else (24, 40)
        out.append(f"curriculum.stages=[[{rng.randint(1, 5)}, {a}], [{rng.randint(6, 12)}, {b}]]")
    out += ["curriculum.batch_size_start=4", f"curriculum.batch_warmup_tokens={rng.randint(500, 5000)}"]
    window_pacing = rng.choice(["linear", "root", "sine", "cosine"] + ([] if pacing == "adaptive" else ["adaptive"]))
    out += [f"curriculum.window={rng.choice(['none', 'warmup'])}", f"curriculum.window_start={rng.choice([4, 16, 32])}"]
    out += [f"curriculum.window_pacing={window_pacing}", f"curriculum.window_duration={rng.randint(1, 30)}"]
    out += ["curriculum.adaptive_threshold=1e9"]  # every step stable: the trainer's losses cannot move it
    out += [f"train.max_tokens={rng.randint(2000, 9000)}", f"train.warmup_steps={rng.randint(0, 6)}"]
    out += [f"train.lr_decay_unit={rng.choice(['tokens', 'steps'])}", "train.max_steps=40"]
    return out


SHIPPED = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml") if "grid" not in p.read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_plan_and_the_integration_agree_on_every_shipped_config(name):
    cfg = load_config(name)
    plan = keyed(r for _, r in zip(range(300), plan_steps(cfg)))
    assert plan == keyed(integration_steps(cfg, len(plan)))


def test_plan_and_the_integration_agree_on_random_curricula():
    rng = random.Random(0)
    for _ in range(40):
        cfg = load_config("tiny-slw", random_curriculum(rng))
        plan = keyed(plan_steps(cfg))
        assert plan == keyed(integration_steps(cfg, 10**6)), cfg.curriculum


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_trainer_follows_the_plan(tiny_cfg, seed):
    """The trainer's own loop (`training_steps`) against the plan, on random curricula; the first one of each
    seed's draws is forced to SLW with batch-size warmup, the combination 0.2 could not express."""
    rng = random.Random(seed)
    overrides = random_curriculum(rng)
    if seed == 0:
        overrides += ["curriculum.length=slw", "curriculum.batch=warmup", "curriculum.pacing=linear"]
        overrides += ["curriculum.packing=truncate", "curriculum.window=none"]
    cfg = tiny_cfg(*overrides, "eval.every_tokens=null", "checkpoint.every_steps=null")
    assert cfg.curriculum.kind == "slw+bsz_warmup" or seed
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True)
    tr = build(cfg, run_dir, open_data(cfg, progress=False))
    trained = keyed(training_steps(tr, progress=False))
    assert trained == keyed(plan_steps(cfg))


NEW_AXES = {
    "melt": ["curriculum.length=slw", "curriculum.packing=melt", "curriculum.duration=12"],
    "window": ["curriculum.window=warmup", "curriculum.window_start=8", "curriculum.window_duration=10"],
    "window+slw": ["curriculum.window=warmup", "curriculum.window_duration=10", "curriculum.duration=12"],
    "matched": ["curriculum.length=slw", "curriculum.batch=matched", "curriculum.duration=12"],
    "adaptive": ["curriculum.length=slw", "curriculum.pacing=adaptive", "curriculum.adaptive_threshold=1e9"],
}


@pytest.mark.parametrize("axis", NEW_AXES)
def test_the_trainer_follows_the_plan_on_every_new_axis(tiny_cfg, axis):
    cfg = tiny_cfg(*NEW_AXES[axis], "eval.every_tokens=null", "checkpoint.every_steps=null")
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True)
    tr = build(cfg, run_dir, open_data(cfg, progress=False))
    trained = keyed(training_steps(tr, progress=False))
    assert trained == keyed(plan_steps(cfg)) == keyed(integration_steps(cfg, 10**6))
    assert len({(r["seqlen"], r["batch_size"], r["window"]) for r in trained}) > 1, "the axis changed something"


def test_closed_loop_pacing_follows_the_same_signals_in_the_trainer_and_the_integration(tiny_cfg):
    """With real signals (an LR at which tiny's loss ratio passes the threshold), the integration fed the trainer's
    losses takes the trainer's steps; both hold where the open-loop plan grows."""
    cfg = tiny_cfg(
        "curriculum.pacing=adaptive", "curriculum.duration=16", "train.lr=3e-2", "checkpoint.every_steps=null"
    )
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True)
    trained = list(training_steps(build(cfg, run_dir, open_data(cfg, progress=False)), progress=False))
    slw = SequenceLengthWarmup.from_config(cfg)
    followed = []
    for r in trained:
        batch = torch.zeros(slw.batch_size, cfg.curriculum.seqlen_end + 1, dtype=torch.long)
        slw.truncate(batch)
        lr = slw.lr()
        slw.step()
        slw.observe_loss(r["loss"], slw.clock.step)
        followed.append(slw.metrics() | {"batch_size": slw.batch_size, "lr": lr})
    assert keyed(followed) == keyed(trained)
    assert [r["seqlen"] for r in trained] != [r["seqlen"] for r in plan_steps(cfg)][: len(trained)]
