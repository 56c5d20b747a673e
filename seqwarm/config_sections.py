"""The config's sections, one dataclass per concern: run, data, model, train, monitor, eval, checkpoint, log
(the curriculum's is `seqwarm.curriculum.config.CurriculumConfig`). `seqwarm.config` joins them into `Config` and
loads YAML and overrides.

Every field has a docstring below it. Each section checks its own fields in `__post_init__`, with a `ConfigError`
whose message names the field (`seqwarm` prints it and exits 2).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from dataclasses import dataclass, field
from typing import Literal

from seqwarm.errors import ConfigError, check_finite
from seqwarm.model import PRESETS, GPTConfig, model_options
from seqwarm.schedule import LRSchedule
from seqwarm.stability_config import MonitorStability, TrainStability
from seqwarm.tokenizer import VOCAB_SIZE

SEED_MAX = 2**32 - 1  # numpy's legacy seeding range (RandomState), which torch and every other seeded library accept


@dataclass
class RunConfig:
    dir: str = "runs/run"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/ and the summary go here."""
    seed: int = 1234
    """Seeds the weights, the data order and dropout."""

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"run.seed: must be an integer in [0, 2**32 - 1], got {self.seed!r}")


@dataclass
class DataConfig:
    path: str = "builtin"
    """Directory written by `seqwarm prepare`, or `builtin` for the embedded corpus (prepared on first use)."""
    verify: Literal["full", "size", "lazy"] = "full"
    """Check token files against meta.json: `full` recomputes the sha256, `size` only the length (huge corpora),
    `lazy` each shard's sha256 the first time training reads it."""


@dataclass
class _ModelKeys:
    """The `model:` keys that are not options of the model itself. `ModelConfig` adds the options, one key
    per field of `seqwarm.model.GPTConfig`, where each is declared with its docstring."""

    preset: str | None = "tiny"
    """A named size from `seqwarm.model.PRESETS`; the options below override it."""
    vocab_size: int | Literal["auto"] = "auto"
    """Token ids the model embeds and predicts. `auto`: the vocabulary of the data's tokenizer, read
    from its meta.json when the model is built for training (`seqwarm.data.corpus.open_data`), and
    recorded in every checkpoint, which `eval` and `export` read. Where the data is not prepared
    yet (`seqwarm plan` before `prepare`, the parameter count of `model.gpt()` alone), `auto` is
    GPT-2's 50,257. An integer must equal the data's vocabulary (a one-line error otherwise)."""

    def __post_init__(self):
        check_finite(self, "model")
        if self.vocab_size != "auto" and self.vocab_size <= 0:
            raise ConfigError(f"model.vocab_size: must be positive or auto, got {self.vocab_size}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset {self.preset!r} (choose from {', '.join(PRESETS)})")
        for f in model_options():
            if f.default is dataclasses.MISSING and getattr(self, f.name) is None and self.preset is None:
                raise ConfigError(f"model.{f.name}: required when model.preset is null")
        try:
            self.gpt()
        except ValueError as e:  # GPTConfig's own checks, which name the option
            raise ConfigError(f"model.{e}") from None

    def gpt(self, data_vocab_size: int | None = None) -> GPTConfig:
        """The model's options: the preset's, overridden by every key set here (not null); `vocab_size: auto`
        resolved to `data_vocab_size` (the data's), else GPT-2's."""
        options = dict(PRESETS[self.preset]) if self.preset else {}
        for f in model_options():
            if f.name != "vocab_size" and getattr(self, f.name) is not None:
                options[f.name] = getattr(self, f.name)
        return GPTConfig(**options, vocab_size=self.resolve_vocab_size(data_vocab_size))

    def resolve_vocab_size(self, data_vocab_size: int | None = None) -> int:
        if self.vocab_size != "auto":
            return self.vocab_size
        return VOCAB_SIZE if data_vocab_size is None else data_vocab_size


# Options of 0.2 keep their default here rather than null, so that a config.yaml written by 0.2 (which
# spells `dropout: 0.0`) and the same config read now compare equal on --resume.
_SAVED_DEFAULTS = {"dropout"}


def _model_config_class() -> type:
    """`_ModelKeys` plus one key per model option, typed as `GPTConfig` types it, or null: null takes the
    preset's value, else the model's default. The option's docstring stays in seqwarm/model.py (`field_docs`)."""
    hints = typing.get_type_hints(GPTConfig)
    keys = {f.name for f in dataclasses.fields(_ModelKeys)}
    options = [
        (f.name, hints[f.name] | None, field(default=f.default if f.name in _SAVED_DEFAULTS else None))
        for f in model_options()
        if f.name not in keys
    ]
    cls = dataclasses.make_dataclass("ModelConfig", options, bases=(_ModelKeys,))
    cls.__module__, cls.__doc__ = __name__, "The `model:` section: a preset and the model's options (`GPTConfig`)."
    cls.__options__ = GPTConfig  # where `field_docs` reads the options' docstrings
    return cls


ModelConfig = _model_config_class()


@dataclass
class TrainConfig(TrainStability):
    global_batch_size: int = 32
    """Sequences per optimizer step, over all processes and micro-batches."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward pass; gradients accumulate over global/micro of them. Default: global."""
    lr: float = 6e-4
    """Peak learning rate."""
    min_lr: float = 6e-5
    """Learning rate at the end of the decay."""
    warmup_steps: int = 0
    """Linear LR warmup, in optimizer steps (the paper: 3K steps). Exclusive with warmup_tokens."""
    warmup_tokens: int = 0
    """Linear LR warmup, in trained tokens (GPT-3: 375M). Exclusive with warmup_steps."""
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape of the decay from lr to min_lr after warmup (the paper: single-cycle cosine)."""
    lr_decay_unit: Literal["tokens", "steps"] = "tokens"
    """Decay over trained tokens (the paper's fair comparison, Appendix A.2) or over steps."""
    lr_decay_tokens: int | None = None
    """Tokens at which the decay reaches min_lr, counted from 0. Default: max_tokens."""
    lr_decay_steps: int | None = None
    """Step at which a step-wise decay reaches min_lr. Default: max_steps."""
    max_tokens: int | None = None
    """Stop once this many tokens have been trained on (the paper compares runs at equal tokens)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (whichever of max_tokens/max_steps comes first)."""
    grad_clip: float = 1.0
    """Clip the global gradient l2 norm to this value; 0 disables clipping."""
    weight_decay: float = 0.01
    """AdamW weight decay, applied to matrices only."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2 (the paper: 0.999)."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` picks cuda when available."""
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    """fp32, bf16 autocast, or fp16 autocast with dynamic loss scaling (CUDA only); `auto`: bf16 where the
    device multiplies bf16 natively (a CUDA GPU with bf16, a CPU with AMX or AVX-512 BF16), fp32 elsewhere.
    A run records what `auto` resolved to in its config.yaml, so a resume keeps it on any machine."""
    compile: bool = False
    """torch.compile the model, with a dynamic sequence dimension so SLW does not recompile per length."""
    num_threads: int | None = None
    """CPU threads for torch (default: torch's choice)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun with several processes: DistributedDataParallel, or FSDP2 (`fully_shard`) to shard weights and Adam."""
    dist_timeout_s: int = 600
    """Seconds a collective waits for the other processes before failing (a dead or stuck rank ends the run)."""

    def __post_init__(self):
        check_finite(self, "train")
        for name in (
            "global_batch_size",
            "micro_batch_size",
            "max_tokens",
            "max_steps",
            "lr_decay_tokens",
            "lr_decay_steps",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"train.{name}: must be positive, got {value}")
        if self.micro_batch_size is None:
            self.micro_batch_size = self.global_batch_size
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train.micro_batch_size ({self.micro_batch_size}) must divide train.global_batch_size ({self.global_batch_size})"
            )
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(
                f"train.min_lr/train.lr: need 0 <= min_lr <= lr and lr > 0, got min_lr={self.min_lr}, lr={self.lr}"
            )
        if self.warmup_steps < 0 or self.warmup_tokens < 0:
            raise ConfigError("train.warmup_steps/train.warmup_tokens: must be >= 0")
        if self.warmup_steps and self.warmup_tokens:
            raise ConfigError("train.warmup_steps and train.warmup_tokens: set only one of them")
        if self.max_tokens is None and self.max_steps is None:
            raise ConfigError("train.max_tokens: set train.max_tokens or train.max_steps, or training never stops")
        if self.lr_decay_unit == "tokens" and (self.lr_decay_tokens or self.max_tokens) is None:
            raise ConfigError("train.lr_decay_tokens: required for token-wise decay when train.max_tokens is unset")
        if self.lr_decay_unit == "steps" and (self.lr_decay_steps or self.max_steps) is None:
            raise ConfigError("train.lr_decay_steps: required for step-wise decay when train.max_steps is unset")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip: must be >= 0, got {self.grad_clip}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay: must be >= 0, got {self.weight_decay}")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1) or self.adam_eps <= 0:
            raise ConfigError("train.adam_beta1/adam_beta2 must be in [0, 1) and train.adam_eps > 0")
        if self.dist_timeout_s <= 0:
            raise ConfigError(f"train.dist_timeout_s: must be positive, got {self.dist_timeout_s}")
        if self.num_threads is not None and self.num_threads <= 0:
            raise ConfigError(f"train.num_threads: must be positive, got {self.num_threads}")
        self.check_stability()

    def lr_schedule(self) -> LRSchedule:
        """The LR schedule and stopping rule of this section, as the method's own type."""
        return LRSchedule(
            lr=self.lr,
            min_lr=self.min_lr,
            warmup_steps=self.warmup_steps,
            warmup_tokens=self.warmup_tokens,
            lr_decay_style=self.lr_decay_style,
            lr_decay_unit=self.lr_decay_unit,
            decay_tokens=self.decay_tokens,
            decay_steps=self.decay_steps,
            max_tokens=self.max_tokens,
            max_steps=self.max_steps,
        )

    @property
    def decay_tokens(self) -> int | None:
        return self.lr_decay_tokens or self.max_tokens

    @property
    def decay_steps(self) -> int | None:
        return self.lr_decay_steps or self.max_steps


@dataclass
class MonitorConfig(MonitorStability):
    adam_every_steps: int = 1
    """Record Adam's variance/momentum statistics every this many steps (Section 3); raise it for huge models."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/Inf loss or gradient is never applied; then `stop` the run, or `skip` the batch and go on."""
    max_consecutive_skips: int = 5
    """With `skip`: stop after this many non-finite steps in a row."""

    def __post_init__(self):
        if self.adam_every_steps <= 0:
            raise ConfigError(f"monitor.adam_every_steps: must be positive, got {self.adam_every_steps}")
        if self.max_consecutive_skips <= 0:
            raise ConfigError(f"monitor.max_consecutive_skips: must be positive, got {self.max_consecutive_skips}")
        check_finite(self, "monitor")
        self.check_stability()


@dataclass
class EvalConfig:
    every_tokens: int | None = None
    """Validate every this many trained tokens (and always at the end)."""
    max_sequences: int = 64
    """Full-length validation sequences used per evaluation (a fixed set, the first ones of the split)."""
    batch_size: int | None = None
    """Sequences per evaluation forward pass. Default: train.micro_batch_size."""

    def __post_init__(self):
        if self.every_tokens is not None and self.every_tokens <= 0:
            raise ConfigError(f"eval.every_tokens: must be positive, got {self.every_tokens}")
        if self.max_sequences <= 0:
            raise ConfigError(f"eval.max_sequences: must be positive, got {self.max_sequences}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ConfigError(f"eval.batch_size: must be positive, got {self.batch_size}")


@dataclass
class CheckpointConfig:
    every_steps: int | None = None
    """Save a checkpoint every this many steps (and always at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk; older ones are deleted after a newer one is complete."""

    def __post_init__(self):
        if self.every_steps is not None and self.every_steps <= 0:
            raise ConfigError(f"checkpoint.every_steps: must be positive, got {self.every_steps}")
        if self.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last: must be >= 1, got {self.keep_last}")


@dataclass
class LogConfig:
    progress: bool = True
    """Show a progress bar (step, tokens, seqlen, loss, lr, tokens/s, ETA)."""
    every_steps: int = 1
    """Refresh the progress bar's numbers every this many steps (metrics.jsonl gets every step)."""
    tensorboard: bool = False
    """Also write the metrics as TensorBoard scalars to RUN_DIR/tensorboard (needs seqwarm[tensorboard])."""
    wandb: bool = False
    """Also log the metrics to Weights & Biases (needs seqwarm[wandb]), from rank 0, with files under RUN_DIR/wandb."""
    wandb_project: str = "seqwarm"
    """The W&B project of the run."""
    wandb_name: str | None = None
    """The W&B run name, also its group (a resumed session is a new W&B run in it). Default: RUN_DIR's name."""
    wandb_mode: Literal["online", "offline", "disabled"] | None = None
    """offline: no account or network (`wandb sync RUN_DIR/wandb/offline-run-*` uploads later). Default: WANDB_MODE, else online."""

    def __post_init__(self):
        if self.every_steps <= 0:
            raise ConfigError(f"log.every_steps: must be positive, got {self.every_steps}")
        if self.wandb and importlib.util.find_spec("wandb") is None:  # find_spec: importing wandb takes seconds
            raise ConfigError("log.wandb: the wandb package is missing; pip install 'seqwarm[wandb]'")
        if not self.wandb_project.strip():
            raise ConfigError("log.wandb_project: must not be empty")
        if self.tensorboard:
            try:
                import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)
            except ImportError:
                raise ConfigError(
                    "log.tensorboard: the tensorboard package is missing; pip install 'seqwarm[tensorboard]'"
                ) from None
