"""Evaluation results: the `eval.json` document and the table they are printed as.

Plain data only (no model, no torch): `seqwarm eval` builds and writes the document, and
`seqwarm report` reads it back for its zero-shot table, with the same metric names and number
formatting as the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seqwarm import __version__
from seqwarm.files import atomic_write
from seqwarm.tables import text_table

EVAL_FILE = "eval.json"  # written into the run (or checkpoint) directory; `seqwarm report` reads it
FORMAT = "seqwarm-eval-v1"


@dataclass
class TaskResult:
    """One task's outcome, as printed and as stored in eval.json."""

    task: str
    dataset: str  # what was evaluated, in words ("LAMBADA-style ..." for the builtin cloze set)
    metrics: dict[str, float]
    counts: dict[str, int]  # tokens / words / items behind the metrics
    source: str | None = None  # the file read, and its sha256
    sha256: str | None = None
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0


# --- eval.json -----------------------------------------------------------------------------------


def default_json_path(path: str | Path, checkpoint: Path) -> Path:
    """RUN_DIR/eval.json for a run directory (what `seqwarm report` reads), CHECKPOINT_DIR/eval.json
    when `path` is the checkpoint itself."""
    if Path(path).resolve() == Path(checkpoint).resolve():
        return Path(checkpoint) / EVAL_FILE
    return Path(path) / EVAL_FILE


def results_json(
    checkpoint: dict, model: dict, device: str, results: Sequence[TaskResult], previous: dict | None = None
) -> dict:
    """The eval JSON of `results` for a checkpoint (`SavedModel.describe()`) and model shape.

    Results of an earlier `seqwarm eval` of the same checkpoint (`previous`) are kept for the
    tasks not evaluated again, so tasks can be run one at a time; a newer checkpoint starts afresh.
    """
    doc = {
        "format": FORMAT,
        "seqwarm": __version__,
        "checkpoint": checkpoint,
        "model": model,
        "device": device,
        "results": {},
    }
    if previous and previous.get("checkpoint") == doc["checkpoint"]:
        doc["results"] = dict(previous.get("results", {}))
    doc["results"] |= {r.task: asdict(r) for r in results}
    return doc


def read_eval(path: str | Path) -> dict | None:
    """An eval JSON written by `seqwarm eval`, or None when it is missing or not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def write_eval(path: str | Path, doc: dict) -> None:
    """Write the eval JSON atomically, creating its directory (e.g. for `--json OUT`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(doc, indent=2) + "\n")


# --- the table -----------------------------------------------------------------------------------

METRIC_NAMES = {
    "ppl": "perplexity per token",
    "word_ppl": "perplexity per word (adjusted)",
    "loss": "loss (nats per token)",
    "acc": "accuracy (strict)",
    "target_ppl": "target-word perplexity per token",
}


def metric_label(task: str, metric: str) -> str:
    """seqwarm's metrics in words; lm-eval's under their own names (its `acc` means what each task defines)."""
    return metric if task.startswith("lm-eval/") else METRIC_NAMES.get(metric, metric)


def format_value(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.2f}"


def format_counts(counts: dict[str, int]) -> str:
    """The counts behind a result in words: `{"scored_tokens": 1200}` -> "1,200 scored tokens"."""
    return ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in counts.items())


def format_table(results: Sequence[TaskResult | dict]) -> str:
    """An aligned text table: task, dataset, metric, value, and the counts behind it (one row per metric)."""
    rows = [("task", "dataset", "metric", "value", "n")]
    for r in results:
        r = asdict(r) if isinstance(r, TaskResult) else r
        counts = format_counts(r["counts"])
        for i, (name, value) in enumerate(r["metrics"].items()):
            first = i == 0
            cells = (r["task"], r["dataset"]) if first else ("", "")
            rows.append((*cells, metric_label(r["task"], name), format_value(value), counts if first else ""))
    return text_table(rows, right=(3,))
