"""A run directory's files besides the checkpoints, and what a resume may change.

    RUN_DIR/config.yaml      the resolved config the run trains with
    RUN_DIR/metrics.jsonl    every step's numbers (`seqwarm.metrics`)
    RUN_DIR/summary.json     totals and the stability record, written when training ends
    RUN_DIR/resumes.jsonl    one line per resume that changed a setting: the step, old and new values
    RUN_DIR/checkpoints/     `seqwarm.checkpoint`

A resume continues the computation of the first session, so it may not change what is computed:
the model, the data, the curriculum, the LR schedule, the batch, the seed or the precision
(`resume_changes` refuses those, naming the field and why). It may change how long the run goes,
how it is observed (eval, log, monitor cadence, checkpoints) and where and how fast it runs
(device, threads, micro-batch, compile, parallelism). config.yaml is rewritten with those allowed
changes, so it always describes the run as it continues, and resumes.jsonl keeps the history.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from seqwarm.config import Config, load_config, save_config
from seqwarm.errors import ConfigError
from seqwarm.files import atomic_write
from seqwarm.metrics import read_metrics
from seqwarm.schedule import Clock

CONFIG = "config.yaml"
SUMMARY = "summary.json"
RESUMES = "resumes.jsonl"

# What a resume may change. Everything else is refused: see the module docstring.
RESUMABLE = {
    "run.dir": "where the run is",
    "train.max_tokens": "how long the run goes",
    "train.max_steps": "how long the run goes",
    "train.micro_batch_size": "memory per forward pass; the step's gradient is the same sum",
    "train.device": "where the run trains",
    "train.num_threads": "how fast it trains",
    "train.compile": "how fast it trains",
    "train.parallel": "how the processes share the work",
    "train.dist_timeout_s": "how long a collective waits",
    "data.verify": "how the data is checked",
}
RESUMABLE_SECTIONS = {"eval", "log", "checkpoint", "monitor"}  # observation and cadence
WHY_NOT = {
    "model": "the checkpoint's weights have the run's shape",
    "data": "the data order and position belong to the run's data",
    "curriculum": "the steps already trained followed the run's pacing",
    "run": "the seed fixes the data order and the dropout stream the run has followed",
    "train": "the steps already trained followed the run's optimizer, LR schedule, batch and precision",
}


def config_path(run_dir: Path) -> Path:
    return Path(run_dir) / CONFIG


def read_config(run_dir: Path) -> Config:
    """The run's config.yaml; ConfigError naming the file when it is missing or invalid."""
    path = config_path(run_dir)
    if not path.is_file():
        raise ConfigError(f"{path}: missing; not a seqwarm run directory, or its config was deleted")
    return load_config(path)


def write_config(run_dir: Path, cfg: Config) -> None:
    save_config(cfg, config_path(run_dir))


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write(Path(run_dir) / SUMMARY, json.dumps(summary, indent=2) + "\n")


def _flat(cfg: Config) -> dict[str, object]:
    return {f"{section}.{name}": value for section, fields in cfg.to_dict().items() for name, value in fields.items()}


def _decay_end(t) -> int | None:
    """Where the LR decay reaches min_lr, in its own unit (tokens or steps): a function of the run's length when unset."""
    return t.decay_tokens if t.lr_decay_unit == "tokens" else t.decay_steps


def resume_changes(saved: Config, new: Config) -> dict[str, tuple]:
    """The settings `new` changes relative to the run's `saved` config, as {key: (old, new)}.

    Raises ConfigError for the first change a resume may not make. A new run length is refused too
    when the LR decay ends at it (train.lr_decay_tokens/steps unset): that would change the LR of
    the steps already trained.
    """
    old, cur = _flat(saved), _flat(new)
    changes = {k: (old[k], cur[k]) for k in cur if old[k] != cur[k]}
    for key, (before, after) in changes.items():
        section = key.split(".")[0]
        if key not in RESUMABLE and section not in RESUMABLE_SECTIONS:
            raise ConfigError(
                f"{key}: cannot change on --resume ({before!r} -> {after!r}): {WHY_NOT[section]}; "
                "start a new run to train with it"
            )
    end, unit = _decay_end(saved.train), saved.train.lr_decay_unit
    if _decay_end(new.train) != end:
        length, decay = (
            ("train.max_tokens", "train.lr_decay_tokens")
            if unit == "tokens"
            else ("train.max_steps", "train.lr_decay_steps")
        )
        raise ConfigError(
            f"{length}: cannot change on --resume while the LR decay ends at it ({decay} unset): the steps already "
            f"trained would have had another LR; set {decay}={end} to keep the schedule and train longer at min_lr"
        )
    changes.pop("run.dir", None)  # the same directory, however it was spelled
    return changes


def record_resume(run_dir: Path, clock: Clock, changes: dict[str, tuple]) -> None:
    """Append one line to resumes.jsonl: when (step, tokens, wall time) and what changed."""
    row = {
        "step": clock.step,
        "tokens": clock.tokens,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "changes": {k: {"old": a, "new": b} for k, (a, b) in changes.items()},
    }
    with open(Path(run_dir) / RESUMES, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_resumes(run_dir: Path) -> list[dict]:
    """The resumes of a run that changed settings, oldest first (a line cut by a crash is ignored)."""
    path = Path(run_dir) / RESUMES
    return [r for r in read_metrics(path) if "changes" in r] if path.exists() else []
