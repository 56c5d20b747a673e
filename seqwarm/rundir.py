"""A run directory's files besides the checkpoints, and what a resume may change.

    RUN_DIR/config.yaml      the resolved config the run trains with
    RUN_DIR/metrics.jsonl    every step's numbers (`seqwarm.metrics`)
    RUN_DIR/summary.json     totals and the stability record, written when training ends
    RUN_DIR/resumes.jsonl    one line per resume that changed a setting: the step, old and new values
    RUN_DIR/checkpoints/     `seqwarm.checkpoint`
    RUN_DIR/.seqwarm-run     the marker: seqwarm made this directory, so `--force` may replace it
    RUN_DIR/.seqwarm.lock    held by the process writing the run (`seqwarm.files.directory_lock`)

A resume continues the computation of the first session, so it may not change what is computed:
the model, the data, the curriculum, the LR schedule, the batch, the seed or the precision
(`resume_changes` refuses those, naming the field and why). It may change how long the run goes,
how it is observed (eval, log, monitor cadence, checkpoints) and where and how fast it runs
(device, threads, micro-batch, compile, parallelism). config.yaml is rewritten with those allowed
changes, so it always describes the run as it continues, and resumes.jsonl keeps the history.

`--force` replaces a directory only when seqwarm made it (`is_run_dir`), and never one that holds
the run's own data (`check_replaceable`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import yaml

from seqwarm import __version__
from seqwarm.config import Config, load_config, save_config
from seqwarm.errors import ConfigError, SeqwarmError
from seqwarm.files import LOCK, append_line, atomic_write
from seqwarm.metrics import read_metrics
from seqwarm.schedule import Clock

CONFIG = "config.yaml"
SUMMARY = "summary.json"
RESUMES = "resumes.jsonl"
MARKER = ".seqwarm-run"

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
    "train.preflight": "whether a memory check runs before step 1 (it changes nothing)",
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


def read_config(run_dir: Path, overrides: list[str] = ()) -> Config:
    """The run's config.yaml (with `overrides`); ConfigError naming the file when it is missing, empty or invalid.

    An empty one is refused rather than read as "all defaults": seqwarm never writes one (it writes
    atomically), so it was cut by a crash of an older version or by a hand, and training on the
    built-in defaults would silently be another run.
    """
    path = config_path(run_dir)
    if not path.is_file():
        raise ConfigError(f"{path}: missing; not a seqwarm run directory, or its config was deleted")
    try:
        empty = yaml.safe_load(path.read_text()) is None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        empty = False  # load_config names the problem
    if empty:
        raise ConfigError(f"{path}: empty; the run's config is lost, so it cannot be resumed (start a new run)")
    return load_config(path, overrides)


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


def record_resume(run_dir: Path, clock: Clock, changes: dict[str, tuple], *, rewind: dict | None = None) -> None:
    """Append one line to resumes.jsonl: when (step, tokens, wall time) and what changed; or, with `rewind`, a
    rewind-and-skip that continued the run from an earlier checkpoint (`seqwarm.rewind`)."""
    row = {
        "step": clock.step,
        "tokens": clock.tokens,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "changes": {k: {"old": a, "new": b} for k, (a, b) in changes.items()},
    }
    if rewind is not None:
        row["rewind"] = rewind
    append_line(Path(run_dir) / RESUMES, json.dumps(row))


def read_resumes(run_dir: Path) -> list[dict]:
    """The resumes of a run that changed settings, oldest first (a line cut by a crash is ignored)."""
    path = Path(run_dir) / RESUMES
    return [r for r in read_metrics(path) if "changes" in r] if path.exists() else []


# --- what --force may replace --------------------------------------------------------------------


def write_marker(run_dir: Path) -> None:
    """Mark `run_dir` as a run directory seqwarm made (what lets `--force` replace it later)."""
    atomic_write(Path(run_dir) / MARKER, json.dumps({"seqwarm": __version__, "created": time.time()}) + "\n")


def is_run_dir(run_dir: Path) -> bool:
    """Whether seqwarm made `run_dir`: its marker, or (a run of seqwarm 0.2 and earlier) config.yaml with
    metrics.jsonl or checkpoints/."""
    d = Path(run_dir)
    return (d / MARKER).is_file() or (
        (d / CONFIG).is_file() and ((d / "metrics.jsonl").is_file() or (d / "checkpoints").is_dir())
    )


def _inside(path: Path, directory: Path) -> bool:
    path, directory = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    return path == directory or directory in path.parents


def check_replaceable(run_dir: Path, keep: dict[str, Path]) -> None:
    """Refuse `--force` on a directory seqwarm did not make, or one holding a `keep` input ({field: path}).

    A directory that is missing, empty or holds only its lock file needs no --force and passes.
    """
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise SeqwarmError(f"run.dir {d}: exists and is not a directory")
    if not d.exists() or all(p.name == LOCK for p in d.iterdir()):
        return
    if not is_run_dir(d):
        raise SeqwarmError(
            f"run.dir {d}: not a seqwarm run directory (no {MARKER}, config.yaml or metrics.jsonl); "
            "--force replaces only a run seqwarm made: choose another run.dir or empty it yourself"
        )
    for name, path in keep.items():
        if _inside(path, d):
            raise SeqwarmError(f"{name} {path}: inside run.dir {d}; --force would delete it: move one of them")


def clear_run_dir(run_dir: Path) -> None:
    """Empty a run directory for `--force` (its lock, held by the caller, stays).

    The marker goes last, so a kill part-way leaves a directory `--force` still recognises.
    """
    d = Path(run_dir)
    entries = [p for p in d.iterdir() if p.name not in (LOCK, MARKER)]
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    (d / MARKER).unlink(missing_ok=True)
