import json

import pytest

from seqwarm.cli import main
from seqwarm.config import load_config
from seqwarm.model import GPTConfig
from seqwarm.plan import flop_shares, plan_steps


def test_flop_split_of_gpt2_117m_at_1024_by_hand():
    gpt = load_config("gpt2-117m-bsz4k-baseline").model.gpt()
    assert gpt == GPTConfig(n_layer=12, n_head=12, d_model=768, max_seqlen=1024)
    d = 768
    # A block: 2 LayerNorms (4d), qkv (3d^2 + 3d), attention out (d^2 + d), MLP up (4d^2 + 4d) and
    # down (4d^2 + d): 12 d^2 + 13 d = 7,077,888 + 9,984 = 7,087,872. Twelve of them plus the final
    # LayerNorm (2d): 85,054,464 + 1,536 = 85,056,000 parameters, the "85M in the blocks".
    assert 12 * d * d + 13 * d == 7_087_872
    body = 6 * 85_056_000  # 510,336,000
    # Scores (QK^T) and values (AV): 2 matmuls of d x seqlen per token and layer, 2 FLOPs a
    # multiply-add, x3 for forward + backward: 12 * 12 * 768 * 1024.
    attention = 113_246_208
    # 50,257 tokens padded to 50,304 = 786 * 64; 6 * 50,304 * 768 = 6 * 38,633,472.
    output = 231_800_832
    assert gpt.flop_split(1024) == {"body": body, "attention": attention, "output": output}
    assert gpt.flops_per_token(1024) == 855_383_040 == body + attention + output


@pytest.mark.parametrize("name", ["tiny", "cpu-small", "gpt2-117m", "gpt2-1.5b", "gpt3-1.3b"])
@pytest.mark.parametrize("seqlen", [8, 100, 1024, 2048])
def test_flop_split_sums_exactly_to_flops_per_token(name, seqlen):
    from seqwarm.model import PRESETS

    gpt = GPTConfig(**PRESETS[name])
    split = gpt.flop_split(seqlen)
    assert sum(split.values()) == gpt.flops_per_token(seqlen)
    # Only attention depends on the length.
    other = gpt.flop_split(2 * seqlen)
    assert (other["body"], other["output"], other["attention"]) == (
        split["body"],
        split["output"],
        2 * split["attention"],
    )


def test_flop_shares_weigh_each_step_by_its_rows_and_length():
    cfg = load_config("tiny-slw")
    rows = list(plan_steps(cfg))
    gpt = cfg.model.gpt()
    shares = flop_shares(cfg, rows)
    assert sum(shares.values()) == pytest.approx(1.0, rel=1e-12)
    # The parts weighted as plan counts a step add up to the steps' own FLOPs.
    by_part = {k: sum(r["batch_size"] * r["seqlen"] * gpt.flop_split(r["seqlen"])[k] for r in rows) for k in shares}
    total = sum(r["flops"] for r in rows)
    assert sum(by_part.values()) == pytest.approx(total, rel=1e-12)
    assert shares == pytest.approx({k: v / total for k, v in by_part.items()}, rel=1e-12)
    # At a constant length the shares are the per-token split's; SLW's short steps spend less in attention.
    base = flop_shares(load_config("tiny-baseline"), list(plan_steps(load_config("tiny-baseline"))))
    split = gpt.flop_split(64)
    assert base == pytest.approx({k: v / gpt.flops_per_token(64) for k, v in split.items()}, rel=1e-12)
    assert shares["attention"] < base["attention"] and shares["output"] > base["output"]


def test_plan_prints_the_split_and_jsonl_carries_it(capsys):
    assert main(["plan", "tiny-slw", "--jsonl"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])["summary"]
    assert set(summary["flop_share"]) == {"body", "attention", "output"}
    assert main(["plan", "tiny-slw"]) == 0
    out = capsys.readouterr().out.splitlines()
    s = summary["flop_share"]
    assert out[-2] == (
        f"FLOPs by part, over the whole schedule: body (the blocks' matmuls) {s['body']:.1%}, "
        f"attention (scores and values) {s['attention']:.1%}, output layer {s['output']:.1%}"
    )
    assert out[-1].startswith("total: 20 steps") and out[0].split() == [
        "step",
        "seqlen",
        "batch",
        "tokens",
        "lr",
        "flops",
    ]
    # tiny's 64-wide model under GPT-2's vocabulary: almost everything is the output layer.
    assert s["output"] > 0.9


def test_gpt2_117m_plan_is_body_dominated():
    cfg = load_config("gpt2-117m-bsz512-baseline", [f"train.max_tokens={10 * 512 * 1024}"])  # ten steps
    shares = flop_shares(cfg, list(plan_steps(cfg)))
    # 510,336,000 / 855,383,040 and so on, the hand count above
    assert shares == pytest.approx({"body": 0.596617, "attention": 0.132392, "output": 0.270990}, abs=1e-6)


def test_a_plan_too_long_to_simulate_is_refused_in_one_line_before_any_work(capsys, monkeypatch):
    import seqwarm.plan as plan

    simulated = []
    monkeypatch.setattr(plan, "plan_steps", lambda cfg: simulated.append(cfg) or iter(()))
    assert main(["plan", "tiny-slw", "train.max_tokens=1e15"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.max_tokens: the plan has at least 1,953,125,000,000 steps" in err
    assert simulated == []  # refused from the token budget alone


def test_a_plan_that_passes_the_bound_while_simulating_is_refused(capsys, monkeypatch):
    import seqwarm.plan as plan

    # SLW's short steps make more steps than the token budget's lower bound says
    monkeypatch.setattr(plan, "MAX_PLAN_STEPS", 20)
    cfg = load_config("tiny-slw", ["train.max_tokens=10240"])  # at least 10240 / (8 x 64) = 20 steps
    assert plan.min_steps(cfg) == 20 and len(list(plan_steps(cfg))) > 20
    assert main(["plan", "tiny-slw", "train.max_tokens=10240"]) == 2
    assert "the plan has over 20 steps, more than the 20" in capsys.readouterr().err
    assert main(["plan", "tiny-slw", "train.max_steps=20"]) == 0  # at the bound: printed


def test_the_longest_shipped_config_is_within_the_plan_bound():
    from seqwarm.config import PACKAGED_CONFIGS
    from seqwarm.plan import MAX_PLAN_STEPS, min_steps

    configs = [load_config(p) for p in PACKAGED_CONFIGS.glob("gpt*.yaml")]
    assert max(min_steps(c) for c in configs) == 300_000 and 3 * 300_000 < MAX_PLAN_STEPS


def test_jsonl_floats_are_short(capsys):
    """`plan --jsonl` printed 0.0006000000000000001 (issue 27): 12 significant digits at most, values unchanged."""
    from seqwarm.plan import plan_steps

    assert main(["plan", "tiny-slw", "--jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert '"lr": 0.0006,' in lines[0]
    for line, exact in zip(lines, plan_steps(load_config("tiny-slw"))):
        assert json.loads(line)["lr"] == pytest.approx(exact["lr"], rel=1e-11)
        assert all(len(repr(v)) <= 20 for v in json.loads(line).values() if isinstance(v, float))


def test_tiny_configs_share_a_token_budget_and_can_train_equal_tokens():
    """The paper compares at equal tokens. The tiny configs share max_tokens (the LR decays over the same 8,000
    tokens), but the baseline's 512-token steps end at 8,192 and SLW's at 8,000, as their comments say; the
    overrides their comments give make both train exactly 8,192 tokens."""
    from seqwarm.plan import plan_steps

    def trained(name, overrides=()):
        rows = list(plan_steps(load_config(name, list(overrides))))
        return rows[-1]["tokens"], len(rows)

    assert load_config("tiny-baseline").train.max_tokens == load_config("tiny-slw").train.max_tokens == 8000
    assert trained("tiny-baseline") == (8192, 16) and trained("tiny-slw") == (8000, 20)
    assert trained("tiny-baseline", ["train.max_tokens=8192"])[0] == 8192
    assert trained("tiny-slw", ["train.max_tokens=8192", "curriculum.duration=14"])[0] == 8192
    from seqwarm.config import PACKAGED_CONFIGS

    for name in ("tiny-baseline", "tiny-slw"):
        text = (PACKAGED_CONFIGS / f"{name}.yaml").read_text()
        assert "train.max_tokens=8192" in text and "8,192" in text, f"{name}.yaml: the equal-tokens note is gone"
