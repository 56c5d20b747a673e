"""One step plan: the trainer, `seqwarm plan` and `SequenceLengthWarmup` follow the same steps.

Each consumer drives a `seqwarm.schedule.StepPlan`; these tests drive all three over every shipped config
and over random curricula (every axis combination, SLW with batch-size warmup included) and require the
same length, batch, tokens and LR at every step.
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

KEYS = ("step", "seqlen", "batch_size", "tokens", "lr")


def integration_steps(cfg, n: int) -> list[dict]:
    """The steps `SequenceLengthWarmup.from_config` gives a loop that draws `batch_size` full-length rows."""
    slw = SequenceLengthWarmup.from_config(cfg)
    rows = []
    while not slw.finished and len(rows) < n:
        batch = torch.zeros(slw.batch_size, cfg.curriculum.seqlen_end + 1, dtype=torch.long)
        _, targets = slw.truncate(batch)
        lr = slw.lr()
        slw.step()
        rows.append(slw.metrics() | {"batch_size": len(targets), "lr": lr})
    return rows


def random_curriculum(rng: random.Random) -> list[str]:
    """Overrides of a random curriculum on the tiny model (seqlen_end 64, batch 8 of micro-batches of 4)."""
    length = rng.choice(["none", "slw", "shortformer"])
    out = [f"curriculum.length={length}", f"curriculum.batch={rng.choice(['constant', 'warmup'])}"]
    out += [f"curriculum.seqlen_start={rng.choice([8, 16, 24])}", f"curriculum.duration={rng.randint(1, 30)}"]
    pacing = rng.choice(["linear", "root", "discrete"])
    out += [f"curriculum.pacing={pacing}", f"curriculum.root_degree={rng.choice([1.5, 2.0, 3.0])}"]
    if pacing == "discrete":
        out.append(f"curriculum.stages=[[{rng.randint(1, 5)}, 24], [{rng.randint(6, 12)}, 40]]")
    out += ["curriculum.batch_size_start=4", f"curriculum.batch_warmup_tokens={rng.randint(500, 5000)}"]
    out += [f"train.max_tokens={rng.randint(2000, 9000)}", f"train.warmup_steps={rng.randint(0, 6)}"]
    out += [f"train.lr_decay_unit={rng.choice(['tokens', 'steps'])}", "train.max_steps=40"]
    return out


SHIPPED = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml") if "grid" not in p.read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_plan_and_the_integration_agree_on_every_shipped_config(name):
    cfg = load_config(name)
    plan = [{k: r[k] for k in KEYS} for _, r in zip(range(300), plan_steps(cfg))]
    assert plan == [{k: r[k] for k in KEYS} for r in integration_steps(cfg, len(plan))]


def test_plan_and_the_integration_agree_on_random_curricula():
    rng = random.Random(0)
    for _ in range(40):
        cfg = load_config("tiny-slw", random_curriculum(rng))
        plan = [{k: r[k] for k in KEYS} for r in plan_steps(cfg)]
        assert plan == [{k: r[k] for k in KEYS} for r in integration_steps(cfg, 10**6)], cfg.curriculum


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_trainer_follows_the_plan(tiny_cfg, seed):
    """The trainer's own loop (`training_steps`) against the plan, on random curricula; the first one of each
    seed's draws is forced to SLW with batch-size warmup, the combination 0.2 could not express."""
    rng = random.Random(seed)
    overrides = random_curriculum(rng)
    if seed == 0:
        overrides += ["curriculum.length=slw", "curriculum.batch=warmup", "curriculum.pacing=linear"]
    cfg = tiny_cfg(*overrides, "eval.every_tokens=null", "checkpoint.every_steps=null")
    assert cfg.curriculum.kind == "slw+bsz_warmup" or seed
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True)
    tr = build(cfg, run_dir, open_data(cfg, progress=False))
    trained = [{k: r[k] for k in KEYS} for r in training_steps(tr, progress=False)]
    assert trained == [{k: r[k] for k in KEYS} for r in plan_steps(cfg)]
