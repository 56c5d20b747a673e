"""The axes of issue 26: packing melt, the attention-window warmup, the tokens-matched batch, closed-loop pacing."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from seqwarm.config import load_config
from seqwarm.curriculum import AdaptiveController, Curriculum, CurriculumConfig, melt, melt_seqlen, truncate
from seqwarm.curriculum.adaptive import Adaptive
from seqwarm.data.corpus import open_data
from seqwarm.data.loader import TrainLoader
from seqwarm.errors import ConfigError
from seqwarm.export_schedule import olmo_split_seqlen
from seqwarm.integrations.batches import melt_dict
from seqwarm.integrations.loop import dict_target_tokens
from seqwarm.lifecycle import train
from seqwarm.metrics import read_metrics
from seqwarm.plan import plan_steps, window_share

# --- melt --------------------------------------------------------------------------------------------------


def test_melt_lengths_divide_the_full_length_and_match_olmo_cores_power_of_two_rule_where_it_applies():
    assert [melt_seqlen(x, 1536, 8) for x in (8, 23, 24, 100, 383, 384, 700, 1535, 1536)] == [
        *(8, 16, 24, 96, 256, 384, 512, 768, 1536)
    ]
    # 8 -> 1024, multiple_of 8: every multiple of 8 that divides 1024 is 8 x a power of two, OLMo-core's set.
    c = load_config("gpt2-117m-bsz512-slw", ["curriculum.packing=melt"]).curriculum
    cur = Curriculum(c, 512)
    ours = [cur.at(s, 0).seqlen for s in range(c.duration + 5)]
    kw = dict(min_sequence_length=8, max_sequence_length=1024, warmup_steps=c.duration)
    # OLMo-core's step n (from 1) trains at seqwarm's length of step n: one step early, as its truncating rule.
    assert ours[1:] == [olmo_split_seqlen(n, **kw) for n in range(1, c.duration + 5)]
    assert len(set(ours)) == 8  # 8, 16, ..., 1024


def test_melt_keeps_every_target_of_the_row_once():
    rows = torch.arange(3 * 17).reshape(3, 17)  # seqlen_end 16
    inputs, targets = melt(rows, 4)
    assert inputs.shape == targets.shape == (12, 4)
    assert torch.equal(inputs[1], torch.tensor([4, 5, 6, 7])) and torch.equal(targets[1], torch.tensor([5, 6, 7, 8]))
    full_in, full_tg = truncate(rows, 16)
    assert torch.equal(targets.reshape(3, 16), full_tg) and torch.equal(inputs.reshape(3, 16), full_in)
    assert np.array_equal(melt(rows.numpy(), 8)[1], full_tg.numpy().reshape(6, 8))  # numpy works the same


def test_melted_steps_train_exactly_the_full_rows_tokens_on_a_corpus(tiny_cfg):
    cfg = tiny_cfg("curriculum.packing=melt")
    index = open_data(cfg, progress=False).sequences("train", cfg.curriculum.seqlen_end)
    melted, full = TrainLoader(index, seed=1), TrainLoader(index, seed=1)
    seen = []
    for split in (8, 4, 2, 1, 4):
        m = melted.next_batch(8, 64 // split, split)
        f = full.next_batch(8, 64)
        assert m.tokens == f.tokens == 8 * 64 and m.inputs.shape == (8 * split, 64 // split)
        # the same targets in the same order: no token lost at a cut, none repeated
        assert torch.equal(m.targets.reshape(8, 64), f.targets) and torch.equal(m.inputs.reshape(8, 64), f.inputs)
        seen += f.starts.tolist()
        # each melted row is a piece of the corpus: its inputs and targets one token apart
        start, piece = int(f.starts[1]), 64 // split  # sequence 1's second piece is row split + 1
        if split > 1:
            assert m.inputs[split + 1].tolist() == index.tokens[start + piece : start + 2 * piece].tolist()
    assert len(set(seen)) == len(seen)


def test_melt_keeps_tokens_per_step_constant_in_the_plan():
    cfg = load_config("proxy-melt")
    rows = list(plan_steps(cfg))
    steps = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}, *rows], rows)]
    assert set(steps) == {32 * 128}
    assert [r["seqlen"] for r in rows[:4]] == [8, 8, 8, 8] and rows[0]["split"] == 16
    assert {r["seqlen"] * r["split"] for r in rows} == {128}
    assert rows[-1]["seqlen"] == 128 and rows[-1]["split"] == 1


def test_a_dict_batch_melts_with_every_target_kept():
    ids = torch.arange(2 * 17).reshape(2, 17)  # rows of seqlen_end + 1 = 17 positions
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids), "position_ids": None}
    batch["position_ids"] = torch.arange(17).expand(2, 17)
    out = melt_dict(batch, 4, 4)
    assert out["input_ids"].shape == out["shift_labels"].shape == out["attention_mask"].shape == (8, 4)
    _, targets = melt(ids, 4)
    assert torch.equal(out["shift_labels"], targets)  # the tensor form's targets exactly
    assert int(dict_target_tokens(out)) == 2 * 16
    assert torch.equal(out["position_ids"][3], torch.arange(4))
    # rows of seqlen_end positions (HF's usual): each row's last position has no target, as at full length
    out = melt_dict({"input_ids": ids[:, :16]}, 4, 4)
    assert int(dict_target_tokens(out)) == 2 * 15 and out["shift_labels"][3, -1] == -100


def test_melt_refuses_what_it_cannot_do_in_one_line():
    for overrides, field in [
        (["curriculum.length=slw", "curriculum.packing=melt", "curriculum.seqlen_start=24"], "curriculum.seqlen_start"),
        (["curriculum.length=slw", "curriculum.packing=melt", "curriculum.drop_tail=false"], "curriculum.drop_tail"),
        (["curriculum.length=slw", "curriculum.packing=melt", "curriculum.batch=matched"], "curriculum.packing"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config("proxy", overrides)
        assert str(e.value).startswith(field) and "\n" not in str(e.value)


# --- window ------------------------------------------------------------------------------------------------


def test_the_window_grows_from_its_start_to_full_causal_attention():
    c = CurriculumConfig(window="warmup", window_start=32, window_duration=96, seqlen_end=128)
    cur = Curriculum(c, 4)
    windows = [cur.at(s, 0).window for s in range(100)]
    assert windows[0] == 32 and windows[48] == 32 + 96 * 48 // 96
    assert all(a <= b for a, b in zip(windows[:95], windows[1:95]))
    assert windows[95] == 127 and windows[96:] == [None] * 4  # the full length is full causal attention
    assert {cur.at(s, 0).seqlen for s in range(100)} == {128}  # over full-length rows
    # combined with SLW: a window that covers the (short) row is no window
    both = Curriculum(
        CurriculumConfig(length="slw", duration=50, window="warmup", window_duration=96, seqlen_end=128), 4
    )
    assert both.at(0, 0).seqlen == 8 and both.at(0, 0).window is None and both.at(40, 0).window == 72


def test_skyladders_shapes_and_the_window_share_of_attention():
    for pacing in ("sine", "cosine", "root"):
        c = CurriculumConfig(window="warmup", window_pacing=pacing, window_duration=50, seqlen_end=256)
        w = [Curriculum(c, 4).at(s, 0).window or 256 for s in range(60)]
        assert w[0] == 32 and w[-1] == 256 and all(a <= b for a, b in zip(w, w[1:])), pacing
    sine = Curriculum(CurriculumConfig(window="warmup", window_pacing="sine", window_duration=50, seqlen_end=256), 4)
    cosine = Curriculum(
        CurriculumConfig(window="warmup", window_pacing="cosine", window_duration=50, seqlen_end=256), 4
    )
    assert sine.at(10, 0).window > 32 + 224 * 10 / 50 > cosine.at(10, 0).window  # fast early / slow early
    assert window_share(128, None) == window_share(128, 128) == 1.0
    assert window_share(4, 2) == (1 + 2 + 2 + 2) / 10


def test_the_plan_counts_windowed_attention():
    base = list(plan_steps(load_config("proxy")))
    windowed = list(plan_steps(load_config("proxy-window")))
    assert [r["tokens"] for r in base] == [r["tokens"] for r in windowed]
    assert windowed[0]["flops"] < base[0]["flops"] and windowed[-1]["flops"] == base[-1]["flops"]
    assert windowed[0]["window"] == 8 and windowed[-1]["window"] is None


# --- the tokens-matched control ----------------------------------------------------------------------------


def test_the_matched_control_follows_slws_tokens_per_step_in_whole_micro_batches():
    matched = load_config("proxy-batch-matched")
    slw = load_config("proxy-batch-matched", ["curriculum.batch=constant"])
    unit = matched.train.micro_batch_size
    m_rows, s_rows = list(plan_steps(matched)), list(plan_steps(slw))
    per_step = lambda rows: [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}, *rows], rows)]  # noqa: E731
    m_tokens, s_tokens = per_step(m_rows), per_step(s_rows)
    for r, mt, st in zip(m_rows, m_tokens, s_tokens):
        assert r["seqlen"] == 128 and r["batch_size"] % unit == 0 and r["batch_size"] >= unit
        assert r["token_target"] == st  # the plan shows SLW's tokens beside the control's
        assert abs(mt - st) <= unit * 128 / 2 or r["batch_size"] == unit
    assert m_tokens[0] == s_tokens[0] == 2 * 128 and m_tokens[-1] == s_tokens[-1] == 32 * 128


# --- closed-loop pacing -----------------------------------------------------------------------------------


def test_adaptive_pacing_holds_on_spikes_with_hysteresis_and_grows_otherwise():
    ctl = AdaptiveController(Adaptive(duration=10, max_duration=100, threshold=1.05, patience=2))
    ratios = [1.0, 1.0, 1.2, 1.0, 1.0, 1.0, math.nan, 1.0, 1.01, 1.0]
    progress = []
    for r in ratios:
        ctl.observe({"loss_ratio": r})
        progress.append(ctl.progress)
    # grows, grows, spike: holds; two calm steps to leave the hold (the second grows), grows; NaN holds ...
    assert progress == [1, 2, 2, 2, 3, 4, 4, 4, 5, 6]
    # the floor: never slower than linear over max_duration
    stuck = AdaptiveController(Adaptive(duration=10, max_duration=20, threshold=1.05, patience=2))
    assert stuck.virtual(10) == 5.0 and stuck.virtual(20) == 10.0
    state = ctl.state_dict()
    again = AdaptiveController(ctl.pacing)
    again.load_state_dict(state)
    assert again.state_dict() == state


def test_the_adaptive_length_lies_between_its_bounds():
    c = load_config("proxy-adaptive").curriculum
    cur = Curriculum(c, 32)
    fast = Curriculum(load_config("proxy-adaptive", ["curriculum.pacing=linear"]).curriculum, 32)
    rng = np.random.default_rng(0)
    for s in range(200):
        spec = cur.at(s, 0)
        slowest = fast.length(s * c.duration / (c.adaptive_max_duration or 2 * c.duration))
        assert slowest <= spec.seqlen <= fast.at(s, 0).seqlen
        cur.observe({"loss_ratio": float(rng.choice([1.0, 1.2]))})
    assert cur.at(c.adaptive_max_duration or 2 * c.duration, 0).seqlen == 128


@pytest.mark.slow
def test_adaptive_pacing_resumes_exactly_after_a_kill(tiny_cfg, tmp_path):
    overrides = [
        "curriculum.pacing=adaptive",
        "curriculum.duration=16",
        "curriculum.adaptive_patience=2",
        "train.lr=3e-2",  # tiny's loss ratio passes 1.05 from about step 8 at this LR: the controller holds
        "checkpoint.every_steps=5",
    ]
    full = tiny_cfg(*overrides, f"run.dir={tmp_path / 'full'}")
    train(full, progress=False)

    class Kill(Exception):
        pass

    def kill_at_step_13(clock):
        if clock.step == 13:
            raise Kill

    part = tiny_cfg(*overrides, f"run.dir={tmp_path / 'part'}")
    with pytest.raises(Kill):
        train(part, progress=False, on_step=kill_at_step_13)
    state = json.loads((Path(part.run.dir) / "checkpoints" / "step-00000010" / "state.json").read_text())
    assert state["curriculum"]["progress"] < 10, "the checkpoint to resume from holds a controller that held"
    train(part, resume=True, progress=False)
    a, b = rows_of(full.run.dir), rows_of(part.run.dir)
    for key in ("step", "seqlen", "tokens", "lr", "loss"):
        assert [r[key] for r in b] == [r[key] for r in a], key
    open_loop = [r["seqlen"] for r in plan_steps(full)]
    assert [r["seqlen"] for r in a] != open_loop[: len(a)], "the controller held at least once"


def rows_of(run_dir) -> list[dict]:
    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r]


# --- export-schedule ---------------------------------------------------------------------------------------


def test_melt_exports_to_olmo_cores_and_composers_non_truncating_modes_where_they_match():
    from seqwarm.export_schedule import export, table_text

    olmo = export(load_config("proxy-melt"), "olmo-core")
    assert olmo.settings["SequenceLengthSchedulerCallback"] == {
        "min_sequence_length": 8,
        "warmup_steps": 60,
        "truncate": False,
    }
    # only OLMo-core's one-step-early counting differs: the step before each doubling
    assert "4 of 250 steps" in table_text(load_config("proxy-melt"), olmo)
    exact = load_config(
        "proxy-melt", ["curriculum.seqlen_start=64", "curriculum.multiple_of=64", "curriculum.duration=10"]
    )
    assert export(exact, "composer").settings["SeqLengthWarmup"]["truncate"] is False
    for framework, overrides, field in [
        ("composer", [], "curriculum.packing"),  # its staircase passes 24, which does not divide 128
        ("deepspeed", [], "curriculum.packing"),
        (
            "olmo-core",
            ["curriculum.seqlen_start=24", "curriculum.seqlen_end=96", "model.max_seqlen=96"],
            "curriculum.packing",
        ),  # 32 is no 24 x 2^j
    ]:
        with pytest.raises(ConfigError) as e:
            export(load_config("proxy-melt", overrides), framework)
        assert str(e.value).startswith(field) and "\n" not in str(e.value), framework
    for name, field in [
        ("proxy-window", "curriculum.window"),
        ("proxy-batch-matched", "curriculum.batch"),
        ("proxy-adaptive", "curriculum.pacing"),
    ]:
        for framework in ("deepspeed", "megatron-deepspeed", "composer", "olmo-core"):
            with pytest.raises(ConfigError) as e:
                export(load_config(name), framework)
            assert str(e.value).startswith(field), (name, framework)


def test_the_trainer_gives_the_model_each_steps_window(tiny_cfg):
    from seqwarm.trainer import build, training_steps

    cfg = tiny_cfg(
        "curriculum.length=none",
        "curriculum.window=warmup",
        "curriculum.window_start=4",
        "curriculum.window_duration=12",
        "eval.every_tokens=null",  # training forwards, then the final validation's
    )
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True)
    tr = build(cfg, run_dir, open_data(cfg, progress=False))
    seen, forward = [], tr.engine.forward

    def recording(x, y, **kw):
        seen.append(None if kw.get("window") is None else (kw["window"].dtype, kw["window"].dim(), int(kw["window"])))
        return forward(x, y, **kw)

    tr.engine.forward = recording
    rows = list(training_steps(tr, progress=False))
    seen, validation = seen[: 2 * len(rows)], seen[2 * len(rows) :]
    assert validation and set(validation) == {None}  # validation at full causal attention
    per_step = seen[::2]  # two micro-batches a step, each given the step's window
    assert per_step == seen[1::2]
    planned = [r["window"] for r in plan_steps(cfg)]
    assert [w and w[2] for w in per_step] == planned
    assert {w[:2] for w in per_step if w} == {(torch.int64, 0)}  # a 0-dim tensor: one compiled graph for all
    assert planned[0] == 4 and planned[-1] is None


def test_tune_probes_the_adaptive_configs_open_loop_bound():
    from seqwarm.tune.search import with_curriculum

    probe = with_curriculum(load_config("proxy-adaptive"), 16, 40).curriculum
    assert (probe.seqlen_start, probe.duration) == (16, 40)
    assert not probe.length_axis().adaptive  # linear at the T it tests: adaptive's fastest schedule


def test_transformers_gpt2_trains_a_melted_dict_on_its_shift_labels():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 17))
    out = melt_dict({"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}, 4, 4)
    with torch.no_grad():
        loss = model(**out).loss
        logits = model(input_ids=out["input_ids"], attention_mask=out["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 100), out["shift_labels"].reshape(-1))
    assert torch.allclose(loss, expected)  # every piece's last position predicts the next piece's first token
