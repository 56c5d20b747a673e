"""`SLWCallback` + `SLWModuleMixin`: SLW in the real PyTorch Lightning `Trainer` on CPU, with seqwarm's own GPT (one
layer), offline: lengths equal `seqwarm plan`'s, the tokens of a step are its micro-batches' unpadded targets, the LR is
seqwarm's `learning_rate` at the same tokens, the run stops at max_tokens, validation stays full length, and a resume
from a Lightning checkpoint continues exactly."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402
from melt_config import melted_slw_config  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from seqwarm.config import load_config  # noqa: E402
from seqwarm.errors import ConfigError  # noqa: E402
from seqwarm.integrations import SequenceLengthWarmup  # noqa: E402
from seqwarm.integrations.lightning import SLWCallback, SLWModuleMixin  # noqa: E402
from seqwarm.loss import IGNORE_INDEX  # noqa: E402
from seqwarm.model import GPT, GPTConfig  # noqa: E402
from seqwarm.plan import plan_steps, step_plan  # noqa: E402
from seqwarm.schedule import Clock, learning_rate  # noqa: E402

SEQLEN_END, VOCAB, MICRO, ACCUM, ROWS = 64, 100, 2, 2, 16
STEPS_PER_EPOCH = ROWS // (MICRO * ACCUM)  # 4
SETTINGS = dict(seqlen_start=8, seqlen_end=SEQLEN_END, duration=10, lr=1e-3, min_lr=1e-4, warmup_steps=3)
MAX_TOKENS = 3_000  # about 18 steps of 4 rows
SAVE_AT = 8  # the end of the second epoch: the resumed run reads the same rows as the uninterrupted one


def data() -> torch.Tensor:
    """Full-length rows (seqlen_end + 1 tokens); row r ends in a padding tail of (13 r) % 61 targets, so short steps
    meet padding too and every step trains another number of tokens."""
    rows = torch.randint(0, VOCAB, (ROWS, SEQLEN_END + 1), generator=torch.Generator().manual_seed(1))
    for r in range(ROWS):
        pad = (13 * r) % 61
        if pad:
            rows[r, -pad:] = IGNORE_INDEX
    return rows


def step_tokens(rows: torch.Tensor, step: int, seqlen: int) -> int:
    """The unpadded targets of a step's ACCUM micro-batches (the loader is not shuffled)."""
    first = (step % STEPS_PER_EPOCH) * MICRO * ACCUM
    return int((rows[first : first + MICRO * ACCUM, 1 : seqlen + 1] != IGNORE_INDEX).sum())


class Rows(Logger):
    """Every row Lightning writes, in memory (Lightning's step is the number of steps before the row's)."""

    name, version = "rows", 0

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []

    def log_metrics(self, metrics, step=None):
        self.rows.append({"logged_at": step, **metrics})

    def log_hyperparams(self, *args, **kwargs):
        pass


class LitGPT(SLWModuleMixin, L.LightningModule):
    def __init__(self, widths: list | None = None, scheduler: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.model = GPT(GPTConfig(n_layer=1, n_head=2, d_model=32, max_seqlen=SEQLEN_END, vocab_size=VOCAB))
        self.widths, self.with_scheduler = widths, scheduler

    def forward(self, inputs, targets):
        if self.widths is not None:
            self.widths.append((self.training, inputs.shape[1]))
        # A padding id (-100) in the inputs only ever predicts padding targets, which the loss skips.
        return self.model(inputs.clamp(min=0), targets)[0] / (targets != IGNORE_INDEX).sum()

    def training_step(self, batch, batch_idx):
        inputs, targets = batch  # SLWModuleMixin cut the rows to this step's length
        return self(inputs, targets)

    def validation_step(self, rows, batch_idx):
        self.log("val_loss", self(rows[:, :-1], rows[:, 1:]))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=SETTINGS["lr"])
        if self.with_scheduler:
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1)}
        return optimizer


def fit(out_dir, *, widths=None, ckpt_path=None, model=None, callbacks=None, step_guard=None, slw=None, **overrides):
    slw = slw or SequenceLengthWarmup(**SETTINGS, max_tokens=MAX_TOKENS)
    logger = Rows()
    args = dict(
        accelerator="cpu",
        devices=1,
        max_steps=1_000,  # an upper bound: SLW stops at max_tokens first
        accumulate_grad_batches=ACCUM,
        log_every_n_steps=1,
        check_val_every_n_epoch=2,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=logger,
        default_root_dir=str(out_dir),
        callbacks=[
            SLWCallback(slw, step_guard),  # step_guard: tests/test_integrations_lightning_stability.py
            ModelCheckpoint(dirpath=str(out_dir / "ckpt"), every_n_train_steps=SAVE_AT, save_top_k=-1),
            *(callbacks or []),
        ],
    )
    args.update(overrides)
    trainer = L.Trainer(**args)
    rows = data()
    train = DataLoader(rows, batch_size=MICRO)
    trainer.fit(model or LitGPT(widths), train, DataLoader(rows[:4], batch_size=4), ckpt_path=ckpt_path)
    return trainer, slw, {r["logged_at"] + 1: r for r in logger.rows if "seqlen" in r}  # by step, 1-based


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("lightning")
    widths: list = []
    trainer, slw, steps = fit(out, widths=widths)
    return trainer, slw, steps, widths, out


def test_lengths_equal_seqwarm_plan_and_the_lr_is_seqwarms_at_the_same_tokens(uninterrupted):
    trainer, slw, steps, widths, _ = uninterrupted
    assert sorted(steps) == list(range(1, len(steps) + 1)) and len(steps) > 12
    cfg = load_config(
        None,
        [
            "curriculum.kind=slw",
            *(f"curriculum.{k}={SETTINGS[k]}" for k in ("seqlen_start", "seqlen_end", "duration")),
            f"model.max_seqlen={SEQLEN_END}",
            f"train.max_steps={len(steps)}",
            "train.lr_decay_unit=steps",  # only the lengths are compared: the rows here are padded
            f"train.global_batch_size={MICRO * ACCUM}",
        ],
    )
    plan = list(plan_steps(cfg))
    assert [steps[r["step"]]["seqlen"] for r in plan] == [r["seqlen"] for r in plan]
    assert plan[0]["seqlen"] == 8 and plan[-1]["seqlen"] == SEQLEN_END

    rows, clock, train = data(), Clock(), slw.config.train
    for step in sorted(steps):
        row = steps[step]
        tokens = row["tokens"] - clock.tokens
        # Both micro-batches of the step, their padding excluded; never the full B x seqlen of a padded step.
        assert tokens == step_tokens(rows, step - 1, int(row["seqlen"])), step
        assert row["lr"] == learning_rate(clock.after(tokens, train), train)  # exactly: logged as float64
        clock.tick(tokens, train)
        assert {"loss_ratio", "adam/var_l1", "adam/var_max", "adam/mom_l1"} <= set(row)
    assert len({steps[s]["tokens"] - steps[s - 1]["tokens"] for s in range(2, 12)}) > 5  # padding varied the count
    assert slw.clock == clock and trainer.global_step == clock.step
    assert trainer.optimizers[0].param_groups[0]["lr"] == steps[max(steps)]["lr"]

    # Each micro-batch trains at its step's length; validation stays at full length.
    trained = [w for training, w in widths if training]
    assert trained == [steps[s]["seqlen"] for s in sorted(steps) for _ in range(ACCUM)]
    assert {w for training, w in widths if not training} == {SEQLEN_END}


class Shapes(LitGPT):
    """LitGPT that keeps every training forward's (inputs, targets)."""

    def __init__(self):
        super().__init__()
        self.seen: list = []

    def forward(self, inputs, targets):
        if self.training:
            self.seen.append((inputs, targets))
        return super().forward(inputs, targets)


def test_a_melted_run_trains_on_the_plans_rows_at_the_full_rows_tokens(tmp_path):
    """`curriculum.packing: melt` (SequenceLengthWarmup.from_config) in the real Lightning Trainer: each micro-batch
    the module trains is its MICRO full-length rows melted into MICRO x 64 / L rows of the step's length L, as the
    step plan says, with the rows' own targets (padding included, still ignored); every step counts the full rows'
    unpadded targets (batch x seqlen_end less the padding, whatever the length), at seqwarm's LR; the loss is finite."""
    cfg = melted_slw_config(SETTINGS, seqlen_end=SEQLEN_END, max_tokens=MAX_TOKENS, micro=MICRO, accum=ACCUM)
    module = Shapes()
    trainer, slw, steps = fit(tmp_path, model=module, slw=SequenceLengthWarmup.from_config(cfg))
    assert sorted(steps) == list(range(1, len(steps) + 1)) and slw.finished
    # The step plan (`seqwarm plan`'s) driven by the tokens each step trained: its length, split and LR at each step.
    plan, rows, specs = step_plan(cfg), data(), []
    for step in sorted(steps):
        row, spec = steps[step], plan.spec()
        tokens = row["tokens"] - plan.clock.tokens
        assert tokens == step_tokens(rows, step - 1, SEQLEN_END), step  # the full rows' targets, at every length
        assert (row["seqlen"], row["lr"]) == (spec.seqlen, plan.lr(tokens)) and math.isfinite(row["loss_ratio"])
        plan.tick(tokens)
        specs.append(spec)
    assert {s.seqlen for s in specs} == {8, 16, 32, 64} and slw.clock == plan.clock
    assert trainer.global_step == plan.clock.step and plan.finished

    assert len(module.seen) == len(steps) * ACCUM
    for i, (inputs, targets) in enumerate(module.seen):
        step, micro, spec = i // ACCUM, i % ACCUM, specs[i // ACCUM]
        assert spec.seqlen * spec.split == SEQLEN_END
        assert inputs.shape == targets.shape == (MICRO * spec.split, spec.seqlen)
        first = (step % STEPS_PER_EPOCH) * MICRO * ACCUM + micro * MICRO  # the loader is not shuffled
        full = rows[first : first + MICRO]
        assert torch.equal(inputs.reshape(MICRO, SEQLEN_END), full[:, :-1])
        assert torch.equal(targets.reshape(MICRO, SEQLEN_END), full[:, 1:])


def test_it_stops_at_max_tokens(uninterrupted):
    trainer, slw, steps, _, _ = uninterrupted
    last = max(steps)
    assert steps[last]["tokens"] >= MAX_TOKENS > steps[last - 1]["tokens"]
    assert trainer.global_step == last < trainer.max_steps and slw.finished


def test_a_resume_from_a_lightning_checkpoint_continues_the_schedule_exactly(uninterrupted, tmp_path):
    _, whole_slw, before, _, out = uninterrupted
    (checkpoint,) = (out / "ckpt").glob(f"*step={SAVE_AT}.ckpt")
    _, slw, after = fit(tmp_path, ckpt_path=str(checkpoint))
    assert sorted(after) == list(range(SAVE_AT + 1, max(before) + 1))
    for step in after:
        for key in ("seqlen", "tokens", "lr"):
            assert after[step][key] == before[step][key], (step, key)
        assert after[step]["loss_ratio"] == pytest.approx(before[step]["loss_ratio"], rel=1e-5)
    assert slw.clock == whole_slw.clock
    assert slw.loss_ratio.min_loss == pytest.approx(whole_slw.loss_ratio.min_loss, rel=1e-5)
    # The resumed ModelCheckpoint saved again at step 8, after the first micro-batch of step 9: amid its gradient
    # accumulation, with SLW's clock at the step's start.
    (amid,) = (tmp_path / "ckpt").glob(f"*step={SAVE_AT}.ckpt")
    clock = torch.load(amid, weights_only=True)["callbacks"]["SLWCallback"]["slw"]["clock"]
    assert (clock["step"], clock["tokens"]) == (SAVE_AT, before[SAVE_AT]["tokens"])


def test_a_checkpoint_without_the_slw_state_is_refused(uninterrupted, tmp_path):
    _, _, _, _, out = uninterrupted
    (checkpoint,) = (out / "ckpt").glob(f"*step={SAVE_AT}.ckpt")
    state = torch.load(checkpoint, weights_only=True)
    del state["callbacks"]["SLWCallback"]  # as a checkpoint of a run without SLW would lack its clock
    torch.save(state, tmp_path / "plain.ckpt")
    with pytest.raises(ConfigError, match=r"^ckpt_path: the Trainer is at step 8 but SLW's clock at step 0"):
        fit(tmp_path, ckpt_path=str(tmp_path / "plain.ckpt"))


class NoMixin(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch.float()).sum()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters())


def test_settings_that_fight_slw_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="^slw: expected a seqwarm SequenceLengthWarmup"):
        SLWCallback(None)
    with pytest.raises(ConfigError, match="^model: NoMixin does not mix in SLWModuleMixin"):
        fit(tmp_path, model=NoMixin())
    with pytest.raises(ConfigError, match="^configure_optimizers: an LR scheduler was returned"):
        fit(tmp_path, model=LitGPT(scheduler=True))
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `SLWCallback`"):  # Lightning's
        fit(tmp_path, callbacks=[SLWCallback(SequenceLengthWarmup(**SETTINGS, max_tokens=MAX_TOKENS))])
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="^Trainer.callbacks: a SLWModuleMixin module needs seqwarm's SLWCallback"):
        trainer.fit(LitGPT(), DataLoader(data(), batch_size=MICRO))


def test_seqwarm_imports_without_lightning():
    code = "import sys, seqwarm, seqwarm.integrations; assert 'lightning' not in sys.modules, 'lightning imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_example_of_integrations_md_runs_warms_up_and_stops_on_tokens():
    docs = Path(__file__).resolve().parent.parent / "docs" / "INTEGRATIONS.md"
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), flags=re.DOTALL)
    (example,) = [b for b in blocks if "SLWCallback(" in b]
    scope: dict = {"__name__": "integrations_md"}
    exec(compile(example, str(docs), "exec"), scope)
    slw, trainer = scope["slw"], scope["trainer"]
    assert slw.finished and slw.clock.tokens >= 8_000 and slw.metrics()["seqlen"] == 128 and slw.schedule(0) == 8
    assert trainer.global_step == slw.clock.step < 10_000
    assert trainer.callback_metrics["tokens"].item() == slw.clock.tokens  # a ModelCheckpoint could monitor it
    assert set(trainer.callback_metrics) >= {"seqlen", "lr", "loss_ratio", "adam/var_max"}
    # Random tokens cannot be learned: the loss stays near a uniform guess's ln(512) = 6.24.
    assert 5.5 < slw.loss_ratio.min_loss < 7.0
