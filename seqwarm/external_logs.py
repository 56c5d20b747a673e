"""Logs of runs seqwarm did not train, read as seqwarm's metric rows, so `seqwarm report` works on them.

Three kinds of input, each read into *foreign rows* (dicts of the other trainer's keys):

- a TensorBoard event directory (read with tensorboard's own `EventAccumulator`): one row per event
  step, holding every scalar tag of that step, its `step` and `wall_time` (seconds since the first event);
- a Hugging Face `trainer_state.json` (its `log_history`), or a directory holding one;
- a CSV file (a header row of keys) or a JSON Lines file (one object per line) from any trainer.

`metric_rows` (pure) then turns foreign rows into seqwarm's rows (the names of `seqwarm.metrics`):
each seqwarm key is read from the foreign key `--map` gives it, else from the first of a few common
names that the log has (`KNOWN_NAMES`: seqwarm's own, Hugging Face's `Trainer` logs and its
TensorBoard tags). A foreign row with a loss becomes a train row, one with a validation loss an
eval row (a row may give both). Decisions:

- `step` and `loss` are required; without them a log cannot give Table 1, so their absence is an
  error naming the file and listing the keys the log has. A key named in `--map` must exist too.
- Without a `loss_ratio` key the ratio is computed from the logged losses as seqwarm does
  (`LossRatio`: the loss over the minimum of all previous logged losses). A log written every k steps
  gives the ratio of k-step mean losses, smoother than the per-step ratio of Table 1: report.md says so.
- `val/ppl` is exp(`val/loss`) when the log has no perplexity (capped as seqwarm's trainer caps it).
- A value that is not a number (a string, an empty CSV cell) is missing, never 0.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from seqwarm.errors import SeqwarmError
from seqwarm.metrics import number, parse_jsonl
from seqwarm.monitor import ADAM_KEYS, LossRatio

TRAIN_KEYS = ("step", "tokens", "seqlen", "batch_size", "lr", "loss", "loss_ratio", "grad_norm", "clipped", "time_s")
EVAL_KEYS = ("val/loss", "val/ppl")
METRIC_KEYS = (*TRAIN_KEYS, *ADAM_KEYS, *EVAL_KEYS)
REQUIRED = ("step", "loss")
COUNTS = ("tokens", "seqlen", "batch_size")
# Tried in order when --map does not name the key: seqwarm's own name (its TensorBoard mirror uses it
# too), then Hugging Face Trainer's log_history keys and its TensorBoard tags (`train/`, `eval/`), which
# SLWTrainer (seqwarm.integrations.hf) extends with seqlen, tokens, loss_ratio and the Adam statistics.
# `num_input_tokens_seen` (include_num_input_tokens_seen=True) counts input tokens, padding included;
# `train_runtime` is in every training row of transformers 5.x's log_history.
KNOWN_NAMES = {
    "step": ("step", "global_step", "train/global_step"),
    "tokens": ("tokens", "train/tokens", "num_input_tokens_seen", "train/num_input_tokens_seen"),
    "lr": ("lr", "learning_rate", "train/learning_rate"),
    "loss": ("loss", "train/loss"),
    "time_s": ("time_s", "train/time_s", "wall_time", "train_runtime"),
    "val/loss": ("val/loss", "eval_loss", "eval/loss"),
    "val/ppl": ("val/ppl", "eval_perplexity", "eval/perplexity"),
}
PPL_CAP = 50.0  # exp of at most this, as seqwarm's trainer logs val/ppl
TRAINER_STATE = "trainer_state.json"
EVENTS = "events.out.tfevents.*"
LOG_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")


class ExternalLogError(SeqwarmError):
    """A foreign log cannot be read, or lacks a key the report needs; the message names the file and the key."""


@dataclass(frozen=True)
class ExternalLog:
    """A foreign log read as seqwarm's metrics rows."""

    path: Path
    kind: str  # tensorboard, trainer_state, csv or jsonl
    rows: list[dict]
    notes: tuple[str, ...]


# --- the key map (pure) --------------------------------------------------------------------------


def parse_map(specs: Iterable[str]) -> dict[str, str]:
    """`--map loss=train/loss,step=global_step` (the option may repeat) -> {seqwarm key: foreign key}."""
    mapping: dict[str, str] = {}
    for spec in specs:
        for item in spec.split(","):
            ours, sep, theirs = (s.strip() for s in item.partition("="))
            if not sep or not ours or not theirs:
                raise ExternalLogError(f"--map {item.strip()!r}: expected SEQWARM_KEY=LOG_KEY, e.g. loss=train/loss")
            if ours not in METRIC_KEYS:
                close = difflib.get_close_matches(ours, METRIC_KEYS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f"; one of {', '.join(METRIC_KEYS)}"
                raise ExternalLogError(f"--map {item.strip()}: {ours!r} is not a seqwarm metric{hint}")
            if ours in mapping:
                raise ExternalLogError(f"--map: {ours} is mapped twice ({mapping[ours]} and {theirs})")
            mapping[ours] = theirs
    return mapping


def candidates(ours: str) -> tuple[str, ...]:
    """The foreign names tried for a seqwarm key; Hugging Face's TensorBoard callback prefixes `train/`."""
    return KNOWN_NAMES.get(ours, (ours, f"train/{ours}"))


def resolve_keys(present: set[str], mapping: dict[str, str], source: Path) -> dict[str, str]:
    """{seqwarm key: the foreign key it is read from} for the keys this log has."""
    keys = {}
    for ours in METRIC_KEYS:
        if ours in mapping:
            if mapping[ours] not in present:
                raise ExternalLogError(
                    f"{source}: --map {ours}={mapping[ours]}: no key {mapping[ours]!r} in the log "
                    f"(keys: {', '.join(sorted(present))})"
                )
            keys[ours] = mapping[ours]
            continue
        found = next((k for k in candidates(ours) if k in present), None)
        if found is not None:
            keys[ours] = found
    for ours in REQUIRED:
        if ours not in keys:
            tried = ", ".join(candidates(ours))
            raise ExternalLogError(
                f"{source}: no {ours!r} key (tried {tried}; give --map {ours}=KEY); "
                f"keys in the log: {', '.join(sorted(present)) or 'none'}"
            )
    return keys


def metric_rows(foreign: list[dict], mapping: dict[str, str], source: Path) -> tuple[list[dict], list[str]]:
    """seqwarm's train and eval rows from a foreign log's rows, and notes on what was derived or dropped."""
    present = {k for row in foreign for k in row}
    keys = resolve_keys(present, mapping, source)
    notes = [
        "keys read: " + ", ".join(f"{ours} <- {theirs}" for ours, theirs in keys.items() if ours != theirs)
        if any(ours != theirs for ours, theirs in keys.items())
        else "keys read under seqwarm's own names"
    ]
    rows, ratio, no_step = [], LossRatio(), 0
    for row in foreign:
        values = {ours: row.get(theirs) for ours, theirs in keys.items()}
        values = {k: v for k, v in values.items() if is_value(k, v)}
        if "loss" not in values and "val/loss" not in values:
            continue  # a row of other things (HF's final train_runtime row, epoch markers)
        step = values.pop("step", None)
        if step is None:
            no_step += 1
            continue
        for k in COUNTS:  # 120.0 from a CSV or a float32 TensorBoard scalar is the count 120
            if k in values and not isinstance(values[k], bool) and float(values[k]).is_integer():
                values[k] = int(values[k])
        common = {"step": int(step), **{k: values[k] for k in ("tokens", "time_s") if k in values}}
        if "loss" in values:
            train = common | {k: values[k] for k in (*TRAIN_KEYS, *ADAM_KEYS) if k in values}
            if "loss_ratio" not in keys:
                train["loss_ratio"] = ratio(float(values["loss"]))
            rows.append(train)
        if "val/loss" in values:
            val_loss = float(values["val/loss"])
            ppl = values.get("val/ppl", math.exp(min(val_loss, PPL_CAP)) if math.isfinite(val_loss) else val_loss)
            rows.append(common | {"val/loss": val_loss, "val/ppl": ppl})
    if "loss_ratio" not in keys:
        notes.append(
            "loss ratio computed from the logged losses (a log written every k steps gives the ratio of k-step means)"
        )
    if no_step:
        notes.append(f"{no_step} rows without a step value left out")
    return rows, notes


def is_value(key: str, value: object) -> bool:
    """A logged number (or a `clipped` flag); strings, None and lists are missing values."""
    if key == "clipped" and isinstance(value, bool):
        return True
    x = number(value)
    if x is None:
        return False
    return math.isfinite(x) and x == int(x) if key == "step" else True


# --- the readers (files -> foreign rows) ---------------------------------------------------------


def log_kind(path: Path) -> str | None:
    """Which kind of foreign log `path` is, or None when it is none of them (a seqwarm run, say)."""
    if path.is_file():
        if path.name.startswith("events.out.tfevents."):
            return "tensorboard"
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "trainer_state"
        return {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix)
    if path.is_dir():
        if (path / TRAINER_STATE).is_file():
            return "trainer_state"
        if next(path.rglob(EVENTS), None) is not None:
            return "tensorboard"
    return None


def event_dir(path: Path) -> Path:
    """The one directory of event files under `path` (Hugging Face writes them to output_dir/runs/<time_host>/)."""
    if path.is_file():
        return path
    dirs = sorted({p.parent for p in path.rglob(EVENTS)})
    if len(dirs) > 1:
        listed = ", ".join(str(d.relative_to(path)) for d in dirs[:5])
        raise ExternalLogError(f"{path}: {len(dirs)} TensorBoard runs under it ({listed}); give one of them")
    return dirs[0]


def read_tensorboard(path: Path) -> list[dict]:
    """One row per step with every scalar of that step; both the legacy scalar events (torch's SummaryWriter,
    Hugging Face) and TF2's tensor scalars come out as tensors of the `scalars` plugin."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    # size 0 keeps every event: the default samples 10,000 per tag, which would drop spikes.
    acc = EventAccumulator(str(event_dir(path)), size_guidance={"tensors": 0})
    try:
        acc.Reload()
    except Exception as e:  # a corrupt event file: tensorboard raises its own kinds
        raise ExternalLogError(f"{path}: cannot read the TensorBoard events ({e})") from e
    by_step: dict[int, dict] = {}
    first = None
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        for event in acc.Tensors(tag):
            value = make_ndarray(event.tensor_proto)
            if value.size != 1:
                continue
            row = by_step.setdefault(event.step, {"step": event.step, "wall_time": event.wall_time})
            row[tag] = float(value.reshape(()))
            row["wall_time"] = min(row["wall_time"], event.wall_time)
            first = event.wall_time if first is None else min(first, event.wall_time)
    rows = [by_step[s] for s in sorted(by_step)]
    for row in rows:
        row["wall_time"] -= first
    return rows


def read_trainer_state(path: Path) -> list[dict]:
    """A Hugging Face `trainer_state.json`'s `log_history` (one dict per log or evaluation)."""
    file = path / TRAINER_STATE if path.is_dir() else path
    data = read_json(file)
    history = data.get("log_history") if isinstance(data, dict) else None
    if not isinstance(history, list):
        raise ExternalLogError(f"{file}: no log_history list (a Hugging Face trainer_state.json has one)")
    return [r for r in history if isinstance(r, dict)]


def read_json(file: Path) -> object:
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ExternalLogError(f"{file}: cannot read ({getattr(e, 'strerror', None) or e})") from e
    except json.JSONDecodeError as e:
        raise ExternalLogError(f"{file}: not valid JSON (line {e.lineno})") from e


def read_jsonl(path: Path) -> list[dict]:
    """Objects one a line; a line that does not parse (a last line cut by a crash) is left out."""
    return parse_jsonl(read_text(path))


def read_csv(path: Path) -> list[dict]:
    """A CSV with a header row; cells parsed as integers, numbers or true/false, empty cells left out."""
    reader = csv.DictReader(read_text(path).splitlines())
    return [{k: parse_cell(v) for k, v in row.items() if k is not None and v not in (None, "")} for row in reader]


def parse_cell(text: str) -> object:
    text = text.strip()
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ExternalLogError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from e


READERS = {"tensorboard": read_tensorboard, "trainer_state": read_trainer_state, "csv": read_csv, "jsonl": read_jsonl}
KIND_NAMES = {
    "tensorboard": "TensorBoard events",
    "trainer_state": "a Hugging Face trainer_state.json",
    "csv": "a CSV log",
    "jsonl": "a JSON Lines log",
}


def read_external(path: Path, mapping: dict[str, str]) -> ExternalLog:
    """A foreign log as seqwarm's rows; `ExternalLogError` naming the file when it cannot serve the report."""
    path = Path(path)
    kind = log_kind(path)
    if kind is None:
        raise ExternalLogError(
            f"{path}: not a seqwarm run nor a log seqwarm reads (TensorBoard events, trainer_state.json, "
            f"{', '.join(LOG_SUFFIXES)})"
        )
    foreign = READERS[kind](path)
    if not foreign:
        raise ExternalLogError(f"{path}: {KIND_NAMES[kind]} with no rows")
    rows, notes = metric_rows(foreign, mapping, path)
    return ExternalLog(path, kind, rows, (f"read from {KIND_NAMES[kind]}", *notes))
