"""`SLWTrainer`: SLW in the real Hugging Face `transformers.Trainer`, on a tiny GPT2LMHeadModel built from a config,
offline: lengths equal `seqwarm plan`'s, the LR is seqwarm's `learning_rate` at the same tokens, the run stops at
max_tokens, evaluation stays full length, and a resume from a Trainer checkpoint continues exactly."""

import math
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

from melt_config import melted_slw_config  # noqa: E402

from seqwarm.config import load_config  # noqa: E402
from seqwarm.errors import ConfigError  # noqa: E402
from seqwarm.integrations import SequenceLengthWarmup  # noqa: E402
from seqwarm.integrations.hf import SLWTrainer  # noqa: E402
from seqwarm.plan import plan_steps, step_plan  # noqa: E402
from seqwarm.schedule import Clock, learning_rate  # noqa: E402

SEQLEN_END, VOCAB, MICRO, ACCUM = 64, 100, 2, 2
SETTINGS = dict(seqlen_start=8, seqlen_end=SEQLEN_END, duration=10, lr=1e-3, min_lr=1e-4, warmup_steps=3)
MAX_TOKENS = 3_000  # 18 steps of 4 rows (7, 7, 15, 23, ... targets per row): a few dozen forward passes
SAVE_AT = 8


def rows(n: int, seed: int) -> list[dict]:
    """Packed rows in the form a pre-training collator gives: labels = input_ids (the model shifts them)."""
    ids = torch.randint(0, VOCAB, (n, SEQLEN_END), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": r, "labels": r.clone()} for r in ids]


def make_trainer(
    out_dir,
    widths: list | None = None,
    *,
    llama: bool = False,
    stability: dict | None = None,
    slw: SequenceLengthWarmup | None = None,
    **overrides,
) -> SLWTrainer:
    torch.manual_seed(0)
    if llama:  # a Llama-style model (issue 24): rotary positions, RMSNorm, SwiGLU, grouped KV heads
        config = transformers.LlamaConfig(
            num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=VOCAB, max_position_embeddings=SEQLEN_END, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(
            n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQLEN_END, bos_token_id=0, eos_token_id=0
        )
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
        model = transformers.GPT2LMHeadModel(config)
    if widths is not None:  # every forward's (training?, input length)
        model.register_forward_pre_hook(
            lambda m, args, kwargs: widths.append((m.training, kwargs["input_ids"].shape[1])), with_kwargs=True
        )
    args = dict(
        output_dir=str(out_dir),
        report_to=[],
        use_cpu=True,
        max_steps=1_000,  # an upper bound: SLW stops at max_tokens first
        per_device_train_batch_size=MICRO,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=ACCUM,
        learning_rate=SETTINGS["lr"],
        logging_steps=1,
        save_strategy="steps",
        save_steps=SAVE_AT,
        eval_strategy="steps",
        eval_steps=10,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    args.update(overrides)
    slw = slw or SequenceLengthWarmup(**SETTINGS, max_tokens=MAX_TOKENS)
    return SLWTrainer(
        slw=slw,
        model=model,
        args=transformers.TrainingArguments(**args),
        train_dataset=rows(120, seed=1),
        eval_dataset=rows(8, seed=2),
        **(stability or {}),  # step_guard, z_loss (tests/test_integrations_hf_stability.py)
    )


def step_rows(trainer) -> dict[int, dict]:
    """The training log rows (logging_steps=1: one per step), by step."""
    return {r["step"]: r for r in trainer.state.log_history if "loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    widths: list = []
    trainer = make_trainer(out / "run", widths)
    trainer.train()
    return trainer, widths, out


def test_lengths_equal_seqwarm_plan_and_the_lr_is_seqwarms_at_the_same_tokens(uninterrupted):
    trainer, widths, _ = uninterrupted
    steps = step_rows(trainer)
    assert sorted(steps) == list(range(1, len(steps) + 1)) and len(steps) > 12
    cfg = load_config(
        None,
        [
            "curriculum.kind=slw",
            *(f"curriculum.{k}={SETTINGS[k]}" for k in ("seqlen_start", "seqlen_end", "duration")),
            f"model.max_seqlen={SEQLEN_END}",
            f"train.max_steps={len(steps)}",
            "train.lr_decay_unit=steps",  # only the lengths are compared: plan's tokens count seqlen targets a row
            f"train.global_batch_size={MICRO * ACCUM}",
        ],
    )
    plan = list(plan_steps(cfg))
    assert [steps[r["step"]]["seqlen"] for r in plan] == [r["seqlen"] for r in plan]
    assert plan[0]["seqlen"] == 8 and plan[-1]["seqlen"] == SEQLEN_END

    clock, train = Clock(), trainer.slw.config.train
    for step in sorted(steps):
        row = steps[step]
        tokens = row["tokens"] - clock.tokens
        # The model shifts the labels: a row of `seqlen` inputs trains seqlen - 1 targets, on all 4 rows of the step.
        assert tokens == MICRO * ACCUM * (row["seqlen"] - 1)
        assert row["learning_rate"] == learning_rate(clock.after(tokens, train), train)
        clock.tick(tokens, train)
        assert {"loss_ratio", "adam/var_l1", "adam/var_max", "adam/mom_l1"} <= set(row)
    assert trainer.slw.clock == clock and trainer.state.global_step == clock.step

    # Each micro-batch trains at its step's length; evaluation stays at full length.
    trained = [w for training, w in widths if training]
    assert trained == [steps[s]["seqlen"] for s in sorted(steps) for _ in range(ACCUM)]
    assert {w for training, w in widths if not training} == {SEQLEN_END}


def test_it_trains_a_llama_for_causal_lm_at_the_same_lengths(uninterrupted, tmp_path):
    """The integration is not GPT-2-specific: a LlamaForCausalLM trains through the same schedule (its lengths and
    tokens are the GPT-2 run's, step for step) and its weights move (the rows are uniform noise: no loss to lose)."""
    widths: list = []
    trainer = make_trainer(tmp_path / "llama", widths, llama=True, eval_strategy="no", save_strategy="no")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    steps, gpt2 = step_rows(trainer), step_rows(uninterrupted[0])
    assert [(r["seqlen"], r["tokens"]) for r in steps.values()] == [(r["seqlen"], r["tokens"]) for r in gpt2.values()]
    assert [w for training, w in widths if training] == [
        steps[s]["seqlen"] for s in sorted(steps) for _ in range(ACCUM)
    ]
    assert all(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items() if "proj" in k)
    assert type(trainer.model).__name__ == "LlamaForCausalLM"


def test_a_melted_run_trains_on_the_plans_rows_and_keeps_every_target(tmp_path):
    """`curriculum.packing: melt` (SequenceLengthWarmup.from_config) in the real Trainer: each micro-batch the model
    sees is its MICRO rows melted into MICRO x 64 / L rows of the step's length L, as the step plan says; its
    `shift_labels` put back together are each row's own targets, every one once (none lost at a cut); every step
    trains the same MICRO x ACCUM x 63 targets (the model shifts: 63 of a 64-position row, at any length), at
    seqwarm's LR for them; and the loss stays finite."""
    cfg = melted_slw_config(SETTINGS, seqlen_end=SEQLEN_END, max_tokens=MAX_TOKENS, micro=MICRO, accum=ACCUM)
    seen: list = []
    trainer = make_trainer(tmp_path, slw=SequenceLengthWarmup.from_config(cfg), eval_strategy="no", save_strategy="no")

    def record(model, args, kwargs, output):
        if model.training:
            seen.append((kwargs["input_ids"], kwargs.get("shift_labels")))
            # The loss the Trainer minimises is on those targets (not each piece's own labels shifted inside it).
            targets = kwargs["shift_labels"] if kwargs.get("shift_labels") is not None else kwargs["labels"][:, 1:]
            logits = output.logits if kwargs.get("shift_labels") is not None else output.logits[:, :-1]
            ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
            assert output.loss.item() == pytest.approx(ce.item() / kwargs["num_items_in_batch"].item(), rel=1e-5)

    trainer.model.register_forward_hook(record, with_kwargs=True)
    trainer.train()
    steps = step_rows(trainer)
    # The step plan (`seqwarm plan`'s) driven by the tokens each step trained: its length, split and LR at each step.
    plan, specs = step_plan(cfg), []
    for step in sorted(steps):
        row, spec = steps[step], plan.spec()
        tokens = row["tokens"] - plan.clock.tokens
        assert tokens == MICRO * ACCUM * (SEQLEN_END - 1)
        assert (row["seqlen"], row["learning_rate"]) == (spec.seqlen, plan.lr(tokens)) and math.isfinite(row["loss"])
        plan.tick(tokens)
        specs.append(spec)
    assert [s.seqlen for s in specs] == [8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 64, 64]
    assert trainer.slw.finished and plan.finished and trainer.state.global_step == plan.clock.step == len(steps)

    dataset = {tuple(r["input_ids"].tolist()) for r in rows(120, seed=1)}
    assert len(seen) == len(steps) * ACCUM
    for i, (ids, shift_labels) in enumerate(seen):
        spec = specs[i // ACCUM]
        assert spec.seqlen * spec.split == SEQLEN_END and ids.shape == (MICRO * spec.split, spec.seqlen)
        full = ids.reshape(MICRO, SEQLEN_END)  # the pieces back in order: the collated rows
        assert all(tuple(row.tolist()) in dataset for row in full)
        if spec.split == 1:  # full length: the rows as collated, their labels shifted by the model
            assert shift_labels is None
            continue
        ignore = torch.full((MICRO, 1), -100)
        assert torch.equal(shift_labels.reshape(MICRO, SEQLEN_END), torch.cat([full[:, 1:], ignore], dim=1))


def test_it_stops_at_max_tokens_and_saves_there(uninterrupted):
    trainer, _, out = uninterrupted
    steps = step_rows(trainer)
    last = max(steps)
    assert steps[last]["tokens"] >= MAX_TOKENS > steps[last - 1]["tokens"]
    assert trainer.state.global_step == last < trainer.args.max_steps
    assert (out / "run" / f"checkpoint-{last}").is_dir()  # the Trainer's final save, as at its own max_steps
    assert any("eval_loss" in r and r["step"] == last for r in trainer.state.log_history)


def test_a_resume_from_a_trainer_checkpoint_continues_the_schedule_exactly(uninterrupted, tmp_path):
    whole, _, out = uninterrupted
    checkpoint = out / "run" / f"checkpoint-{SAVE_AT}"
    resumed = make_trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    before, after = step_rows(whole), step_rows(resumed)
    assert sorted(after) == sorted(before)
    for step in range(SAVE_AT + 1, max(before) + 1):
        for key in ("seqlen", "tokens", "learning_rate"):
            assert after[step][key] == before[step][key], (step, key)
        assert after[step]["loss"] == pytest.approx(before[step]["loss"], rel=1e-5)
    assert resumed.slw.clock == whole.slw.clock
    assert resumed.slw.loss_ratio.min_loss == pytest.approx(whole.slw.loss_ratio.min_loss, rel=1e-5)


def test_a_checkpoint_without_the_slw_state_is_refused(uninterrupted, tmp_path):
    _, _, out = uninterrupted
    checkpoint = tmp_path / f"checkpoint-{SAVE_AT}"
    shutil.copytree(out / "run" / f"checkpoint-{SAVE_AT}", checkpoint)
    (checkpoint / "scheduler.pt").unlink()  # as a plain Trainer's checkpoint would lack SLW's clock
    with pytest.raises(
        ConfigError, match=r"resume_from_checkpoint: the Trainer is at step 8 but SLW's clock at step 0"
    ):
        make_trainer(tmp_path / "resumed").train(resume_from_checkpoint=str(checkpoint))


def test_seqwarm_report_reads_an_slw_trainers_log_history(uninterrupted, tmp_path):
    """docs/INTEGRATIONS.md, "Reports on any run's logs": SLWTrainer's log rows carry seqlen, loss_ratio and the
    Adam statistics, so a report of its trainer_state.json has Table 3 and the sequence-length figure."""
    import csv
    import json

    from seqwarm.report import write_report

    trainer, _, _ = uninterrupted
    state = tmp_path / "slw" / "trainer_state.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"log_history": trainer.state.log_history}))
    md = write_report([state], tmp_path / "report").read_text()
    steps = step_rows(trainer)
    with open(tmp_path / "report" / "table3_correlation.csv", newline="") as f:
        assert [r["n"] for r in csv.DictReader(f)] == [str(len(steps))] * 2  # every step has both
    with open(tmp_path / "report" / "table1_loss_ratio.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert float(row["max_loss_ratio"]) == max(r["loss_ratio"] for r in steps.values())  # its own, not recomputed
    assert (tmp_path / "report" / "seqlen_vs_step.png").exists() and "computed from the logged losses" not in md


def test_settings_that_fight_slw_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="TrainingArguments.warmup_steps"):
        make_trainer(tmp_path, warmup_steps=5)
    with pytest.raises(ConfigError, match="^slw: expected a seqwarm SequenceLengthWarmup"):
        SLWTrainer(slw=None, model=None)


def test_the_example_of_integrations_md_runs_warms_up_and_stops_on_tokens(tmp_path, monkeypatch):
    """docs/INTEGRATIONS.md's Hugging Face example, as written (issue 27: it was a fragment without a model)."""
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent / "docs" / "INTEGRATIONS.md"
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), flags=re.DOTALL)
    (example,) = [b for b in blocks if "SLWTrainer(" in b]
    monkeypatch.chdir(tmp_path)  # its output_dir is relative
    scope: dict = {"__name__": "integrations_md"}
    exec(compile(example, str(docs), "exec"), scope)
    slw, trainer = scope["slw"], scope["trainer"]
    assert slw.finished and slw.clock.tokens >= 8_000 and slw.schedule(0) == 8 and slw.metrics()["seqlen"] == 128
    assert trainer.state.global_step == slw.clock.step < 10_000
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert logged[0]["seqlen"] == 8 and logged[-1]["seqlen"] == 128
    assert any("eval_loss" in r for r in trainer.state.log_history)  # evaluation ran (at full length)
